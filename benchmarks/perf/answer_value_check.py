"""Whether the default edit teaches the whole answer value when `target` names only part of it.

    python benchmarks/perf/answer_value_check.py [--cov-texts 32 --cov-fact-texts 64]

benchmarks/perf/answer_value_facts.jsonl holds 4 facts whose target is a surname alone ("Oyelaran" for
"Brindlewick Analytics was founded by Tomasz Oyelaran.") and 4 whose target is a number. Each is edited into the
bundled model in bfloat16, one after another, by the package's default bench method with `--positions target`
(the rows of the target's words) and with `--positions value` (the rows of the answer's whole value around the
target and of the word after it), then every question, paraphrase and control is answered by free greedy
generation. The key covariance of the default method is estimated on a thinner corpus than a benchmark run's
(--cov-texts generic texts and --cov-fact-texts real-entity questions) to keep the check short. Writes
results/perf/answer_value_check.md and .json, with each fact's answer under both.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # perf_report beside it
from perf_report import write_report  # noqa: E402
from transformers_qf.bench import cli as bench_cli  # noqa: E402
from transformers_qf.core.report import git_commit  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FACTS = "benchmarks/perf/answer_value_facts.jsonl"


def run(positions: str, out: Path, cov_texts: int, cov_fact_texts: int, before: Path | None) -> dict:
    argv = ["--facts", FACTS, "--protocol", "sequential", "--no-immediate", "--checkpoints", "8", "--method", "qf",
            "--positions", positions, "--dtype", "bfloat16", "--cov-texts", str(cov_texts), "--cov-fact-texts",
            str(cov_fact_texts), "--fluency-tokens", "32", "--out", str(out)]
    if before is not None:
        argv += ["--before-from", str(before)]
    if bench_cli.main(argv):
        raise SystemExit(f"the bench run for positions {positions} failed")
    rows = [json.loads(line) for line in (out / "cases.jsonl").read_text(encoding="utf-8").splitlines()]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    questions = {r["key"]: r for r in rows if r["key"].startswith("checkpoint/8/") and r.get("kind") == "question"}
    return {"command": "python -m transformers_qf.bench " + " ".join(argv), "summary":
            {k: summary.get(k) for k in ("efficacy", "paraphrase", "specificity", "leak", "fluency_drop",
                                         "seconds_per_edit")},
            "answers": [{"question": r.get("user"), "answer": r.get("answer"), "gives": r.get("gives")}
                        for _, r in sorted(questions.items())]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cov-texts", type=int, default=32)
    parser.add_argument("--cov-fact-texts", type=int, default=64)
    parser.add_argument("--runs", default="runs/perf")
    parser.add_argument("--out", default="results/perf")
    args = parser.parse_args(argv)
    results = {}
    first = None
    for positions in ("target", "value"):
        out = ROOT / args.runs / f"answer-value-{positions}"
        results[positions] = run(positions, out, args.cov_texts, args.cov_fact_texts, first)
        first = first or out
    command = "python benchmarks/perf/answer_value_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    data = {"commit": git_commit(), "command": command.strip(), "results": results}
    lines = ["# The whole answer value: target rows against value rows", "",
             f"Written by `{data['command']}` at commit {data['commit']}: qwen2.5-coder-1.5b-instruct, bfloat16, CPU. "
             f"The 8 facts of `{FACTS}` (4 with a surname alone as target, 4 with a number), edited one after "
             "another by the default bench method (layer 23, covariance-weighted) with the positions below, scored "
             "after the last edit by free greedy generation.", "",
             "| positions | efficacy | paraphrase | specificity | leak | s / edit |", "|---|---|---|---|---|---|"]
    for positions, r in results.items():
        s = r["summary"]
        lines.append(f"| {positions} | {s['efficacy']:.2f} | {s['paraphrase']:.2f} | {s['specificity']:.2f} | "
                     f"{s['leak']:.2f} | {s['seconds_per_edit']:.1f} |")
    lines += ["", "| question | answer with target rows | answer with value rows |", "|---|---|---|"]
    for a, b in zip(results["target"]["answers"], results["value"]["answers"]):
        lines.append(f"| {a['question']} | {'✓' if a['gives'] else '✗'} {a['answer']} | "
                     f"{'✓' if b['gives'] else '✗'} {b['answer']} |")
    lines += ["", "Commands:", *[f"- `{r['command']}`" for r in results.values()]]
    write_report(ROOT / args.out, "answer_value_check", data, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
