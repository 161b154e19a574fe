"""What the missed answers of finished bench runs say instead of the target (`bench.metrics.miss_kind`).

    python benchmarks/probes/paraphrase_misses.py RUN_DIR [RUN_DIR ...] [--out results/bench] [--earlier results/bench/paraphrase_misses.json]

Reads each run's cases.jsonl (its answers after the last edit) and its facts file (for the subjects), and
writes OUT/paraphrase_misses.md and .json: per run, and for questions and paraphrases apart, how many
answers missed their target, and of those how many give part of it, name the subject with another value, or
say something else. No model is loaded.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import finished_runs
from finished_runs import FinishedRun
from transformers_qf.bench.metrics import MISS_KINDS, miss_kind

KINDS = ("question", "paraphrase")


def misses(run: FinishedRun) -> dict:
    scored, facts = run.final(*KINDS), run.facts
    if not scored:
        raise SystemExit(f"paraphrase_misses: {run.path} has no answers after its last edit: finish the run first")
    out = {"run": run.name, "n_facts": run.n_facts, "command": run.header.get("command")}
    for kind in KINDS:
        answers = [r for r in scored if r["kind"] == kind]
        missed = [r for r in answers if not r["gives"]]
        counts = Counter(miss_kind(r["answer"], r["target"], facts[r["fact"]].subject) for r in missed)
        out[kind] = {"scored": len(answers), "missed": len(missed), **{k: counts.get(k, 0) for k in MISS_KINDS},
                     "examples": {k: next((r["answer"] for r in missed if miss_kind(
                         r["answer"], r["target"], facts[r["fact"]].subject) == k), None) for k in MISS_KINDS}}
    return out


def markdown(results: list[dict], written_by: str) -> str:
    lines = ["# What the missed answers say instead", "",
             f"{written_by} from the runs' cases.jsonl (answers after the last edit).",
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
    return finished_runs.main(parser, "paraphrase_misses", misses, markdown, argv)


if __name__ == "__main__":
    raise SystemExit(main())
