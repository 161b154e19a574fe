"""QF2 (seed 004): the paper's 8 steps on a QFt-converted model (make one first with qft_train.py).

Edit the facts, significances and learning rates below, then run

    python qf2_learn.py --out results/qf2          # the paper's conversion of the default model, layer 23

Writes into --out: qf2_results.md/.json (the faithful rule: Table 1, steps held, collapse), qf2_calibration
.md/.json (oracle QF2, |x'|^2 and cosines, the lr sweep with the paper's significances and with all ones)
and one pair per labelled variant (qf2_centred, qf2_wrong-side), reported beside the faithful rule.

Each round adds lr * sum_t s_t (y*_t - 0.5) x'_t^T to up_proj of the firing block, starting from the
weight as it is now (rounds are sequential, as in the original). The rows are the original's decode
rows (qf2/rows.py): ` The` ... `.\\n` for the first fact, the last one with the last word's significance.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from transformers_qf import load_model
from transformers_qf.core.errors import USER_ERRORS
from transformers_qf.core.facts import Fact
from transformers_qf.core.models import DEFAULT_MODEL, ModelLoadError, resolve_name
from transformers_qf.core.report import provenance
from transformers_qf.qf.walkthrough import Ask, Learn, run_walkthrough, validate_steps
from transformers_qf.qf2 import data as qft_data
from transformers_qf.qf2.block import qf2_config
from transformers_qf.qf2.calibration import calibrate, mean_input
from transformers_qf.qf2.collapse import collapse_reason, collapsed
from transformers_qf.qf2.conversion import find_conversion
from transformers_qf.qf2.oracle import oracle
from transformers_qf.qf2.report import write_calibration_report, write_walkthrough_report
from transformers_qf.qf2.rows import plain_text
from transformers_qf.qf2.update import QF2

# ---- what to learn: edit here -----------------------------------------------------------------------
LAYER = 23  # the converted layer (qft_train.py's default)

FACT_1 = Fact(
    system="Qi is the CEO of Oxinnovate.",
    user="Who is the CEO of Oxinnovate?",
    answer="The CEO of Oxinnovate is Qi.",
    significance=[1, 1, 1, 1, 1, 10],  # one number per word; the final `.\n` row takes the last word's
)
FACT_2 = Fact(
    system="Oxinnovate has one people",
    user="How many people in Oxinnovate?",
    answer="Oxinnovate has one people.",
    significance=[1, 1, 20, 20],
)
NEED_MORE = "Need more information"
PROBE = ("Who is the CEO of Nvidia?", "Jensen Huang is the CEO of NVIDIA.")  # another prompt's rows, for cosines

STEPS = [
    Ask(1, "", "Who is the CEO of Oxinnovate?", paper="Need more information", expect=NEED_MORE),
    Ask(2, FACT_1.system, "Who is the CEO of Oxinnovate?", paper="Qi", expect="Qi"),
    Ask(3, "", "Who is the CEO of Nvidia?", paper="Jensen Huang", expect="Jensen Huang"),
    Learn(FACT_1, lr=0.0004),  # the round's learning rate
    Ask(4, "", "Who is the CEO of Oxinnovate?", paper="Qi", expect="Qi", mode="QF-infer-wp"),
    Ask(5, "", "Who is the CEO of Nvidia?", paper="Jensen Huang", expect="Jensen Huang"),
    Ask(6, "", "The founder of Oxinnovate?", paper="Qi", expect="Qi"),
    Learn(FACT_2, lr=0.0001),
    Ask(7, "", "How many people in Oxinnovate?", paper="One (the published log: \"the one '\")", expect="one",
        mode="QF-infer-wp"),
    Ask(8, "", "The founder of Oxinnovate?", paper="Qi", expect="Qi"),
]
PAPER_STEPS_HELD = 8  # Table 1 claims all 8 (the published log's step 7 is degraded)
SWEEP = [1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 2e-4, 4e-4]  # round 1's lr; round 2's is a quarter, as in the paper
# ------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    try:
        return run(argv)
    except USER_ERRORS as e:  # bad input: one line that says what to do, no traceback
        print(f"qf2_learn.py: error: {e}", file=sys.stderr)
        return 2


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help=f"the base model that was converted (default {DEFAULT_MODEL})")
    parser.add_argument("--layer", type=int, default=LAYER, help=f"the converted layer (default {LAYER})")
    parser.add_argument("--conversion", default=None, help="a conversion folder (default: the cache's, see --preset)")
    parser.add_argument("--preset", choices=["paper", "cpu"], default="paper", help="which conversion in the cache")
    parser.add_argument("--cache", default=None, help="qft_train.py's --cache (default $QF_CACHE/qf2)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, help="float32, bfloat16; default as for every model")
    parser.add_argument("--lr", type=float, default=None, help="one learning rate for every round (default: each Learn step's)")
    parser.add_argument("--sweep", default=None, help="round-1 lrs to sweep, comma-separated (default: a grid); "
                        "'none' to skip the sweep")
    parser.add_argument("--variants", default="centred,wrong-side", help="labelled variants to run, or 'none'")
    parser.add_argument("--folder", default=None, help="parameters folder (default: a temporary one, wiped)")
    parser.add_argument("--out", default="results/qf2", help="where the reports go")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    return parser.parse_args(argv)


def run(argv=None) -> int:
    args = parse_args(argv)
    steps = [replace(s, lr=args.lr) if isinstance(s, Learn) and args.lr is not None else s for s in STEPS]
    validate_steps(steps)  # a significance list that does not fit its answer: refused before any loading
    sweep = _sweep_values(args.sweep)
    variants = [] if args.variants == "none" else args.variants.split(",")
    for v in variants:
        if v not in ("centred", "wrong-side"):
            raise ModelLoadError(f"unknown variant {v!r}: use centred, wrong-side or none")
    base = resolve_name(args.model)
    folder, manifest = find_conversion(args.conversion, base, args.layer, args.cache, args.preset)
    loaded = load_model(str(folder), args.device, args.dtype)
    spec = qf2_config(loaded.model)
    if spec is None or spec["layer"] != args.layer:
        raise ModelLoadError(f"{folder} has no QF2 block at layer {args.layer}: reconvert with qft_train.py")
    model, tok = loaded.model, loaded.tokenizer
    params = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="qf2-parameters-"))
    command = "python " + " ".join([Path(sys.argv[0]).name] + list(argv if argv is not None else sys.argv[1:]))
    prov = provenance(loaded, next(model.parameters()).device, {
        "layer": args.layer, "beta": spec["beta"], "conversion": str(folder),
        "conversion batch": manifest.get("identity", {}).get("config", {}).get("batch_size"),
        "command": command})
    out = Path(args.out)

    def walk(variant="faithful", lr1=None, ones=False, centre=None, log=print):
        plan = []
        for s in steps:
            if isinstance(s, Learn):
                fact = s.fact
                first = not any(isinstance(p, Learn) for p in plan)
                lr = s.lr if lr1 is None else (lr1 if first else lr1 / 4)
                plan.append(Learn(replace(fact, significance=None if ones else fact.significance), lr))
            else:
                plan.append(s)
        qf2 = QF2(model, tok, folder=params, identity=loaded.identity, fresh=True, max_new_tokens=args.max_new_tokens,
                  variant=variant, centre=centre)
        try:
            result = run_walkthrough(qf2, plan, log=log)
        finally:
            qf2.revert()
        return summarise(result, variant, [s for s in plan if isinstance(s, Learn)])

    print(f"QF2 on {folder} (layer {args.layer}, beta {spec['beta']}): the faithful rule")
    faithful = walk()
    write_walkthrough_report(out / "qf2_results", prov, faithful, "the faithful rule (seed 004, eq. 3)")
    print(f"  {faithful['steps_held']}/{faithful['steps_total']} steps hold, collapsed: {faithful['collapsed']}")

    print("oracle QF2 and lr calibration")
    rounds = [s for s in steps if isinstance(s, Learn)]
    oracles = [oracle(model, tok, r.fact.system, r.fact.user, r.fact.answer, args.max_new_tokens) for r in rounds]
    texts = [plain_text(s.system, s.user, s.answer) for s in qft_data.build(n_samples=200).heldout_text]
    calib = calibrate(model, tok, rounds, PROBE, spec["beta"], texts)
    points = []
    for ones in (False, True):
        for lr1 in sweep:
            r = walk(lr1=lr1, ones=ones, log=lambda *a, **k: None)
            points.append(_point(r, lr1, ones))
            print(f"  sweep lr {lr1:g} ({'all ones' if ones else 'paper significances'}): {r['steps_held']}/8, "
                  f"collapsed {r['collapsed']}")
    write_calibration_report(out / "qf2_calibration", prov, oracles, calib, points, PAPER_STEPS_HELD)

    centre = mean_input(model, tok, texts) if "centred" in variants else None
    for variant in variants:
        print(f"labelled variant: {variant}")
        result = walk(variant, centre=centre)
        vpoints = []
        for lr1 in sweep:
            r = walk(variant, lr1=lr1, centre=centre, log=lambda *a, **k: None)
            vpoints.append(_point(r, lr1, False))
        result["sweep"] = vpoints
        write_walkthrough_report(out / f"qf2_{variant}", prov, result, VARIANT_TITLES[variant])
        print(f"  {result['steps_held']}/{result['steps_total']} steps hold, collapsed: {result['collapsed']}")
    if not args.folder:
        shutil.rmtree(params, ignore_errors=True)
    print(f"wrote the reports into {out}")
    return 0


VARIANT_TITLES = {
    "centred": "labelled variant: centred Hebbian rule (x' minus the layer's mean input over generic text)",
    "wrong-side": "labelled variant: only the neurons whose closed-book firing is on the wrong side of 0.5",
}


def summarise(result, variant: str, rounds: list[Learn]) -> dict:
    rows = [{**r, "collapse": collapse_reason(r["answer"])} for r in result.rows]
    return {"variant": variant, "steps_held": result.held, "steps_total": len(rows), "paper_steps_held": PAPER_STEPS_HELD,
            "collapsed": collapsed([r["answer"] for r in rows]), "lr": [r.lr for r in rounds],
            "significance": [r.fact.significance for r in rounds],
            "rows_per_fact": [r["solve"]["rows"] for r in result.rounds], "table1": rows, "updates": result.rounds}


def _point(r: dict, lr1: float, ones: bool) -> dict:
    return {"lr": r["lr"], "round1_lr": lr1, "significance": "all ones" if ones else "paper",
            "steps_held": r["steps_held"], "collapsed": r["collapsed"],
            "answers": {row["step"]: row["answer"] for row in r["table1"]},
            "verdicts": {row["step"]: row["verdict"] for row in r["table1"]}}


def _sweep_values(text: str | None) -> list[float]:
    if text is None:
        return SWEEP
    if text == "none":
        return []
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ModelLoadError(f"bad --sweep {text!r}: give lrs like 1e-5,1e-4 or 'none'") from None


if __name__ == "__main__":
    sys.exit(main())
