"""QF2 (seed 004): the paper's 8 steps on a QFt-converted model (make one first with qft_train.py).

Edit the facts, significances and learning rates below, then run

    python qf2_learn.py                  # writes results/qf2_results.md and .json

Each round adds lr * sum_t s_t (y*_t - 0.5) x'_t^T to up_proj of the firing block, starting from the
weight as it is now (rounds are sequential, as in the original). The parameters folder is wiped at
the start.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from transformers_qf import load_model
from transformers_qf.core.errors import USER_ERRORS
from transformers_qf.core.models import DEFAULT_MODEL, ModelLoadError, converted_dir
from transformers_qf.qf2.update import QF2
from transformers_qf.qf2.block import qf2_config
from transformers_qf.core.report import firing_rounds_table, provenance, provenance_lines, steps_table, write_json
from transformers_qf.qf.walkthrough import Ask, Fact, Learn, run_walkthrough, validate_steps

# ---- what to learn: edit here -----------------------------------------------------------------------
LAYER = 23  # the converted layer (qft_train.py's default)

FACT_1 = Fact(
    system="Qi is the CEO of Oxinnovate.",
    user="Who is the CEO of Oxinnovate?",
    answer="The CEO of Oxinnovate is Qi.",
    significance=[1, 1, 1, 1, 1, 10],  # one number per word; the final '.' and `assistant:` count 1
    lr=0.0004,
)
FACT_2 = Fact(
    system="Oxinnovate has one people",
    user="How many people in Oxinnovate?",
    answer="Oxinnovate has one people.",
    significance=[1, 1, 20, 20],
    lr=0.0001,
)
NEED_MORE = "Need more information"

STEPS = [
    Ask(1, "", "Who is the CEO of Oxinnovate?", paper="Need more information", expect=NEED_MORE),
    Ask(2, FACT_1.system, "Who is the CEO of Oxinnovate?", paper="Qi", expect="Qi"),
    Ask(3, "", "Who is the CEO of Nvidia?", paper="Jensen Huang", expect="Jensen Huang"),
    Learn(FACT_1),
    Ask(4, "", "Who is the CEO of Oxinnovate?", paper="Qi", expect="Qi", mode="QF-infer-wp"),
    Ask(5, "", "Who is the CEO of Nvidia?", paper="Jensen Huang", expect="Jensen Huang"),
    Ask(6, "", "The founder of Oxinnovate?", paper="Qi", expect="Qi"),
    Learn(FACT_2),
    Ask(7, "", "How many people in Oxinnovate?", paper="One (the published log: \"the one '\")", expect="one",
        mode="QF-infer-wp"),
    Ask(8, "", "The founder of Oxinnovate?", paper="Qi", expect="Qi"),
]
# ------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    try:
        return run(argv)
    except USER_ERRORS as e:  # bad input: one line that says what to do, no traceback
        print(f"qf2_learn.py: error: {e}", file=sys.stderr)
        return 2


def run(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None,
                        help="a QFt-converted model directory (default: qft_train.py's output for --layer)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, help="float32, bfloat16; default as for every model")
    parser.add_argument("--layer", type=int, default=LAYER, help=f"the converted layer (default {LAYER})")
    parser.add_argument("--lr", type=float, default=None, help="one learning rate for every round (default: per fact)")
    parser.add_argument("--beta", type=float, default=None, help="firing steepness while learning (default: the block's)")
    parser.add_argument("--folder", default="parameters", help="parameters folder (wiped at the start)")
    parser.add_argument("--out", default="results", help="where qf2_results.md/.json go")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    steps = [Learn(replace(s.fact, lr=args.lr)) if isinstance(s, Learn) and args.lr is not None else s for s in STEPS]
    validate_steps(steps)

    path = Path(args.model) if args.model else converted_dir(DEFAULT_MODEL, args.layer)
    if not path.is_dir():
        raise ModelLoadError(f"no QFt-converted model at {path}: make one with `python qft_train.py --layer "
                             f"{args.layer}` (about 55 minutes on 2 CPU cores), or pass --model DIR")
    loaded = load_model(str(path), args.device, args.dtype)
    spec = qf2_config(loaded.model)
    if spec is None or spec["layer"] != args.layer:
        found = "no QF2 block" if spec is None else f"its QF2 block at layer {spec['layer']}"
        raise ModelLoadError(f"{path} has {found}, not at layer {args.layer}: convert layer {args.layer} with "
                             f"`python qft_train.py --layer {args.layer}` or pass --layer to match")
    qf2 = QF2(loaded.model, loaded.tokenizer, folder=args.folder, identity=loaded.identity, fresh=True,
              max_new_tokens=args.max_new_tokens)
    if args.beta is not None:
        qf2.block.beta = qf2.beta = args.beta
    print(f"QF2 on {path} (layer {qf2.layer}, beta {qf2.beta}):")
    result = run_walkthrough(qf2, steps)
    qf2.revert()

    prov = provenance(loaded, next(loaded.model.parameters()).device, {
        "layer": qf2.layer, "beta": qf2.beta,
        "learning rates": [s.fact.lr for s in steps if isinstance(s, Learn)],
        "command": "python " + " ".join([Path(sys.argv[0]).name] + list(argv if argv is not None else sys.argv[1:])),
    })
    write_report(Path(args.out), prov, result)
    print(f"wrote {Path(args.out) / 'qf2_results.md'} and .json")
    return 0


def write_report(out: Path, prov: dict, result) -> None:
    lines = ["# QF2: the paper's 8 steps (seed 004, Table 1), reproduced", "",
             "Written by `qf2_learn.py`; do not edit by hand.", ""]
    lines += provenance_lines(prov)
    lines += ["", f"## {result.held}/{len(result.rows)} steps hold", ""] + steps_table(result.rows)
    lines += ["", "## The updates", ""] + firing_rounds_table(result.rounds)
    lines += ["", "Verdict: `holds` when the answer contains the expected word (case-insensitive). Firing on y*'s side: "
              "the share of (kept position, neuron) pairs whose closed-book firing sigmoid(beta W x'_t) lies on the "
              "same side of 0.5 as the open-book y*_t, with the weight before and after the round; the gap is the "
              "mean |sigmoid(beta W x'_t) - y*_t|. log p(answer): sum over the answer's tokens, teacher-forced after "
              "`assistant:`, without the fact (closed) and with it (open book).", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "qf2_results.md").write_text("\n".join(lines))
    write_json(out / "qf2_results.json", {"provenance": prov, "held": result.held, "steps": result.rows,
                                          "updates": result.rounds})


if __name__ == "__main__":
    sys.exit(main())
