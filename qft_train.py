"""QFt (seed 004, section 2.3): convert layer L of the bundled model to the QF2 firing block.

    python qft_train.py                        # CPU preset: at most an hour on 2 cores
    python qft_train.py --paper                # the paper's schedule (12,000 steps; for a GPU)
    accelerate launch qft_train.py --paper     # the same on several GPUs

Writes the converted model (save_pretrained; config.qf2 names the block) and its loss curve to --out,
and the checks of the converted model to results/qft_results.md and .json. qf2_learn.py then loads it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from transformers_qf import load_model
from transformers_qf.core import prompting
from transformers_qf.qf2 import checks as qft_checks
from transformers_qf.qf2 import data as qft_data
from transformers_qf.core.errors import USER_ERRORS
from transformers_qf.core.generation import greedy_batch
from transformers_qf.core.models import converted_dir
from transformers_qf.qf2.training import PRESETS, Conversion, make_accelerator, with_overrides
from transformers_qf.qf2.report import plot_loss, write_report
from transformers_qf.core.report import provenance, write_json
from transformers_qf.core.scriptargs import add_model_args, parse_layers

# ---- what to convert: edit here ---------------------------------------------------------------------
LAYER = 23
BETA = 10.0  # steepness of the firing sigmoid (the QF2 learning script used 10; the training code's default was 1000)
C = 0.99  # alpha = C ** step while the blend anneals (paper)
# ------------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--paper", action="store_true", help="the paper's schedule instead of the CPU preset")
    parser.add_argument("--out", default=None, help="where the converted model goes (default: the cache, see README)")
    parser.add_argument("--results", default="results", help="where qft_results.md/.json go")
    parser.add_argument("--layer", type=int, default=LAYER, help=f"layer to convert (default {LAYER})")
    parser.add_argument("--beta", type=float, default=BETA, help=f"firing steepness (default {BETA})")
    parser.add_argument("--c", type=float, default=C, help=f"blend decay per step, alpha = c**step (default {C})")
    parser.add_argument("--trainable", type=parse_layers, default=None, help="trainable layers (default L-1,L,L+1)")
    parser.add_argument("--samples", type=int, default=None, help="training samples generated")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--loss", choices=["answer", "full"], default=None, help="loss on the answer only, or all text")
    parser.add_argument("--init", choices=["lstsq", "none"], default=None,
                        help="lstsq: closed-form down_proj of the firing block first (no blend needed); none: blend")
    parser.add_argument("--distill", type=float, default=None,
                        help="weight of keeping the last trainable layer's output equal to the original model's")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop training once the run passes this")
    parser.add_argument("--heldout-facts", type=int, default=30, help="real facts kept out of training for the checks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-checks", action="store_true", help="skip the before/after checks and the report")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    try:
        return run(parse_args(argv))
    except (*USER_ERRORS, ValueError) as e:  # bad input: one line that says what to do
        print(f"qft_train.py: error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    clock = time.perf_counter()
    preset = PRESETS["paper" if args.paper else "cpu"]
    config = with_overrides(preset, layer=args.layer, beta=args.beta, c=args.c, samples=args.samples, steps=args.steps,
                            batch_size=args.batch_size, lr=args.lr, loss=args.loss, init=args.init, seed=args.seed,
                            max_minutes=args.max_minutes, distill=args.distill,
                            trainable=tuple(args.trainable) if args.trainable else None)
    accelerator = make_accelerator(cpu=args.device == "cpu")
    loaded = load_model(args.model, args.device or str(accelerator.device), args.dtype or _train_dtype(accelerator))
    model, tokenizer = loaded.model, loaded.tokenizer
    config.check(model.config.num_hidden_layers)
    out = Path(args.out) if args.out else converted_dir(loaded.name, config.layer)
    say = print if accelerator.is_main_process else (lambda *a, **k: None)
    say(f"QFt: {loaded.name}, layer {config.layer}, preset {'paper' if args.paper else 'cpu'} -> {out}")

    t0 = time.perf_counter()
    candidates = qft_data.real_candidates()
    known = qft_data.known_facts(candidates, lambda qs: greedy_batch(
        model, tokenizer, [prompting.generation_prompt("", q) for q in qs], max_new_tokens=24, stop=["<|im_end|>"]))
    data = qft_data.build(known, n_samples=config.samples, seed=config.seed, heldout_facts=args.heldout_facts)
    seconds = {"data": time.perf_counter() - t0}
    say(f"data: {len(known)} of {len(candidates)} real company facts known to the base model; "
        f"{len(data.train)} training samples ({seconds['data']:.0f} s)")

    before = general = None
    if not args.no_checks:
        t0 = time.perf_counter()
        general = qft_checks.general_texts(model, tokenizer)
        before = qft_checks.measure(model, tokenizer, data.heldout_real, data.heldout_text, general)
        seconds["checks_before"] = time.perf_counter() - t0

    conversion = Conversion(model, tokenizer, config, clock_start=clock, accelerator=accelerator)
    conversion.prepare(data.train, progress=accelerator.is_local_main_process)
    if config.init == "lstsq":
        fit = conversion.fit_down_proj()
        say(f"closed-form down_proj: median relative error {fit['median_rel_error_fit']:.3f} on the fit's tokens, "
            f"{fit['median_rel_error_heldout']:.3f} held out ({fit['tokens']} tokens)")
    conversion.train(progress=accelerator.is_local_main_process)
    conversion.save(out, dtype=loaded.model.get_input_embeddings().weight.dtype)
    seconds["conversion"] = time.perf_counter() - clock - seconds.get("checks_before", 0.0)
    summary = conversion.summary()
    if accelerator.is_main_process:
        write_json(out / "qft_train.json", {**summary, "model": loaded.name, "seconds": seconds})
        plot_loss(summary, out / "loss.png")
    say(f"converted in {seconds['conversion'] / 60:.1f} min (checks not counted); saved to {out}")

    if not args.no_checks and accelerator.is_main_process:
        t0 = time.perf_counter()
        after = qft_checks.measure(model, tokenizer, data.heldout_real, data.heldout_text, general)
        seconds["checks_after"] = time.perf_counter() - t0
        seconds["total"] = time.perf_counter() - clock
        prov = provenance(loaded, accelerator.device, {
            "mixed precision": accelerator.mixed_precision, "processes": accelerator.num_processes,
            "output": str(out),
            "command": "python " + " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        })
        results = Path(args.results)
        plot_loss(summary, results / "qft_loss.png")
        write_report(results, prov, summary, data, before, after, seconds, torch.get_num_threads())
        say(f"wrote {results / 'qft_results.md'} and .json")
    return 0


def _train_dtype(accelerator) -> str:
    """Frozen layers in bf16 when training autocasts to it anyway; trainable ones get float32 masters."""
    return "bfloat16" if accelerator.mixed_precision == "bf16" else "float32"


if __name__ == "__main__":
    sys.exit(main())
