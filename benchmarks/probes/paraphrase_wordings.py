"""Which wordings of the unseen paraphrases finished bench runs answer: by where the subject stands, and by wording.

    python benchmarks/probes/paraphrase_wordings.py RUN_DIR [RUN_DIR ...] [--out results/bench] [--earlier results/bench/paraphrase_wordings.json]

Reads each run's cases.jsonl (its answers after the last edit) and its facts file (for the subjects). Only the
unseen paraphrases count: those that are not, word for word, one of the rewordings their fact's edit was fitted
on (the bench's `paraphrase_unseen`). Each is sorted by where the fact's subject stands in it: last ("Who is
the CEO of Droram?"), possessive ("Can you tell me the name of Droram's CEO?") or elsewhere ("How many people
work at Glothasti?"); and by its wording with the subject taken out ("Who runs X as CEO?"). The questions and
the rewordings the edits were fitted on are counted by the subject's place too. Writes
OUT/paraphrase_wordings.md and .json. No model is loaded.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict

import finished_runs
from finished_runs import FinishedRun
from transformers_qf.bench.summary import fitted_on

PLACES = ("last", "possessive", "elsewhere")


def subject_place(question: str, subject: str) -> str:
    """Where `subject` stands in `question`: "last" (only punctuation after it), "possessive" (followed by 's
    or '), or "elsewhere"."""
    at = question.find(subject)
    if at < 0:
        raise ValueError(f"{question!r} does not name its subject {subject!r}")
    after = question[at + len(subject):]
    if not after.strip(" ?.!"):
        return "last"
    return "possessive" if re.match(r"'s?(?!\w)", after) else "elsewhere"


def wordings(run: FinishedRun) -> dict:
    facts, edits = run.facts, run.edits()
    unseen = [r for r in run.final("paraphrase") if not fitted_on(r, edits)]
    if not unseen:
        raise SystemExit(f"paraphrase_wordings: {run.path} has no unseen paraphrases scored after its last edit: "
                         "finish the run first, or pick one scored on its paraphrases")
    by_place, by_wording = defaultdict(lambda: [0, 0]), defaultdict(lambda: [0, 0])
    for r in unseen:
        subject = facts[r["fact"]].subject
        place, wording = subject_place(r["user"], subject), r["user"].replace(subject, "X")
        for table, key in ((by_place, place), (by_wording, wording)):
            table[key][0] += bool(r["gives"])
            table[key][1] += 1
    fitted = Counter(subject_place(q, facts[i].subject) for i, e in edits.items()
                     for q in [facts[i].user, *(e.get("rewordings") or [])])
    return {"run": run.name, "n_facts": run.n_facts, "unseen": len(unseen),
            "fitted_by_place": {p: fitted[p] for p in PLACES},
            "answered": sum(bool(r["gives"]) for r in unseen),
            "by_place": {p: {"answered": by_place[p][0], "scored": by_place[p][1]} for p in PLACES},
            "by_wording": {w: {"answered": a, "scored": n} for w, (a, n) in sorted(by_wording.items(),
                                                                                   key=lambda item: -item[1][1])}}


def _share(counts: dict) -> str:
    a, n = counts["answered"], counts["scored"]
    return f"{a / n:.2f} ({a}/{n})" if n else "–"


def markdown(results: list[dict], written_by: str) -> str:
    lines = ["# The unseen paraphrases answered, by wording", "",
             f"{written_by} from the runs' cases.jsonl (answers after the last edit). Unseen: not word "
             "for word one of the rewordings the fact's edit was fitted on. The subject stands last (\"Who is the "
             "CEO of X?\"), possessive (\"X's CEO\") or elsewhere (\"How many people work at X?\").", "",
             "## By where the subject stands", "",
             "| run | facts | unseen answered | " + " | ".join(PLACES) + " |", "|---|---|---|" + "---|" * len(PLACES)]
    for r in results:
        lines.append(f"| {r['run']} | {r['n_facts']} | {_share({'answered': r['answered'], 'scored': r['unseen']})} | "
                     + " | ".join(_share(r["by_place"][p]) for p in PLACES) + " |")
    lines += ["", "## The questions and rewordings the edits were fitted on, by where the subject stands", "",
              "| run | " + " | ".join(PLACES) + " |", "|---|" + "---|" * len(PLACES)]
    lines += [f"| {r['run']} | " + " | ".join(str(r["fitted_by_place"][p]) for p in PLACES) + " |" for r in results]
    for r in results:
        lines += ["", f"## By wording: {r['run']}", "", "| wording | answered |", "|---|---|"]
        lines += [f"| {w} | {_share(c)} |" for w, c in r["by_wording"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    return finished_runs.main(parser, "paraphrase_wordings", wordings, markdown, argv)


if __name__ == "__main__":
    raise SystemExit(main())
