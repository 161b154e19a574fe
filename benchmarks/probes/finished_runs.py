"""Finished bench runs, read back for the scripts that sort their answers (no model is loaded), and those
scripts' reports.

    run = read_run(Path("runs/benchmark/NAME"), "paraphrase_wordings")
    run.final("paraphrase")     # the answers scored after the last edit, of those kinds
    run.edits()                 # {fact index: its edit row}
    main(argparse.ArgumentParser(), "paraphrase_wordings", analyse, markdown)   # a script's whole main
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from transformers_qf.bench.data import FactsFileError, read_facts
from transformers_qf.core.facts import Fact
from transformers_qf.core.report import write_json

ROOT = Path(__file__).resolve().parents[2]  # where the bench runs, and its relative facts paths start


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


def main(parser, script: str, analyse, markdown, argv: list[str] | None = None) -> int:
    """Run a sorting script: `analyse` (FinishedRun -> a result dict with its "run" name) on every run folder
    given, then OUT/{script}.json and .md (`markdown(results, written_by)`). --earlier REPORT.json keeps that
    report's runs that are not read again, before the new ones, so that runs whose folders are gone stay."""
    parser.add_argument("runs", nargs="+", help="bench run folders (each with a cases.jsonl)")
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--earlier", type=Path, default=None,
                        help=f"an earlier {script}.json whose runs stay in the report unless read again")
    args = parser.parse_args(argv)
    results = [analyse(read_run(Path(run), script)) for run in args.runs]
    command = " ".join([f"python benchmarks/probes/{script}.py", *(argv if argv is not None else sys.argv[1:])])
    report = {"command": command, "earlier": [], "runs": results}
    if args.earlier is not None:
        try:
            before = json.loads(args.earlier.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SystemExit(f"{script}: cannot read the earlier report {args.earlier}: {e}") from None
        again = {r["run"] for r in results}
        kept = [r for r in before["runs"] if r["run"] not in again]
        report = {"command": command, "earlier": [before["command"], *before.get("earlier", [])] if kept else [],
                  "runs": kept + results}
    out = Path(args.out)
    write_json(out / f"{script}.json", report)
    (out / f"{script}.md").write_text(markdown(report["runs"], written_by(report)), encoding="utf-8")
    print(f"wrote {out / f'{script}.md'}")
    return 0


def written_by(report: dict) -> str:
    """"Written by `command`", naming the earlier commands whose runs the report kept."""
    earlier = "".join(f"; runs not read again come from `{c}`" for c in report.get("earlier", []))
    return f"Written by `{report['command']}`{earlier}"
