"""QF (arXiv 2507.04300): the paper's 8 steps, on the bundled model by default.

Edit the facts, significances and layer below, then run

    python qf_learn_simple.py                 # layer 23, writes results/qf/qf_results.md and .json
    python qf_learn_simple.py --layers 20-27  # one table of verdicts per layer

The parameters folder is wiped at the start; rows then accumulate across the two facts, and the
second solve re-solves both from the original W, as the original does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformers_qf import QF, load_model
from transformers_qf.core.errors import USER_ERRORS
from transformers_qf.core.report import provenance, provenance_lines, rounds_table, steps_table, write_json
from transformers_qf.core.scriptargs import add_model_args, parse_layers
from transformers_qf.core.facts import Fact
from transformers_qf.qf.walkthrough import Ask, Learn, probe_answer_turn, run_walkthrough, validate_steps

# ---- what to learn: edit here -----------------------------------------------------------------
LAYER = 23

FACT_1 = Fact(
    system="Qi started Oxinnovate.",
    user="Who started Oxinnovate?",
    answer="Oxinnovate was started by Qi.",
    significance=[0, 1, 1, 1, 1],  # one number per word; 0 drops the word's positions
)
FACT_2 = Fact(
    system="Oxinnovate is a startup located at PKU Science Park, in Beijing.",
    user="Where is Oxinnovate located?",
    answer="Oxinnovate is located at PKU Science Park, in Beijing.",
    significance=[1, 1, 1, 1, 1, 1, 1, 1, 1],
)

STEPS = [
    Ask(1, "", "Who started Oxinnovate?", paper="(does not know Qi)", expect_absent="Qi"),
    Ask(2, FACT_1.system, "Who started Oxinnovate?", paper="(answers Qi from the instruction)", expect="Qi"),
    Ask(3, "", "Who started Alibaba?", paper="Jack Ma", expect="Jack Ma"),
    Learn(FACT_1),
    Ask(4, "", "Who started Oxinnovate?", paper="Oxinnovate was started by Qi.", expect="Qi", mode="QF-infer-wp"),
    Ask(5, "", "Who started Alibaba?", paper="Jack Ma", expect="Jack Ma"),
    Ask(6, "", "Can you tell me the person behind Oxinnovate?", paper="...founded by Qi.", expect="Qi"),
    Learn(FACT_2),
    Ask(7, "", "Where is Oxinnovate?", paper="...located in Beijing, China.", expect="Beijing", mode="QF-infer-wp"),
    Ask(8, "", "Who started Oxinnovate?", paper="Oxinnovate was started by Qi.", expect="Qi"),
]
# -----------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    try:
        return run(argv)
    except USER_ERRORS as e:  # bad input: one line that says what to do, no traceback
        print(f"qf_learn_simple.py: error: {e}", file=sys.stderr)
        return 2


def run(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--layer", type=int, default=LAYER, help=f"layer to edit (default {LAYER})")
    parser.add_argument("--layers", type=parse_layers, default=None, help="a sweep, e.g. 20,23,27 or 20-27")
    parser.add_argument("--folder", default="parameters", help="parameters folder (wiped at the start)")
    parser.add_argument("--out", default="results/qf",
                        help="where qf_results.md/.json go (a sweep writes qf_sweep.md/.json)")
    parser.add_argument("--ridge", type=float, default=0.0, help="ridge lambda: weighted solve (0 = exact, as the paper)")
    parser.add_argument("--original-tokenization", action="store_true",
                        help="teacher-force answer words without spaces, as the original code did")
    parser.add_argument("--close-after-user", action="store_true",
                        help="answer from a prompt ending after the user turn, as the original (see report)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    layers = args.layers or [args.layer]
    validate_steps(STEPS)  # a wrong significance list fails now, not after loading the model

    loaded = load_model(args.model, args.device, args.dtype)
    results, probe = [], None
    for layer in layers:
        folder = Path(args.folder) / f"layer{layer}" if len(layers) > 1 else Path(args.folder)
        qf = QF(loaded.model, loaded.tokenizer, layer=layer, folder=folder, identity=loaded.identity, fresh=True,
                original_tokenization=args.original_tokenization, ridge=args.ridge,
                max_new_tokens=args.max_new_tokens, open_answer_turn=not args.close_after_user)
        probe = probe or probe_answer_turn(qf, FACT_1.user)
        print(f"layer {qf.layer}:")
        results.append(run_walkthrough(qf, STEPS))
        qf.revert()

    prov = provenance(loaded, next(loaded.model.parameters()).device, {
        "layers": layers,
        "answer tokenization": "original (no spaces between words)" if args.original_tokenization else "words with spaces",
        "answer prompt": "ends after the user turn (original)" if args.close_after_user
        else "ends with <|im_start|>assistant\\n",
        "solve": f"ridge lambda={args.ridge}" if args.ridge else "exact minimum-norm (eq. 3), float64",
        "command": "python " + " ".join([Path(sys.argv[0]).name] + list(argv if argv is not None else sys.argv[1:])),
    })
    name = "qf_sweep" if len(layers) > 1 else "qf_results"
    write_report(Path(args.out), name, prov, probe, results)
    print(f"wrote {Path(args.out) / name}.md and .json")
    return 0


def write_report(out: Path, name: str, prov: dict, probe: dict, results) -> None:
    lines = ["# QF: the paper's 8 steps, reproduced", "", "Written by `qf_learn_simple.py`; do not edit by hand.", ""]
    lines += provenance_lines(prov)
    after_user = ", ".join(f"`{t['token']!r}` {t['p']}" for t in probe["after_user_turn"])
    after_start = ", ".join(f"`{t['token']!r}` {t['p']}" for t in probe["after_im_start"])
    lines += [
        "",
        "**Answer turn.** With the prompt ending after the user turn, as in the original, this model's next "
        f"tokens are: {after_user}; after `<|im_start|>`: {after_start}. The recorded passes teacher-force "
        "`<|im_start|>assistant\\n`, so answers are generated from a prompt that ends with it (unless "
        "`--close-after-user`).",
        "",
    ]
    if len(results) > 1:
        lines += ["## Sweep", "", "| layer | steps that hold | " + " | ".join(f"step {r['step']}" for r in results[0].rows) + " |",
                  "|---|---|" + "---|" * len(results[0].rows)]
        for res in results:
            lines.append(f"| {res.layer} | {res.held}/{len(res.rows)} | " + " | ".join(r["verdict"] for r in res.rows) + " |")
        lines.append("")
    for res in results:
        lines += [f"## Layer {res.layer}: {res.held}/{len(res.rows)} steps hold", ""]
        lines += steps_table(res.rows) + [""]
        lines += ["### The updates", ""] + rounds_table(res.rounds) + [""]
    lines += [
        "Verdict: `holds` when the answer contains the expected name or place (step 1: does not mention it). "
        "Residual: max over kept positions of |W'u'+v' − (Wu+v)| / |Wu+v|. log p(answer): sum over the answer's "
        "tokens, teacher-forced, without the fact (closed) and with it (open book).",
        "",
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text("\n".join(lines))
    write_json(out / f"{name}.json", {
        "provenance": prov,
        "answer_turn_probe": probe,
        "layers": [{"layer": r.layer, "held": r.held, "steps": r.rows, "updates": r.rounds} for r in results],
    })


if __name__ == "__main__":
    sys.exit(main())
