"""How many usable rewordings does the model write for a question? Each instruction's answers, sorted.

    python benchmarks/probes/rewording_yield.py [--n 20] [--system "..."] [--out results/bench]

For each of the first N facts of the facts file, the unedited model answers every rewording instruction of
rewording.py (greedy, as `--target-wordings 10` asks them), once with an empty system turn (what the editor
did before 2026-11-25) and once with `--system` as the system turn (default: rewording.SYSTEM, what it does
now). Each first line is sorted as the editor sorts it: kept, not a question (the model answered instead:
"Droram's CEO is John Doe."), subject dropped, or a repeat.
A kept rewording that is word for word one of the fact's paraphrases in the facts file is counted too (the
bench's `paraphrase_unseen` leaves those out). Writes results/bench/rewording_yield.md and .json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from transformers_qf import load_model
from transformers_qf.bench.data import read_facts
from transformers_qf.core.generation import greedy_batch
from transformers_qf.core.report import git_commit, write_json
from transformers_qf.editing.rewording import FIRST, INSTRUCTIONS, SYSTEM, first_line, prompts, verdict

VERDICTS = ("kept", "not a question", "subject dropped", "repeat")


def sorted_answers(lm, fact, system: str) -> list[dict]:
    """Per instruction: the first line of the model's answer and its verdict, in the order the editor reads them."""
    answers = greedy_batch(lm.model, lm.tokenizer, prompts(fact.user, len(INSTRUCTIONS), system), 40,
                           stop=["<|im_end|>"])
    seen = {fact.user.strip().lower()}
    rows = []
    for text in map(first_line, answers):
        got = verdict(text, fact.subject, seen)
        if got == "kept":
            seen.add(text.lower())
        rows.append({"text": text, "verdict": got,
                     "is_paraphrase": got == "kept" and text.lower() in {p.lower() for p in fact.paraphrases}})
    return rows


def tally(facts_rows: list[list[dict]]) -> dict:
    """Verdict counts per instruction, and kept per fact from the first FIRST instructions and from all."""
    per_instruction = [Counter(rows[i]["verdict"] for rows in facts_rows) for i in range(len(INSTRUCTIONS))]
    kept = [[r["verdict"] == "kept" for r in rows] for rows in facts_rows]
    return {"per_instruction": [{v: c[v] for v in VERDICTS} for c in per_instruction],
            "kept_per_fact_first": sum(sum(k[:FIRST]) for k in kept) / len(kept),
            "kept_per_fact_all": sum(sum(k) for k in kept) / len(kept),
            "facts_with_none": sum(not any(k) for k in kept),
            "kept_paraphrases": sum(r["is_paraphrase"] for rows in facts_rows for r in rows)}


def markdown(result: dict) -> str:
    lines = ["# The model's rewordings of the benchmark's questions, sorted as the editor sorts them", "",
             f"Written by `{result['command']}` at commit {result['commit']}, model {result['model']}, "
             f"{result['n_facts']} facts, greedy, {result['seconds']:.0f} s.", ""]
    for name, run in result["runs"].items():
        t = run["tally"]
        lines += [f"## System turn: {name}", "", f"System turn: {run['system']!r}.", "",
                  f"Kept a fact: {t['kept_per_fact_first']:.2f} from the first {FIRST} instructions, "
                  f"{t['kept_per_fact_all']:.2f} from all {len(INSTRUCTIONS)}; facts with none kept: "
                  f"{t['facts_with_none']}; kept rewordings that are one of the fact's paraphrases word for word: "
                  f"{t['kept_paraphrases']}.", "",
                  "| # | instruction | " + " | ".join(VERDICTS) + " |", "|---|---|" + "---|" * len(VERDICTS)]
        lines += [f"| {i + 1} | {instruction} | " + " | ".join(str(counts[v]) for v in VERDICTS) + " |"
                  for i, (instruction, counts) in enumerate(zip(INSTRUCTIONS, t["per_instruction"]))]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", default="benchmarks/facts/facts_100.jsonl")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--system", default=SYSTEM, help="the system turn compared with an empty one")
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args(argv)
    facts = read_facts(args.facts).facts[:args.n]
    lm = load_model(args.model, "cpu", args.dtype)
    t0 = time.perf_counter()
    runs = {}
    asked = "rewording.SYSTEM (the editor's now)" if args.system == SYSTEM else "--system"
    for name, system in (("empty (the editor's before 2026-11-25)", ""), (asked, args.system)):
        facts_rows = []
        for i, fact in enumerate(facts):
            facts_rows.append(sorted_answers(lm, fact, system))
            print(f"{name} {i + 1}/{len(facts)}: {sum(r['verdict'] == 'kept' for r in facts_rows[-1])} kept",
                  file=sys.stderr, flush=True)
        runs[name] = {"system": system, "tally": tally(facts_rows),
                      "facts": [{"user": f.user, "subject": f.subject, "answers": rows}
                                for f, rows in zip(facts, facts_rows)]}
    result = {"command": "python benchmarks/probes/rewording_yield.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "commit": git_commit(), "model": lm.name, "n_facts": len(facts),
              "seconds": time.perf_counter() - t0, "runs": runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "rewording_yield.json", result)
    (out / "rewording_yield.md").write_text(markdown(result) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
