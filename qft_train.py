"""QFt (seed 004, section 2.3): convert layer L of a model to the QF2 firing block.

    python qft_train.py --paper --max-minutes 8 --resume     # the paper's batch-1 schedule (a GPU), in slices
    python qft_train.py --max-minutes 50 --resume            # the CPU preset (batch 8 x 1,500 steps), in slices

Each run continues the checkpoint of the same configuration with --resume (a checkpoint of another
configuration is refused), trains until the schedule ends or --max-minutes passes, then checkpoints and
exits 0 ("stopped at step N ..., resume with --resume"). The run that finishes the schedule saves the
converted model (save_pretrained, config.qf2 names the block) into the cache, where qf2_learn.py finds
it, and writes qft_results.md/.json (+ qft_loss.png where matplotlib is installed) into --out. A finished
conversion is not trained again: rerunning the command only redoes the checks and the report.
The cache is --cache, default $QF_CACHE/qf2 (or ~/.cache/transformers_qf/qf2).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from transformers_qf import load_model
from transformers_qf.core.errors import USER_ERRORS
from transformers_qf.core.report import provenance
from transformers_qf.core.scriptargs import add_model_args, parse_layers
from transformers_qf.qf2 import checks as qft_checks
from transformers_qf.qf2 import data as qft_data
from transformers_qf.qf2.conversion import conversion_paths, read_manifest, write_manifest
from transformers_qf.qf2.report import plot_loss, write_report
from transformers_qf.qf2.training import (PRESETS, Conversion, check_checkpoint, precision_for, read_checkpoint,
                                          with_overrides)

# ---- what to convert: edit here ---------------------------------------------------------------------
LAYER = 23
BETA = 10.0  # steepness of the firing sigmoid (the QF2 learning script used 10; the training code's default was 1000)
C = 0.99  # alpha = C ** (samples seen) while the blend anneals (paper)
# ------------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--paper", action="store_true", help="the paper's batch-1 schedule (default: the cpu preset)")
    parser.add_argument("--out", default=None, help="where qft_results.md/.json go (default results/qft)")
    parser.add_argument("--cache", default=None, help="where conversions and checkpoints go (default $QF_CACHE/qf2)")
    parser.add_argument("--resume", action="store_true", help="continue this configuration's checkpoint, if any")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop training (checkpointed) once the run has lasted this long; resume with --resume")
    parser.add_argument("--checkpoint-minutes", type=float, default=15.0, help="checkpoint this often while training")
    parser.add_argument("--layer", type=int, default=LAYER, help=f"layer to convert (default {LAYER})")
    parser.add_argument("--beta", type=float, default=BETA, help=f"firing steepness (default {BETA})")
    parser.add_argument("--c", type=float, default=C, help=f"blend decay per sample, alpha = c**samples (default {C})")
    parser.add_argument("--trainable", type=parse_layers, default=None, help="trainable layers (default L-1,L,L+1)")
    parser.add_argument("--samples", type=int, default=None, help="unique training rows (paper: 3000)")
    parser.add_argument("--copies", type=int, default=None, help="passes over the rows (paper: 4)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default rows x copies / batch)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--loss", choices=["full", "answer"], default=None,
                        help="full: every token of the text (paper, default); answer: the answer's tokens (labelled option)")
    parser.add_argument("--init", choices=["none", "lstsq"], default=None,
                        help="ablation lstsq: closed-form down_proj first, alpha 0 throughout (default none: the blend)")
    parser.add_argument("--distill", type=float, default=None, help="ablation: weight of a distillation term")
    parser.add_argument("--residual", type=float, default=None, help="ablation: share of the residual kept (paper 0)")
    parser.add_argument("--name", default=None, help="name the conversion folder in the cache (default: from the options)")
    parser.add_argument("--heldout-facts", type=int, default=30, help="real facts never trained on, for the score")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-checks", action="store_true", help="skip the before/after checks and the report")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    try:
        return run(parse_args(argv), argv)
    except (*USER_ERRORS, ValueError) as e:  # bad input: one line that says what to do
        print(f"qft_train.py: error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, argv=None) -> int:
    clock = time.time()
    deadline = clock + 60 * args.max_minutes if args.max_minutes else None
    preset = "paper" if args.paper else "cpu"
    config = with_overrides(PRESETS[preset], layer=args.layer, beta=args.beta, c=args.c, samples=args.samples,
                            copies=args.copies, steps=args.steps, batch_size=args.batch_size, lr=args.lr, loss=args.loss,
                            init=args.init, seed=args.seed, distill=args.distill, residual=args.residual,
                            trainable=tuple(args.trainable) if args.trainable else None)
    data = qft_data.build(n_samples=config.samples, seed=config.seed, heldout_facts=args.heldout_facts)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = precision_for(device)
    from transformers_qf.core.models import resolve_name
    name = resolve_name(args.model)
    paths = conversion_paths(name, config, preset, args.cache, args.name)
    identity = {"model": Path(name).name, "config": config.identity(), "data": data.fingerprint(),
                "heldout_facts": args.heldout_facts}
    meta = None
    if args.resume and (paths.checkpoint / "state.json").exists():
        meta = read_checkpoint(paths.checkpoint)
        check_checkpoint(meta, identity)  # before any model is loaded: a refusal costs nothing
    elif (paths.checkpoint / "state.json").exists():
        print(f"a checkpoint exists at {paths.checkpoint}: starting over (pass --resume to continue it)")

    loaded = load_model(args.model, str(device), args.dtype or ("bfloat16" if precision == "bf16" else "float32"))
    model, tokenizer = loaded.model, loaded.tokenizer
    config.check(model.config.num_hidden_layers)
    print(f"QFt: {loaded.name}, layer {config.layer}, preset {preset}, {config.total_steps()} steps of "
          f"{config.batch_size}, lr {config.lr:.3g}, loss {config.loss}, precision {precision} -> {paths.converted}")

    checks_before = (meta or {}).get("checks_before")
    general = (meta or {}).get("general_texts")
    if not args.no_checks and checks_before is None:
        t0 = time.time()
        general = qft_checks.general_texts(model, tokenizer)
        checks_before = qft_checks.measure(model, tokenizer, data, general)
        checks_before["seconds"] = time.time() - t0
        print(f"base model: held-out real accuracy {checks_before['heldout_accuracy']:.2f}, "
              f"general perplexity {checks_before['perplexity_general']:.2f} ({checks_before['seconds']:.0f} s)")

    conversion = Conversion(model, tokenizer, config, precision=precision)
    conversion.identity = identity
    extra = {"checks_before": checks_before, "general_texts": general}
    if meta is not None:
        conversion.load_checkpoint(paths.checkpoint)
        print(f"resumed at step {conversion.step} of {config.total_steps()}")
    if conversion.step < config.total_steps():
        conversion.prepare(data.train)
        if config.init == "lstsq" and conversion.step == 0:
            fit = conversion.fit_down_proj()
            print(f"closed-form down_proj: median relative error {fit['median_rel_error_heldout']:.3f} held out")
        done = conversion.train(deadline=deadline, checkpoint=paths.checkpoint,
                                checkpoint_minutes=args.checkpoint_minutes)
        conversion.save_checkpoint(paths.checkpoint, extra)
        if not done:
            print(f"stopped at step {conversion.step} of {config.total_steps()} after {(time.time() - clock) / 60:.1f} "
                  f"min; checkpoint {paths.checkpoint}; resume with --resume")
            return 0
    elif conversion.block is None:
        conversion.setup()
    conversion.finish()
    print(f"trained: {config.total_steps()} steps; saving the converted model to {paths.converted}")
    _save_converted(conversion, loaded, paths.converted, identity, precision)

    if args.no_checks:
        return 0
    t0 = time.time()
    after = qft_checks.measure(model, tokenizer, data, general)
    after["seconds"] = time.time() - t0
    summary = conversion.summary()
    prov = provenance(loaded, device, {
        "precision": f"{precision} autocast, float32 trainable weights and AdamW state" if precision == "bf16"
        else "float32", "converted model": str(paths.converted),
        "command": "python " + " ".join([Path(sys.argv[0]).name] + list(argv if argv is not None else sys.argv[1:])),
    })
    out = Path(args.out or "results/qft")
    write_report(out, prov, summary, data, checks_before, after, preset)
    plot_loss(summary, out / "qft_loss.png")
    print(f"wrote {out / 'qft_results.md'} and .json")
    return 0


def _save_converted(conversion: Conversion, loaded, folder: Path, identity: dict, precision: str) -> None:
    """save_pretrained of the converted model (the model's dtype), written beside and then moved in place."""
    import shutil

    from transformers_qf.qf2.block import qf2_config

    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model = loaded.model
    dtype = model.get_input_embeddings().weight.dtype
    trainable = {i: locate_layer(model, i) for i in conversion.config.trainable_layers()}
    for layer in trainable.values():
        layer.to(dtype)
    model.save_pretrained(tmp, safe_serialization=True)
    loaded.tokenizer.save_pretrained(tmp)
    write_manifest(tmp, {"base_model": identity["model"], "base_source": loaded.source,
                         "layer": conversion.config.layer, "qf2": qf2_config(model), "identity": identity,
                         "precision": precision, "dtype": str(dtype).replace("torch.", "")})
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    read_manifest(folder)


def locate_layer(model, index: int):
    from transformers_qf.core.architectures import locate

    return locate(model, index).layer


if __name__ == "__main__":
    sys.exit(main())
