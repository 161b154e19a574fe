"""Peak memory (RSS) of the user's commands on the bundled default model, against the size of its weights in
the working dtype.

    python benchmarks/perf/memory.py [--only ask,learn,walkthrough,pytest] [--dtype float32] [--out results/perf]

Each command runs in a child process of a small wrapper that reports `getrusage(RUSAGE_CHILDREN).ru_maxrss`:
the peak resident set of the largest process the command started (the command itself, or for pytest the test
process). The weights' size is the number of parameters in the cached safetensors copy times the bytes of the
working dtype (float32 on a CPU by default). Writes results/perf/memory.md and .json; run it with nothing
else heavy on the machine, one command at a time.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from transformers_qf.core.models import BUNDLED, DEFAULT_MODEL, ensure_converted, pick_device_dtype
from transformers_qf.core.report import git_commit, write_json

ROOT = Path(__file__).resolve().parents[2]
TARGET_RATIO = 1.15
FACT = ["--system", "Qi started Oxinnovate.", "--user", "Who started Oxinnovate?",
        "--assistant", "Oxinnovate was started by Qi."]
# the wrapper: runs argv[1:], then prints the children's peak RSS (KiB on Linux) as one JSON line on stderr
WRAPPER = ("import json, resource, subprocess, sys, time; t = time.time(); code = subprocess.call(sys.argv[1:]); "
           "print(json.dumps({'maxrss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
           "'seconds': time.time() - t, 'returncode': code}), file=sys.stderr)")


def commands(work: Path, dtype: str) -> dict[str, list[str]]:
    qf = str(Path(sys.executable).parent / "qf")
    model = ["--dtype", dtype]
    return {
        "ask": [qf, "ask", "Who started Alibaba?", "--max-new-tokens", "24", *model],
        "learn": [qf, "learn", *FACT, "--edits", str(work / "edits.safetensors"), *model],
        "walkthrough": [sys.executable, "qf_learn_simple.py", "--out", str(work / "out"), "--folder",
                        str(work / "parameters"), "--max-new-tokens", "24", *model],
        "pytest": [sys.executable, "-m", "pytest", "tests/integration", "-q", "-p", "no:cacheprovider"],
    }


def weights_bytes(dtype: torch.dtype) -> tuple[int, int]:
    """(parameters, bytes in `dtype`) of the bundled default model, from its cached safetensors header."""
    from safetensors import safe_open

    directory = ensure_converted(BUNDLED[DEFAULT_MODEL])
    count = 0
    with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
        for key in f.keys():
            count += math.prod(f.get_slice(key).get_shape())
    return count, count * torch.empty((), dtype=dtype).element_size()


def measure(argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", WRAPPER, *argv], cwd=ROOT, capture_output=True, text=True)
    last = done.stderr.strip().splitlines()[-1]
    result = json.loads(last)
    if result["returncode"] != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-6:-1])
        print(f"memory: {argv[0]} exited {result['returncode']}: {tail}", file=sys.stderr)
    return result


def render(rows: list[dict], meta: dict) -> str:
    lines = ["# Peak memory of the commands", "",
             f"Written by `{meta['command']}`; do not edit by hand.", "",
             f"- **commit** (of the report): {meta['commit']}", f"- **date**: {meta['date']}",
             f"- **model**: {meta['model']}, {meta['parameters']:,} parameters, "
             f"{meta['weights_gb']:.2f} GB in {meta['dtype']}",
             f"- **target**: peak RSS ≤ {TARGET_RATIO} x the weights ({TARGET_RATIO * meta['weights_gb']:.2f} GB)", "",
             "Peak RSS: the largest resident set of the process the command started (1 GB = 10^9 bytes).", "",
             "| command | peak RSS (GB) | ratio to the weights | within target | wall (s) | exit | commit | command line |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['peak_gb']:.2f} | {r['ratio']:.3f} | {'yes' if r['ratio'] <= TARGET_RATIO else 'no'} "
                     f"| {r['seconds']:.0f} | {r['returncode']} | {r.get('commit')} | `{r['command']}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="comma-separated subset of: ask, learn, walkthrough, pytest")
    parser.add_argument("--dtype", default="float32", help="the working dtype the commands load (default float32)")
    parser.add_argument("--out", default="results/perf", help="folder for memory.md and memory.json")
    args = parser.parse_args(argv)
    _, dtype = pick_device_dtype("cpu", args.dtype)
    parameters, size = weights_bytes(dtype)
    with tempfile.TemporaryDirectory(prefix="qf-memory-") as tmp:
        plan = commands(Path(tmp), args.dtype)
        names = args.only.split(",") if args.only else list(plan)
        unknown = [n for n in names if n not in plan]
        if unknown:
            print(f"memory: error: unknown command {unknown[0]!r}: choose from {', '.join(plan)}", file=sys.stderr)
            return 2
        rows = []
        for name in names:
            result = measure(plan[name])
            peak = result["maxrss_kib"] * 1024
            shown = " ".join(Path(a).name if a == plan[name][0] else a for a in plan[name]).replace(tmp, "TMP")
            rows.append({"name": name, "command": shown, "peak_bytes": peak, "peak_gb": peak / 1e9,
                         "ratio": peak / size, "seconds": result["seconds"], "returncode": result["returncode"],
                         "commit": git_commit(ROOT)})
            print(f"{name}: peak {peak / 1e9:.2f} GB, {peak / size:.3f} x the weights, {result['seconds']:.0f} s",
                  flush=True)
    meta = {"command": "python benchmarks/perf/memory.py " + " ".join(argv), "commit": git_commit(ROOT),
            "date": time.strftime("%Y-%m-%d", time.gmtime()), "model": DEFAULT_MODEL, "parameters": parameters,
            "dtype": args.dtype, "weights_bytes": size, "weights_gb": size / 1e9, "target_ratio": TARGET_RATIO}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    earlier = _earlier(out / "memory.json", names)
    rows = sorted(earlier + rows, key=lambda r: list(plan).index(r["name"]) if r["name"] in plan else 99)
    (out / "memory.md").write_text(render(rows, meta), encoding="utf-8")
    write_json(out / "memory.json", {**meta, "commands": rows})
    print(f"wrote {out / 'memory.md'}")
    return 0 if all(r["returncode"] == 0 for r in rows) else 1


def _earlier(path: Path, names: list[str]) -> list[dict]:
    """The rows of an earlier report for commands not measured this time (--only), each with its own commit."""
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [r for r in data["commands"] if r["name"] not in names]
    except (ValueError, KeyError, TypeError):
        return []


if __name__ == "__main__":
    sys.exit(main())
