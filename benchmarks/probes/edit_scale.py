"""Does a ROME-style edit pushed past its fitted target reach the paraphrases? dW scaled by s, one fact at a time.

    python benchmarks/probes/edit_scale.py [--n 10] [--scales 1,1.5,2,3] [--layer 8] [--steps 60] [--out results/bench]

For each of the first N facts, from the unedited model, the editor of the `variant-L8-rome-60-copies` bench
run (layer L, subject-copies, optimised target, generic+facts key metric) solves dW. The weight is then set
to W0 + s dW for each scale s, and the question, its paraphrases and the controls (those the unedited model
answers right) are answered by greedy generation. For one edit, s dW is the solve whose target is the
closed-book output plus s times the fitted delta: a push past the target, like `--gamma` for open-book targets.
Writes results/bench/edit_scale.md and .json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from probe_setup import load, probe_parser, rome_editor
from transformers_qf.bench.answering import Answerer
from transformers_qf.bench.metrics import gives
from transformers_qf.core.report import git_commit, write_json


def answered(answerer: Answerer, questions: list[str], targets: list[str]) -> list[bool]:
    return [gives(a, t) for a, t in zip(answerer.answers([("", q) for q in questions]), targets)]


def main(argv=None) -> int:
    parser = probe_parser(__doc__, n=10)
    parser.add_argument("--scales", default="1,1.5,2,3", help="comma-separated factors of dW")
    parser.add_argument("--controls", type=int, default=20, help="controls scored at each scale")
    parser.add_argument("--paraphrases", type=int, default=3)
    args = parser.parse_args(argv)
    scales = [float(s) for s in args.scales.split(",")]
    data, lm = load(args)
    editor = rome_editor(lm, data, args, positions="subject-copies")
    answerer = Answerer(lm.model, lm.tokenizer, max_new_tokens=24)
    controls = data.controls[:args.controls]
    kept = [c for c, ok in zip(controls, answered(answerer, [c.user for c in controls], [c.target for c in controls]))
            if ok]
    down = editor.parts[0].down.weight
    W0 = down.detach().clone()
    t0 = time.perf_counter()
    rows = []
    for i, fact in enumerate(data.facts[:args.n]):
        editor.learn(fact.system, fact.user, fact.answer, None, fact.subject, fact.target)
        dW = down.detach().to(torch.float64) - W0.to(torch.float64)
        row = {"subject": fact.subject, "target": fact.target, "scales": {}}
        paraphrases = list(fact.paraphrases[:args.paraphrases])
        for s in scales:
            down.data.copy_((W0.to(torch.float64) + s * dW).to(W0.dtype))
            hits = answered(answerer, [fact.user, *paraphrases, *(c.user for c in kept)],
                            [fact.target] * (1 + len(paraphrases)) + [c.target for c in kept])
            row["scales"][str(s)] = {"question": hits[0], "paraphrases": hits[1:1 + len(paraphrases)],
                                     "controls": sum(hits[1 + len(paraphrases):])}
        editor.reset()
        rows.append(row)
        print(f"{i + 1}/{args.n} {fact.subject}: " + "; ".join(
            f"x{s:g} {int(v['question'])}{sum(v['paraphrases'])}/{len(v['paraphrases'])} c{v['controls']}"
            for s, v in zip(scales, row["scales"].values())), file=sys.stderr, flush=True)
    summary = {}
    for s in map(str, scales):
        cells = [r["scales"][s] for r in rows]
        n_para = sum(len(c["paraphrases"]) for c in cells)
        summary[s] = {"question": sum(c["question"] for c in cells) / len(cells),
                      "paraphrase": sum(sum(c["paraphrases"]) for c in cells) / n_para,
                      "specificity": sum(c["controls"] for c in cells) / (len(kept) * len(cells))}
    result = {"command": "python benchmarks/probes/edit_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "commit": git_commit(), "model": lm.name, "layer": args.layer, "steps": args.steps,
              "n_facts": len(rows), "n_controls": len(kept), "seconds": time.perf_counter() - t0,
              "summary": summary, "facts": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "edit_scale.json", result)
    lines = ["# A single ROME-style edit scaled: W0 + s dW", "",
             f"Written by `{result['command']}` at commit {result['commit']}, model {result['model']}, layer "
             f"{args.layer}, subject-copies, {args.steps} target steps, {len(rows)} facts (each from the unedited "
             f"model), {len(kept)} controls the unedited model answers right; {result['seconds']:.0f} s.", "",
             "| scale s | question | paraphrases | controls kept |", "|---|---|---|---|"]
    lines += [f"| {s} | {v['question']:.2f} | {v['paraphrase']:.2f} | {v['specificity']:.2f} |" for s, v in summary.items()]
    (out / "edit_scale.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(json.dumps(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
