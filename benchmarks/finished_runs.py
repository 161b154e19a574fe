"""Finished bench runs, read back for the scripts that sort their answers (no model is loaded), and those
scripts' reports.

    run = read_run(Path("runs/benchmark/NAME"), "paraphrase_wordings")
    run.final("paraphrase")     # the answers scored after the last edit, of those kinds
    run.edits()                 # {fact index: its edit row}
    write_reports("paraphrase_wordings", {"command": ..., "runs": results}, markdown_text, Path("results"))
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from transformers_qf.bench.data import Fact, FactsFileError, read_facts
from transformers_qf.report import write_json

ROOT = Path(__file__).resolve().parent.parent  # where the bench runs, and its relative facts paths start


@dataclass
class FinishedRun:
    path: Path
    header: dict
    facts: list[Fact]  # the run's facts, in its order
    rows: list[dict]  # every row of its cases.jsonl

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def n_facts(self) -> int:
        return self.header["n_facts"]

    def final(self, *kinds: str) -> list[dict]:
        """The answers of these kinds ("question", "paraphrase", "control") scored after the last edit."""
        prefix = f"checkpoint/{self.n_facts}/"
        return [r for r in self.rows if r["key"].startswith(prefix) and r.get("kind") in kinds]

    def edits(self) -> dict[int, dict]:
        return {r["fact"]: r for r in self.rows if r["key"].startswith("edit/")}


def read_run(path: Path, script: str) -> FinishedRun:
    """The run in `path` (its cases.jsonl and facts file); a one-line exit naming `script` if there is none."""
    cases = path / "cases.jsonl"
    if not cases.is_file():
        raise SystemExit(f"{script}: {path} holds no cases.jsonl: give the folders of bench runs")
    rows = [json.loads(line) for line in cases.read_text(encoding="utf-8").splitlines() if line]
    header = rows[0]
    facts_file = Path(header["facts_file"])
    if not facts_file.is_absolute() and not facts_file.is_file():
        facts_file = ROOT / facts_file
    try:
        facts = read_facts(facts_file).facts[:header["n_facts"]]
    except FactsFileError as e:
        raise SystemExit(f"{script}: {path}: {e}") from None
    return FinishedRun(path, header, facts, rows)


def command_line(script: str, argv: list[str] | None) -> str:
    """The command that ran `script` (argv: its arguments, None for the process's own)."""
    return " ".join([f"python benchmarks/{script}.py", *(argv if argv is not None else sys.argv[1:])])


def write_reports(script: str, report: dict, markdown: str, out: Path) -> None:
    """OUT/{script}.json (the report) and OUT/{script}.md (the markdown), and a line saying so."""
    write_json(out / f"{script}.json", report)
    (out / f"{script}.md").write_text(markdown, encoding="utf-8")
    print(f"wrote {out / f'{script}.md'}")
