"""Where the intact editor's time goes, part by part, and what each speed lever buys.

    python benchmarks/perf/intact_edit_profile.py --name baseline --n 10
    python benchmarks/perf/intact_edit_profile.py --name fast --n 10 -- --target-stop 0.05 --incremental
    python benchmarks/perf/intact_edit_profile.py --report-only          # rewrite the report from the json

Each configuration runs the facts benchmark (`python -m transformers_qf.bench`) on the first N facts of
benchmarks/facts/facts_100.jsonl, sequential, with the intact configuration of the benchmark plan's
`sequential100-qf-L4-8-rome-60-copies-keep-words5` (target fitted at layer 8 by gradient and spread over layers
4-8, the subject and its copies, up to 5 rewordings, the other rows held) plus the options after `--`, scored
once after the last edit by free greedy generation as the benchmark scores (every question, paraphrase and
control). The run folder is runs/perf/NAME (resumable). From its edit rows (`timings`, editor.py's PARTS) the
per-part seconds are read. Each configuration becomes one row of results/perf/intact_edit_profile.md and
.json (a row of the same name is replaced; the others are kept, with the commit and command that made them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from transformers_qf.bench import cli as bench_cli
from transformers_qf.core.report import git_commit
from transformers_qf.editing.editor import PARTS

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # perf_report beside it
from perf_report import write_report  # noqa: E402
FACTS = "benchmarks/facts/facts_100.jsonl"
INTACT = ["--method", "qf", "--paper", "--layers", "4,5,6,7,8", "--covariance", "--cov-corpus", "generic+facts",
          "--positions", "subject-copies", "--target", "optimized", "--target-steps", "60", "--target-wordings", "5",
          "--keep-context"]
REPORT = "intact_edit_profile"


def bench_args(n: int, out: Path, extra: list[str], model: str | None, dtype: str, device: str | None) -> list[str]:
    args = ["--facts", FACTS, "--limit", str(n), "--protocol", "sequential", "--no-immediate", "--checkpoints",
            str(n), "--dtype", dtype, "--out", str(out), *INTACT, *extra]
    if model:
        args += ["--model", model]
    if device:
        args += ["--device", device]
    return args


def profile(run: Path) -> dict:
    """Per-part seconds (mean a fact), seconds an edit (median, mean, each), the scores, from a finished run."""
    rows = [json.loads(line) for line in (run / "cases.jsonl").read_text(encoding="utf-8").splitlines()]
    edits = sorted((r for r in rows if r["key"].startswith("edit/")), key=lambda r: int(r["key"].split("/")[1]))
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    parts = [*PARTS, "other"]
    timed = [e for e in edits if "timings" in e]
    per_part = {p: statistics.fmean(e["timings"][p] for e in timed) if timed else None for p in parts}
    seconds = [e["seconds"] for e in edits]
    header = rows[0]
    steps = [e.get("target_steps") for e in edits]
    return {
        "facts": len(edits), "seconds": seconds, "median_seconds": statistics.median(seconds),
        "mean_seconds": statistics.fmean(seconds), "parts_mean_seconds": per_part,
        "last_edit_parts": edits[-1].get("timings"),
        "solve_rows_last": max(s["rows"] for s in edits[-1]["solves"]),
        "target_loss": [e.get("target_loss") for e in edits], "target_steps": steps,
        "rewordings": statistics.fmean(len(e.get("rewordings", [])) for e in edits),
        "scores": {k: summary.get(k) for k in ("efficacy", "paraphrase", "specificity", "leak", "fluency_drop")},
        "dtype": header.get("dtype"), "model": header.get("model"), "bench_command": header.get("command"),
        "run_commit": header.get("commit"),
    }


def report(out: Path, data: dict) -> None:
    parts = [*PARTS, "other"]
    lines = [
        "# The intact editor, part by part",
        "",
        f"Written by `python benchmarks/perf/intact_edit_profile.py` (one row a configuration; each row's own command "
        f"and commit below). The configuration of `sequential100-qf-L4-8-rome-60-copies-keep-words5` "
        f"(the benchmark plan, benchmarks/runs.py) on the first N facts of `{FACTS}`, sequential, from the model "
        "as loaded, scored after the last edit by free greedy generation (efficacy / paraphrase / specificity, as the benchmark). Seconds are "
        "wall-clock a fact; a part's mean is over the run's facts (editor.py's PARTS: rewordings = the model writing "
        "them, forward = capturing the layers' rows, target = the gradient fit, held = the held rows, drift = the "
        "drift watch, solve = adding the rows and solving, other = the rest).",
        "",
        "| configuration | device | dtype | facts | median s / edit | mean s / edit | "
        + " | ".join(parts) + " | efficacy | paraphrase | specificity | rows a layer at the end |",
        "|" + "---|" * (11 + len(parts)),
    ]
    for name, row in data["rows"].items():
        p = row["profile"]
        cells = [f"{p['parts_mean_seconds'][k]:.1f}" if p["parts_mean_seconds"].get(k) is not None else "–"
                 for k in parts]
        s = p["scores"]
        lines.append(f"| {name} | {row['device']} | {p['dtype']} | {p['facts']} | {p['median_seconds']:.1f} | "
                     f"{p['mean_seconds']:.1f} | " + " | ".join(cells)
                     + f" | {s['efficacy']:.2f} | {s['paraphrase']:.2f} | {s['specificity']:.2f} | "
                     f"{p['solve_rows_last']} |")
    lines += ["", "## Commands", ""]
    for name, row in data["rows"].items():
        lines += [f"- **{name}** (commit {row['commit']}, {row['date']}, {row['threads']} threads): "
                  f"`{row['command']}`", f"  - seconds a fact: {', '.join(f'{x:.1f}' for x in row['profile']['seconds'])}"]
    write_report(out, REPORT, data, lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="baseline", help="the configuration's row in the report")
    parser.add_argument("--n", type=int, default=10, help="facts, edited one after another")
    parser.add_argument("--model", default=None, help="default: the bundled model")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default=None)
    parser.add_argument("--runs", default="runs/perf", help="the run folders' parent")
    parser.add_argument("--out", default="results/perf")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from its json, run nothing")
    parser.add_argument("--before-from", default=None, metavar="NAME",
                        help="take the unedited model's answers from this configuration's run (same facts and model)")
    args = parser.parse_args(argv)
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{REPORT}.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"rows": {}}
    if not args.report_only:
        run = ROOT / args.runs / args.name
        before = ["--before-from", str(ROOT / args.runs / args.before_from)] if args.before_from else []
        code = bench_cli.main(bench_args(args.n, run, [*before, *extra], args.model, args.dtype, args.device))
        if code:
            return code
        import datetime
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        data["rows"][args.name] = {
            "command": " ".join(["python benchmarks/perf/intact_edit_profile.py", *sys.argv[1:]]) if argv is None
            else " ".join(["python benchmarks/perf/intact_edit_profile.py", *argv, *(["--", *extra] if extra else [])]),
            "commit": git_commit(), "date": datetime.date.today().isoformat(), "device": device,
            "threads": torch.get_num_threads(), "levers": extra, "profile": profile(run)}
    report(out, data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
