"""The runs behind results/benchmark.md, each one `python -m transformers_qf.bench ...` (resumable).

    python benchmarks/run_benchmark.py --list                     # the runs and their commands
    python benchmarks/run_benchmark.py --only sweep --minutes 18  # run (or resume) some, stop starting new ones after 18 min
    python -m transformers_qf.bench.report runs/benchmark --out results

Runs write runs/benchmark/NAME/{cases.jsonl,summary.json}; a finished run is skipped, a stopped one
resumes. All runs use the bundled 1.5B model in bfloat16 (2.5x faster generation on this CPU).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FACTS = "benchmarks/facts/facts_{n}.jsonl"
COMMON = ["--dtype", "bfloat16"]
SWEEP_LAYERS = (0, 4, 8, 12, 16, 18, 20, 21, 22, 23, 24, 25, 26, 27)
SWEEP_FACTS = 20


def runs() -> dict[str, list[str]]:
    """name -> arguments of python -m transformers_qf.bench (without --out)."""
    plan: dict[str, list[str]] = {}
    for layer in SWEEP_LAYERS:
        plan[f"sweep-L{layer:02d}"] = ["--facts", FACTS.format(n=100), "--limit", str(SWEEP_FACTS), "--method", "qf",
                                       "--paper", "--layer", str(layer), "--protocol", "sequential", "--no-immediate",
                                       "--checkpoints", str(SWEEP_FACTS)]
    methods = {
        "none": ["--method", "none"],
        "in-context": ["--method", "in-context"],
        "qf-paper": ["--method", "qf", "--paper"],
        "qf": ["--method", "qf"],
        "ft": ["--method", "ft"],
    }
    for protocol in ("single", "sequential"):
        for name, args in methods.items():
            plan[f"{protocol}100-{name}"] = ["--facts", FACTS.format(n=100), "--protocol", protocol, *args]
    for name in ("qf-paper", "qf"):
        plan[f"sequential1000-{name}"] = ["--facts", FACTS.format(n=1000), "--protocol", "sequential",
                                          "--no-immediate", "--checkpoints", "10,100,300", *methods[name]]
    return plan


def done(out: Path) -> bool:
    path = out / "summary.json"
    return path.is_file() and json.loads(path.read_text()).get("complete", False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default="runs/benchmark")
    parser.add_argument("--only", default="", help="run only the runs whose name starts with this (comma-separated)")
    parser.add_argument("--minutes", type=float, default=None, help="start no new run after this many minutes")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args(argv)
    prefixes = tuple(p for p in args.only.split(",") if p)
    chosen = {k: v for k, v in runs().items() if not prefixes or k.startswith(prefixes)}
    start = time.time()
    for name, run_args in chosen.items():
        out = ROOT / args.runs_dir / name
        command = [sys.executable, "-m", "transformers_qf.bench", *run_args, *COMMON, "--out", str(out)]
        if args.list:
            print(f"{name}{' (done)' if done(out) else ''}: {' '.join(command[1:])}")
            continue
        if done(out):
            continue
        if args.minutes is not None and time.time() - start > args.minutes * 60:
            print(f"stopping: {args.minutes} minutes used; run again to go on", file=sys.stderr)
            return 0
        print(f"== {name}", file=sys.stderr, flush=True)
        status = subprocess.call(command, cwd=ROOT)
        if status != 0:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
