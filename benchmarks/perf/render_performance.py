"""Turn results/perf/performance_*.json (written by edit_latency.py) into results/perf/performance.md.

    python benchmarks/perf/render_performance.py [--results results/perf]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

def ms(entry: dict | None, unit: str) -> str:
    if not entry:
        return "—"
    value = entry["median_s"]
    return f"{value:.2f} s" if unit == "s" else f"{value * 1e3:.2f} ms"


def ratio(a: dict | None, b: dict | None) -> str:
    return f"{a['median_s'] / b['median_s']:.0f}×" if a and b else "—"


def gib(n) -> str:
    return f"{n / 2**30:.2f} GiB" if n else "—"


def memory_ratio(m: dict, what: str, kind: str) -> float | None:
    """Peak memory of `what` (edit, finetune) over that of a plain forward; kind: allocated, reserved (GPU) or rss."""
    if kind == "rss":
        a, b = m.get(f"peak_rss_{what}"), m.get("peak_rss_plain")
        return a["peak_rss"] / b["peak_rss"] if a and b else None
    a, b = m.get(f"peak_bytes_{what}"), m.get("peak_bytes_plain_forward")
    return a[kind] / b[kind] if a and b else None


def memory_cells(m: dict) -> str:
    if m.get("peak_rss_plain"):
        edit, plain = m["peak_rss_edit"]["peak_rss"], m["peak_rss_plain"]["peak_rss"]
        ft = memory_ratio(m, "finetune", "rss")
        return f"{gib(edit)} / {gib(plain)} = {edit / plain:.3f} (RSS) | " + (f"{ft:.3f} (RSS) |" if ft else "— |")
    if m.get("peak_bytes_plain_forward"):
        edit, plain = m["peak_bytes_edit"], m["peak_bytes_plain_forward"]
        cells = (f"{gib(edit['reserved'])} / {gib(plain['reserved'])} = {edit['reserved'] / plain['reserved']:.3f} "
                 f"reserved, {edit['allocated'] / plain['allocated']:.3f} allocated | ")
        ft = [memory_ratio(m, "finetune", kind) for kind in ("reserved", "allocated")]
        return cells + (f"{ft[0]:.3f} reserved, {ft[1]:.3f} allocated |" if ft[0] else "— |")
    return "not measured | — |"


def suite_section(data: dict) -> list[str]:
    unit = "s" if data["suite"] == "cpu" else "ms"
    env = data["environment"]
    lines = [f"## {data['suite'].upper()}, {env['dtype']}: {env.get('gpu', env['platform'])}", "",
             "- " + ", ".join(f"{k} {v}" for k, v in env.items() if k not in ("gpu", "platform")), ""]
    lines += [
        "| model | one edit | both passes (one forward) | two eager forwards | solve + apply (eager) "
        "| solve + apply (CUDA graph) | tokenize | (a) original way | (b) FT-L, 25 Adam steps | (c) plain forward "
        "| (a) / edit | (b) / edit | edit / (c) | peak memory: edit / plain | (b) / plain |",
        "|---|" + "---|" * 15,
    ]
    for name, m in data["models"].items():
        lines.append(
            f"| {name} | **{ms(m['edit'], unit)}** | {ms(m.get('capture_both_passes'), unit)} | "
            f"{ms(m.get('capture_eager_two_forwards'), unit)} | {ms(m.get('solve_and_apply'), unit)} | "
            f"{ms(m.get('solve_and_apply_graphed'), unit)} | "
            f"{ms(m.get('tokenize_both_passes'), 'ms')} | {ms(m.get('original_way'), unit)} | "
            f"{ms(m.get('finetune_25_adam'), unit)} | {ms(m.get('plain_forward'), unit)} | "
            f"{ratio(m.get('original_way'), m['edit'])} | {ratio(m.get('finetune_25_adam'), m['edit'])} | "
            f"{m['edit']['median_s'] / m['plain_forward']['median_s']:.2f} | " + memory_cells(m)
        )
    lines.append("")
    for name, m in data["models"].items():
        if "original_way" not in m:
            lines.append(f"- {name}: (a) and (b) not timed for this row (`--no-baselines`, or a compiled-capture row).")
        rss = memory_ratio(m, "edit", "rss")
        if rss and rss < 1:
            lines.append(f"- {name}: the edit's peak RSS is below plain inference's because a resident set counts "
                         "only the pages touched: the cut forward never reads the layers above L nor the LM head, "
                         "which stay on disk where the weights are mapped from their file rather than copied.")
        graphs = {k: m[k] for k in ("cuda_graphs", "compiled_capture", "solve_graphs") if k in m}
        if graphs:
            parts = [m.get(k) for k in ("tokenize_both_passes", "capture_both_passes", "solve_and_apply_graphed")]
            rest = (f"; the rest of the edit (the parameters folder's bookkeeping, kept rows, finiteness check, "
                    f"Python) {(m['edit']['median_s'] - sum(p['median_s'] for p in parts)) * 1e3:.2f} ms"
                    if all(parts) else "")
            lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in graphs.items()) +
                         f"; first edit (captures{', compiles' if m.get('compiled_capture') == 'used' else ''}) "
                         f"{m['first_edit_s']:.1f} s; one edit = median of {m['edit']['repeats']}" + rest)
    lines.append("")
    for name, m in data["models"].items():
        if "answer_length" in m:
            lines += [f"**Edit time vs answer length** ({name})", "",
                      "| answer words | kept positions | method | one edit | its capture alone | its solve alone |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {r['answer_words']} | {r['kept_positions']} | {r.get('method', '—')} | {ms(r, unit)} | "
                      f"{ms(r.get('capture'), unit)} | {ms(r.get('solve'), unit)} |" for r in m["answer_length"]]
            lines.append("")
        if "resolve_rows" in m:
            lines += [f"**Re-solve from the original W vs accumulated rows** ({name}; random rows, solve + apply)", "",
                      "| rows | method | residual | time |", "|---|---|---|---|"]
            lines += [f"| {r['rows']} | {r['method']} | {r['residual']:.1e} | {ms(r, unit)} |" for r in m["resolve_rows"]]
            lines.append("")
        if "incremental_rows" in m:
            lines += [f"**Incremental: one round of 30 new rows on top of the rest** ({name}; `qf.Accumulator`)", "",
                      "| rows after the round | residual of the new rows (W' as stored) | time of that round |",
                      "|---|---|---|"]
            for r in m["incremental_rows"]:
                lines.append(f"| {r['rows']} | stopped: {r['stopped']} | — |" if "stopped" in r else
                             f"| {r['rows']} | {r['residual']:.1e} | {ms(r, unit)} |")
            lines.append("")
    return lines


def sharded_section(data: dict) -> list[str]:
    env = data["environment"]
    return [
        f"## Sharded over {data['gpus']} GPUs ({env.get('gpu')}, `benchmarks/perf/sharded_edit.py`)", "",
        f"- {data['shape']} shape, random bf16 weights, decoder layers split evenly with accelerate's device_map; "
        f"layer {data['layer']}'s down_proj on {data['edited_weight_device']}; commit {env['commit']}", "",
        "| | one edit | residual (W' as stored) | ‖W'−W‖/‖W‖ |", "|---|---|---|---|",
        f"| one GPU (CUDA graph) | {ms(data['single_gpu_edit'], 'ms')} | {data['report_single']['residual_applied']:.1e} "
        f"| {data['report_single']['delta_rel']:.4f} |",
        f"| {data['gpus']} GPUs (CUDA graphs: {data['cuda_graphs_sharded']}) | {ms(data['sharded_edit'], 'ms')} | "
        f"{data['report_sharded']['residual_applied']:.1e} | {data['report_sharded']['delta_rel']:.4f} |", "",
        f"W' sharded vs one GPU: relative difference {data['w_prime_rel_diff_sharded_vs_single']:.1e} (bf16 activations "
        "of the two runs differ by rounding; each meets its own constraints).", "",
    ]


def bf16_caveat(root: Path) -> str:
    """What recording in bfloat16 does to the small model's fact, from bf16_precision.json (if it exists)."""
    path = root / "bf16_precision.json"
    if not path.exists():
        return ""
    data = json.loads(path.read_text())
    all_bf16 = [v for v in data["variants"] if v["recorded"] == v["w_prime_stored"] == v["answered"] == "bfloat16"]
    if not all_bf16 or all_bf16[0]["holds_the_fact"]:
        return ""
    return (f" (but recording in bfloat16 loses the fact taught to {data.get('model_name', 'SmolLM2-135M')}: "
            "see bf16_precision.md)")


def targets_section(suites: dict, root: Path) -> list[str]:
    lines = ["## Targets", "", "| target | setting | measured | verdict |", "|---|---|---|---|"]
    for key in sorted(k for k in suites if k.startswith("cpu")):
        m = next(iter(suites[key]["models"].values()))
        t, dtype = m["edit"]["median_s"], suites[key]["environment"]["dtype"]
        caveat = bf16_caveat(root) if dtype == "bfloat16" else ""
        lines.append(f"| CPU, 2 cores, bundled 1.5B: one edit ≤ 2.0 s | {dtype} | {t:.2f} s | "
                     f"{'met' if t <= 2.0 else 'missed'}{caveat} |")
    for key in sorted(k for k in suites if k.startswith("cpu")):
        m = next(iter(suites[key]["models"].values()))
        r = memory_ratio(m, "edit", "rss")
        if r:
            lines.append(f"| CPU: edit peak memory ≤ 1.05 × plain inference | {suites[key]['environment']['dtype']}, "
                         f"peak RSS | {r:.3f} | {'met' if r <= 1.05 else 'missed'} |")
    gpu = suites.get("gpu")
    if gpu:
        models = gpu["models"]
        best_name = min((k for k in models if k.startswith("random 1.5b")), key=lambda k: models[k]["edit"]["median_s"])
        best, base = models[best_name], models.get("random 1.5b", models[best_name])
        t = best["edit"]["median_s"]
        lines.append(f"| GPU, bf16, 1.5B shape: one edit ≤ 5 ms | {best_name} | {t * 1e3:.2f} ms | "
                     f"{'met' if t <= 0.005 else 'missed'} |")
        for label, key, limit in (("(b) FT-L", "finetune_25_adam", 100), ("(a) the original's way", "original_way", 20)):
            r = base[key]["median_s"] / t
            lines.append(f"| GPU: ≥ {limit}× faster than {label} | {best_name} vs random 1.5b | {r:.0f}× | "
                         f"{'met' if r >= limit else 'missed'} |")
        for kind in ("reserved", "allocated"):
            worst = max(memory_ratio(m, "edit", kind) for m in models.values())
            lines.append(f"| GPU: edit peak memory ≤ 1.05 × plain inference | worst shape, {kind} | {worst:.3f} | "
                         f"{'met' if worst <= 1.05 else 'missed'} |")
    return lines + [""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results/perf")
    args = parser.parse_args(argv)
    root = Path(args.results)
    suites = {path.stem.removeprefix("performance_"): json.loads(path.read_text())
              for path in sorted(root.glob("performance_*.json")) if path.stem != "performance_sharded"}
    lines = [
        "# Edit latency and memory",
        "",
        "Written by `benchmarks/perf/render_performance.py` from the JSON that `benchmarks/perf/edit_latency.py` wrote "
        "(`--suite cpu` and `--suite cpu --dtype bfloat16` on this project's machine with the bundled model's real "
        "weights, under the CPU lock; `--suite gpu --random-shape --compile` on the lent GPU, random weights of the "
        "real shapes). Medians of repeated runs.",
        "",
        "Peak memory: on the GPU, the peak of torch's allocator (weights included), reserved (which also counts the "
        "private pools of the captured CUDA graphs) and allocated; on the CPU, the peak resident set of a child "
        "process that loads the model, warms up, trims the heap, resets its peak and runs the work once "
        "(FT-L: 2 Adam steps, whose memory no further step grows).",
        "",
        "One edit = both teacher-forced passes in one forward cut after layer L + the float64 solve + the update "
        "written into down_proj (`QF.learn`, rows kept in memory). (a) = the original's way: both passes token by "
        "token through the whole model with a KV cache, then the same solve. (b) = Adam on the same down_proj, 25 "
        "steps. (c) = one plain forward of the closed-book prompt and answer, whole model.",
        "",
    ]
    lines += targets_section(suites, root)
    for key in sorted(suites):
        lines += suite_section(suites[key])
    sharded = root / "performance_sharded.json"
    if sharded.exists():
        lines += sharded_section(json.loads(sharded.read_text()))
    (root / "performance.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {root / 'performance.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
