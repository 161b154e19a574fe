"""How long one dual-form solve of `KeySolver` takes, by Cholesky with a jitter, against the pseudo-inverse.

    python benchmarks/perf/keysolve_speed.py [--rows 2000,4000,8000] [--state DIR/state.safetensors] [--out results/perf]
    python benchmarks/perf/keysolve_speed.py --device cuda      # on a GPU: random rows only

Each problem is solved twice from the same rows: by `KeySolver.solve_into` as it is (one Cholesky
factorisation of K plus a jitter), and by the solve it replaced (K's eigenvalues, then K's pseudo-inverse).
Reports both times, how far apart the two updates are (|dW - dW_pinv|_F / |dW_pinv|_F) and the row residuals
of each (max_t |dW u'_t + r_t| / |target_t|, on the float64 update).

Problems:
  --rows: random rows of the real shape (d_model 1536, d_mlp 8960 of Qwen2.5-Coder-1.5B), keys with a shared
          part as real MLP keys have, and one row in ten a copy of an earlier one with its target (as held
          rows repeat), so K is singular as it is in long runs;
  --state: every row of a sequential bench run's solver (its first layer's), as saved in its state file.
Writes results/perf/keysolve_speed.md and .json (keysolve_speed_cuda.* with --device cuda).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open

from transformers_qf.solve.keyed import KeyMetric, KeySolver
from transformers_qf.core.report import git_commit, write_json


def random_state(k: int, d_model: int, d_mlp: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator(device).manual_seed(seed)
    f64 = dict(dtype=torch.float64, device=device)
    shared = torch.randn(1, d_mlp, generator=g, **f64)
    keys = 0.5 * shared + torch.randn(k, d_mlp, generator=g, **f64)
    R = torch.randn(k, d_model, generator=g, **f64)
    copies = torch.arange(10, k, 10, device=device)
    source = torch.randint(0, 10, (len(copies),), generator=g, device=device) + copies - 10
    keys[copies], R[copies] = keys[source], R[source]
    return {"count": torch.tensor(k), "keys": keys, "R": R, "target_norm": torch.linalg.norm(R, dim=1),
            "weights": torch.ones(k, **f64), "K": keys @ keys.T}


def stored_state(path: Path, layer: str) -> dict[str, torch.Tensor]:
    prefix = f"{layer}.solver."
    with safe_open(str(path), "pt") as f:
        state = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix) and k != prefix + "BB"}
    if "K" not in state:
        raise SystemExit(f"{path} holds no dual-form solver under {prefix!r}: pick a run whose rows fit the dual "
                         "form, or another --layer-key")
    return state


def compare(name: str, state: dict[str, torch.Tensor], W0: torch.Tensor) -> dict:
    metric = (KeyMetric(torch.eye(W0.shape[1], dtype=torch.float64, device=W0.device)) if "B" in state
              else None)  # B is stored: the metric's C enters only when rows are added
    solver = KeySolver(W0, metric)
    solver.load_state_dict(state)
    W = W0.clone()
    report = solver.solve_into(W)
    dW = -solver.coef.T @ solver.B
    print(f"{name}: cholesky {report.seconds:.1f} s ({report.method}, jitter {report.jitter:g})", file=sys.stderr,
          flush=True)

    _sync(W0.device)
    t0 = time.perf_counter()
    eig = torch.linalg.eigvalsh(solver.K)  # the replaced solve: eigenvalues for cond, then the pseudo-inverse
    coef = torch.linalg.pinv(solver.K, hermitian=True) @ solver.R
    dW_pinv = -coef.T @ solver.B
    _sync(W0.device)
    pinv_seconds = time.perf_counter() - t0
    print(f"{name}: pinv {pinv_seconds:.1f} s", file=sys.stderr, flush=True)

    def residual(update: torch.Tensor) -> float:
        return float((torch.linalg.norm(solver.keys.double() @ update.T + solver.R, dim=1) / solver.target_norm).max())

    lo, hi = float(eig[0]), float(eig[-1])
    return {"problem": name, "rows": solver.rows, "d_model": W0.shape[0], "d_mlp": W0.shape[1],
            "cholesky_seconds": report.seconds, "pinv_seconds": pinv_seconds,
            "speedup": pinv_seconds / report.seconds, "method": report.method, "jitter": report.jitter,
            "cond_estimate": report.cond, "cond": hi / lo if lo > 0 else float("inf"),
            "relative_difference": float(torch.linalg.norm(dW - dW_pinv) / torch.linalg.norm(dW_pinv)),
            "residual": residual(dW), "residual_pinv": residual(dW_pinv)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="2000,4000,8000", help="sizes of the random problems ('' for none)")
    parser.add_argument("--d-model", type=int, default=1536)
    parser.add_argument("--d-mlp", type=int, default=8960)
    parser.add_argument("--state", type=Path, help="a sequential bench run's state.safetensors")
    parser.add_argument("--layer-key", default="layer0", help="whose solver in --state (layer0: the first layer)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default="results/perf")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible here; run on a GPU machine or leave --device out")
    try:
        sizes = [int(k) for k in args.rows.split(",") if k.strip()]
    except ValueError:
        parser.error(f"--rows takes sizes separated by commas, e.g. 2000,4000; got {args.rows!r}")
    if args.state is not None and not args.state.is_file():
        parser.error(f"--state {args.state}: no such file; give a run folder's state.safetensors")

    rows = []
    W0 = (torch.randn(args.d_model, args.d_mlp, generator=torch.Generator().manual_seed(1)) / args.d_mlp ** 0.5
          ).to(args.device)
    if args.device == "cuda":  # the first factorisation and solve on a GPU pay for its libraries' start
        compare("warm-up", random_state(256, args.d_model, args.d_mlp, args.device), W0)
    for k in sizes:
        rows.append(compare(f"random, {k} rows", random_state(k, args.d_model, args.d_mlp, args.device), W0))
    if args.state is not None:
        state = stored_state(args.state, args.layer_key)
        W0 = torch.randn(state["R"].shape[1], state["keys"].shape[1], generator=torch.Generator().manual_seed(1)
                         ).to(args.device)
        rows.append(compare(f"{args.state.parent.name} ({args.layer_key})", state, W0))
    for row in rows:
        print(json.dumps(row), file=sys.stderr)

    result = {"command": " ".join(["python benchmarks/perf/keysolve_speed.py", *(argv or sys.argv[1:])]),
              "commit": git_commit(), "device": _device_name(args.device), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "rows": rows}
    out = Path(args.out)
    stem = "keysolve_speed" if args.device == "cpu" else f"keysolve_speed_{args.device}"
    write_json(out / f"{stem}.json", result)
    lines = ["# KeySolver's dual solve: Cholesky with a jitter against the pseudo-inverse", "",
             f"Written by `{result['command']}` at commit {result['commit']}, on {result['device']} "
             f"({result['threads']} CPU threads, torch {result['torch']}), float64. Times are one `solve_into` "
             "(the factorisation, the solve and writing W) against the replaced solve's eigenvalues and "
             "pseudo-inverse. The distance is relative, in the Frobenius norm. Residuals: max over rows of the "
             "row's miss relative to its target.", "",
             "| problem | rows | Cholesky s | pinv s | speed-up | method | cond (eig) | "
             "dW's distance from pinv's | residual | residual (pinv) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['problem']} | {r['rows']} | {r['cholesky_seconds']:.2f} | {r['pinv_seconds']:.2f} | "
              f"{r['speedup']:.1f}x | {r['method']} | {r['cond']:.2g} | {r['relative_difference']:.1e} | "
              f"{r['residual']:.1e} | {r['residual_pinv']:.1e} |" for r in rows]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out / f'{stem}.md'}")
    return 0


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device == "cuda" else "the CPU"


if __name__ == "__main__":
    raise SystemExit(main())
