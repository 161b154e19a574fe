"""How large a change a layer needs as its rows near d_mlp, and what a ridge does to it, from a run's state.

    python benchmarks/probes/row_capacity.py RUN_DIR [--slot 4] [--ridges 0,1,10,100] [--out results/perf]

Reads RUN_DIR/state.safetensors of a sequential run made with `--incremental`, saved before its rows passed
d_mlp (the dual form keeps every row: keys, residuals, significances, jitters), the bundled model's original
down_proj of the edited layer (`--slot`: which of the run's layers, 0 = the first), and the key covariance
the run solved in (from the key-statistics cache, found from the run's model, facts file and options).

For the first n rows (the rows of the first edits, in the order they were added) it solves for the change
exactly as the run did (the same metric and jitters) and reports ‖ΔW‖/‖W0‖; the last prefix is the run's own
solve after its last saved edit, and its recorded ‖ΔW‖/‖W0‖ is printed beside it as a check. Then, over all
rows, the same with each ridge lambda (given as a multiple of the rows' mean metric norm |u|² of K's diagonal,
so that 1 weighs the change as much as one typical row): ‖ΔW‖/‖W0‖ and how far the rows are then missed
(|ΔW u + r| / |target|: median and max; and / |r|, the share of the move a row asked for that is not made). Writes OUT/row_capacity.md and .json. CPU, float64; about a minute
for 8,000 rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from transformers_qf.bench.data import read_facts
from transformers_qf.bench.run import read_header
from transformers_qf.bench.state import STATE_FILE, load_state
from transformers_qf.core.models import BUNDLED, ensure_converted
from transformers_qf.core.report import write_json
from transformers_qf.solve import keystats
from transformers_qf.solve.keyed import KeyMetric


def _no_model(prompts, max_new_tokens=None):
    raise SystemExit("row_capacity: the key statistics of this run are not cached here: run the benchmark once "
                     "on this machine (it makes them), then this probe")


def run_metric(header: dict, layer: int) -> KeyMetric | None:
    """The KeyMetric the run solved layer `layer` in, from the cache the benchmark filled (None: QF's plain one)."""
    config = header["method_config"]
    if not config.get("covariance"):
        return None
    name = f"{header['model']}-{header['dtype']}"
    exclude = [c.user for c in read_facts(header["facts_file"]).controls]
    texts = keystats.generic_texts(_no_model, 256, cache_key=name)
    if config.get("cov_corpus") == "generic+facts":
        texts += keystats.known_fact_texts(_no_model, exclude, cache_key=name)
    found = keystats.cached_covariance(texts, layer, name)
    if found is None:
        _no_model(None)
    return KeyMetric(found[0], config.get("cov_shrink", 0.1))


def original_weight(model: str, layer: int) -> torch.Tensor:
    directory = ensure_converted(BUNDLED[model], progress=False)
    with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
        return f.get_tensor(f"model.layers.{layer}.mlp.down_proj.weight").to(torch.float64)


def solve(K: torch.Tensor, R: torch.Tensor, B: torch.Tensor, diagonal: torch.Tensor) -> torch.Tensor:
    """dW = -R^T (K + diag)^-1 B, float64."""
    A = K.clone()
    A.diagonal().add_(diagonal)
    L = torch.linalg.cholesky(A)
    del A
    return -(torch.cholesky_solve(R, L).T @ B)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a sequential run's folder (its state.safetensors and cases.jsonl)")
    parser.add_argument("--slot", type=int, default=-1, help="which of the run's edited layers (default: the last)")
    parser.add_argument("--ridges", default="0.01,0.1,1,10",
                        help="lambda, in units of the rows' mean |u|^2 in the metric")
    parser.add_argument("--prefixes", default="1000,2000,3000,4000,5000,6000,7000,7500,8000,8500",
                        help="numbers of first rows to solve exactly (those above the rows held are left out)")
    parser.add_argument("--out", default="results/perf")
    args = parser.parse_args(argv)
    run = Path(args.run)
    header = read_header(run / "cases.jsonl")
    found = load_state(run / STATE_FILE, header) if header else None
    if found is None:
        print(f"row_capacity: error: {run} has no state of its own run: give a run folder with cases.jsonl and "
              "state.safetensors", file=sys.stderr)
        return 2
    edits, state = found
    layers = header["method_config"]["layers"]
    slot = args.slot % len(layers)
    layer = layers[slot]
    prefix = f"layer{slot}.solver."
    if prefix + "jitter" not in state:
        print(f"row_capacity: error: the state after edit {edits} holds no rows (made without --incremental, or "
              "saved after the primal switch): give a state saved earlier", file=sys.stderr)
        return 2
    keys = state[prefix + "keys"].to(torch.float64)
    R, weights, jitters = (state[prefix + k].to(torch.float64) for k in ("R", "weights", "jitter"))
    norms = state[prefix + "target_norm"].to(torch.float64)
    metric = run_metric(header, layer)
    W0 = original_weight(header["model"], layer)
    w0 = float(torch.linalg.norm(W0))
    B = keys if metric is None else metric.apply(keys)
    K = keys @ B.T
    K = (K + K.T) / 2
    n = len(keys)
    recorded = read_recorded(run, edits, slot)

    def relative(dW: torch.Tensor) -> float:
        return float(torch.linalg.norm(dW)) / w0

    exact = []
    for m in sorted({p for p in map(int, args.prefixes.split(",")) if p < n} | {n}):
        dW = solve(K[:m, :m], R[:m], B[:m], jitters[:m])
        exact.append({"rows": m, "delta_rel": relative(dW)})
        print(f"exact, first {m} rows: |dW|/|W0| {exact[-1]['delta_rel']:.3f}", file=sys.stderr, flush=True)
    scale = float(K.diagonal().mean())
    ridged = []
    for multiple in map(float, args.ridges.split(",")):
        lam = multiple * scale
        dW = solve(K, R, B, lam / weights + jitters)
        miss = torch.linalg.norm(keys @ dW.T + R, dim=1)
        missed, share = miss / norms, miss / torch.linalg.norm(R, dim=1)
        ridged.append({"ridge_multiple": multiple, "ridge": lam, "delta_rel": relative(dW),
                       "missed_median": float(missed.median()), "missed_max": float(missed.max()),
                       "move_missed_median": float(share.median())})
        print(f"ridge {multiple:g} x {scale:.3g}: |dW|/|W0| {ridged[-1]['delta_rel']:.3f}, rows missed by "
              f"{ridged[-1]['missed_median']:.3f} (median), {ridged[-1]['missed_max']:.3f} (max)", file=sys.stderr)
    result = {"run": run.name, "edits": edits, "layer": layer, "rows": n, "d_mlp": keys.shape[1],
              "mean_key_norm_in_metric": scale, "recorded_delta_rel": recorded, "exact": exact, "ridge": ridged}
    write(Path(args.out), result)
    return 0


def read_recorded(run: Path, edits: int, slot: int) -> float | None:
    """The run's own |dW|/|W0| of this layer after edit `edits` (its cases file's row of that edit)."""
    key = f"edit/{edits - 1}"
    for line in (run / "cases.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("key") == key:
            return row["solves"][slot]["delta_rel"]
    return None


def write(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# How large a change a layer needs as its rows near d_mlp",
        "",
        f"Written by `python benchmarks/probes/row_capacity.py runs/benchmark/{result['run']}` from the run's state "
        f"after edit {result['edits']}: layer {result['layer']}, {result['rows']} rows, d_mlp = {result['d_mlp']}. "
        "Each change is solved from the original weight in the run's key metric (float64).",
        "",
        f"The run recorded ‖ΔW‖/‖W0‖ = {result['recorded_delta_rel']:.3f} for this layer after that edit; the solve "
        f"over all its rows here gives {result['exact'][-1]['delta_rel']:.3f}.",
        "",
        "| first rows | rows / d_mlp | exact ‖ΔW‖/‖W0‖ |",
        "|---|---|---|",
    ]
    lines += [f"| {e['rows']} | {e['rows'] / result['d_mlp']:.2f} | {e['delta_rel']:.3f} |" for e in result["exact"]]
    lines += ["", f"All {result['rows']} rows with a ridge lambda (a multiple of the rows' mean ‖u‖² in the metric, "
              f"{result['mean_key_norm_in_metric']:.3g}; `--ridge` takes lambda itself). A row is missed by "
              "‖ΔW u + r‖, given over ‖target‖ (the layer's output there) and over ‖r‖ (the move the row asked for).",
              "", "| lambda (x mean ‖u‖²) | lambda | ‖ΔW‖/‖W0‖ | missed / ‖target‖, median | max | "
              "missed / ‖r‖, median |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['ridge_multiple']:g} | {r['ridge']:.3g} | {r['delta_rel']:.3f} | {r['missed_median']:.4f} | "
              f"{r['missed_max']:.4f} | {r['move_missed_median']:.3f} |" for r in result["ridge"]]
    (out / "row_capacity.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(out / "row_capacity.json", result)
    print(f"wrote {out / 'row_capacity.md'}")


if __name__ == "__main__":
    sys.exit(main())
