"""What the missed answers of finished bench runs say instead of the target (`bench.metrics.miss_kind`).

    python benchmarks/paraphrase_misses.py RUN_DIR [RUN_DIR ...] [--out results]

Reads each run's cases.jsonl (its answers after the last edit) and its facts file (for the subjects), and
writes OUT/paraphrase_misses.md and .json: per run, and for questions and paraphrases apart, how many
answers missed their target, and of those how many give part of it, name the subject with another value, or
say something else. No model is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from transformers_qf.bench.data import read_facts
from transformers_qf.bench.metrics import MISS_KINDS, miss_kind
from transformers_qf.report import write_json

KINDS = ("question", "paraphrase")


def misses(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "cases.jsonl").read_text(encoding="utf-8").splitlines() if line]
    header = rows[0]
    facts = read_facts(header["facts_file"]).facts[:header["n_facts"]]
    final = f"checkpoint/{header['n_facts']}/"
    scored = [r for r in rows if r["key"].startswith(final) and r.get("kind") in KINDS]
    if not scored:
        raise SystemExit(f"paraphrase_misses: {run} has no answers after its last edit: finish the run first")
    out = {"run": run.name, "n_facts": header["n_facts"], "command": header.get("command")}
    for kind in KINDS:
        answers = [r for r in scored if r["kind"] == kind]
        missed = [r for r in answers if not r["gives"]]
        counts = Counter(miss_kind(r["answer"], r["target"], facts[r["fact"]].subject) for r in missed)
        out[kind] = {"scored": len(answers), "missed": len(missed), **{k: counts.get(k, 0) for k in MISS_KINDS},
                     "examples": {k: next((r["answer"] for r in missed if miss_kind(
                         r["answer"], r["target"], facts[r["fact"]].subject) == k), None) for k in MISS_KINDS}}
    return out


def markdown(results: list[dict], command: str) -> str:
    lines = ["# What the missed answers say instead", "",
             f"Written by `{command}` from the runs' cases.jsonl (answers after the last edit).",
             "", "A miss gives *part of the target* (a whole word of it, or a word with its first 4 characters), "
             "or names *the subject* with another value, or is *other*.", ""]
    for kind in KINDS:
        lines += [f"## {kind.capitalize()}s", "", "| run | facts | scored | missed | " + " | ".join(MISS_KINDS) + " |",
                  "|---|---|---|---|" + "---|" * len(MISS_KINDS)]
        for r in results:
            k = r[kind]
            lines.append(f"| {r['run']} | {r['n_facts']} | {k['scored']} | {k['missed']} | "
                         + " | ".join(str(k[m]) for m in MISS_KINDS) + " |")
        lines.append("")
    lines += ["## An example of each (paraphrases)", ""]
    for r in results:
        lines.append(f"- {r['run']}: " + "; ".join(f"{m}: {json.dumps(e, ensure_ascii=False)[:100]}"
                                                  for m, e in r["paraphrase"]["examples"].items() if e))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="bench run folders (each with a cases.jsonl)")
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)
    results = [misses(Path(run)) for run in args.runs]
    command = " ".join(["python benchmarks/paraphrase_misses.py", *(argv if argv is not None else sys.argv[1:])])
    out = Path(args.out)
    write_json(out / "paraphrase_misses.json", {"command": command, "runs": results})
    (out / "paraphrase_misses.md").write_text(markdown(results, command), encoding="utf-8")
    print(f"wrote {out / 'paraphrase_misses.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
