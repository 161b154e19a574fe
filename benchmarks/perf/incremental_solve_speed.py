"""What one edit's solve costs at the history sizes of a long run: re-factorising every row against extending
the factor by the new rows (`KeySolver(incremental=True)`).

    python benchmarks/perf/incremental_solve_speed.py [--rows 1000,7300] [--round 75] [--covariance FILE]

For each history size k, the solver holds k rows of the real shape (d_model 1536, d_mlp 8960 of
Qwen2.5-Coder-1.5B), its keys drawn from a covariance (the cached key covariance of layer 8 of the bundled model
when --covariance points at it, else a random one with a shared part, as MLP keys have), one row in ten a copy of
an earlier one with its output under the last solve as target (as held rows repeat). One more round of --round
rows (75: the rows a fact added a layer in the 100-fact spread run, 7,324 after 100 facts) is then added and solved,
both ways, each timed: `add` + `solve_into`. Reports the seconds, and how far apart the two updates are. Writes
results/perf/incremental_solve_speed.md and .json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from transformers_qf.core.report import git_commit
from transformers_qf.solve.keyed import KeyMetric, KeySolver

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # perf_report beside it
from perf_report import write_report  # noqa: E402


def rows(k: int, factor: torch.Tensor, d_model: int, g: torch.Generator):
    keys = (torch.randn(k, factor.shape[0], generator=g, dtype=torch.float64) @ factor.T).float()
    copies = torch.arange(10, k, 10)
    keys[copies] = keys[copies - 1 - torch.randint(0, 9, (len(copies),), generator=g)]
    R = torch.randn(k, d_model, generator=g, dtype=torch.float64)
    return keys, R


def timed(solver: KeySolver, W: torch.Tensor, keys, R) -> tuple[float, dict]:
    t0 = time.perf_counter()
    solver.add(keys, R, torch.linalg.norm(R, dim=1) + 1.0)
    report = solver.solve_into(W)
    return time.perf_counter() - t0, report.as_dict()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1000,7300")
    parser.add_argument("--round", type=int, default=75)
    parser.add_argument("--covariance", default=None, help="a keystats .safetensors (layer 8's, say)")
    parser.add_argument("--d-model", type=int, default=1536)
    parser.add_argument("--d-mlp", type=int, default=8960)
    parser.add_argument("--out", default="results/perf")
    args = parser.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    d = args.d_mlp
    if args.covariance:
        C = load_file(args.covariance)["covariance"].to(torch.float64)
        source = f"the key covariance in {Path(args.covariance).name}"
    else:
        A = torch.randn(d, 256, generator=g, dtype=torch.float64)
        C = A @ A.T / 256 + 0.05 * torch.eye(d, dtype=torch.float64) + 0.5
        source = "a random covariance (rank-256 part, a shared part and 0.05 I)"
    metric = KeyMetric(C, 0.1)
    sample = torch.linalg.cholesky(C + 1e-9 * torch.eye(d, dtype=torch.float64) * float(C.diagonal().mean()))
    W0 = torch.randn(args.d_model, d, generator=g, dtype=torch.float64).to(torch.bfloat16) * 0.02
    results = []
    for k in [int(x) for x in args.rows.split(",")]:
        keys, R = rows(k + args.round, sample, args.d_model, g)
        row = {"rows_before": k, "round": args.round}
        updates = {}
        for name, incremental in (("full", False), ("incremental", True)):
            solver = KeySolver(W0.clone(), metric, incremental=incremental)
            W = W0.clone()
            t0 = time.perf_counter()
            solver.add(keys[:k], R[:k], torch.linalg.norm(R[:k], dim=1) + 1.0)
            solver.solve_into(W)
            row[f"{name}_history_seconds"] = time.perf_counter() - t0
            held = keys[:5]  # a few earlier rows held at their output, as the editor holds them
            new_R = torch.cat([R[k:k + args.round - 5], -solver.change(held.double())])
            seconds, report = timed(solver, W, torch.cat([keys[k:k + args.round - 5], held]), new_R)
            row[f"{name}_seconds"] = seconds
            row[f"{name}_method"] = report["method"]
            row[f"{name}_residual"] = report["residual"]
            updates[name] = solver.change(torch.eye(d, dtype=torch.float64)[:64])
            del solver
            print(f"k={k}: {name} {seconds:.2f} s ({report['method']})", file=sys.stderr, flush=True)
        row["difference"] = float(torch.linalg.norm(updates["incremental"] - updates["full"])
                                  / torch.linalg.norm(updates["full"]))
        results.append(row)
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/perf/incremental_solve_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    data = {"commit": git_commit(), "command": command.strip(), "threads": torch.get_num_threads(),
            "keys_from": source, "results": results}
    lines = ["# One round's solve at a long run's history: re-factorised against extended", "",
             f"Written by `{data['command']}` at commit {data['commit']}, CPU, {data['threads']} threads, float64. "
             f"Keys drawn from {source}, one in ten a repeat; a round of {args.round} rows (5 of them earlier rows "
             "held at their output). Seconds for `add` + `solve_into` of that round; difference = "
             "|change_incremental - change_full| / |change_full| at 64 probe keys.", "",
             "| rows before | full re-solve, s | incremental, s | speed-up | full: method | incremental: method | "
             "difference |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['rows_before']} | {r['full_seconds']:.2f} | {r['incremental_seconds']:.2f} | "
              f"{r['full_seconds'] / r['incremental_seconds']:.1f}x | {r['full_method']} | {r['incremental_method']} | "
              f"{r['difference']:.1e} |" for r in results]
    write_report(out, "incremental_solve_speed", data, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
