"""Turn results/performance_{cpu,gpu}.json (written by edit_latency.py) into results/performance.md.

    python benchmarks/render_performance.py [--results results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TARGETS = {  # the targets: (suite, model key prefix, what, limit)
    "cpu": [("edit of the bundled 1.5B model", "edit", 2.0)],
    "gpu": [("edit, 1.5B shape, bf16", "edit", 0.005)],
}


def ms(entry: dict | None, unit: str) -> str:
    if not entry:
        return "—"
    value = entry["median_s"]
    return f"{value:.2f} s" if unit == "s" else f"{value * 1e3:.2f} ms"


def ratio(a: dict | None, b: dict | None) -> str:
    return f"{a['median_s'] / b['median_s']:.0f}×" if a and b else "—"


def gib(n) -> str:
    return f"{n / 2**30:.2f} GiB" if n else "—"


def suite_section(data: dict) -> list[str]:
    unit = "s" if data["suite"] == "cpu" else "ms"
    env = data["environment"]
    lines = [f"## {data['suite'].upper()}: {env.get('gpu', env['platform'])}", "",
             "- " + ", ".join(f"{k} {v}" for k, v in env.items() if k not in ("gpu", "platform")), ""]
    lines += [
        "| model | one edit | both passes (one forward) | two eager forwards | solve + apply | tokenize "
        "| (a) original way | (b) FT-L, 25 Adam steps | (c) plain forward | (a) / edit | (b) / edit | edit / (c) "
        "| peak memory: edit / plain | (b) / plain |",
        "|---|" + "---|" * 13,
    ]
    for name, m in data["models"].items():
        plain = m.get("peak_bytes_plain_forward")
        lines.append(
            f"| {name} | **{ms(m['edit'], unit)}** | {ms(m.get('capture_both_passes'), unit)} | "
            f"{ms(m.get('capture_eager_two_forwards'), unit)} | {ms(m.get('solve_and_apply'), unit)} | "
            f"{ms(m.get('tokenize_both_passes'), unit)} | {ms(m.get('original_way'), unit)} | "
            f"{ms(m.get('finetune_25_adam'), unit)} | {ms(m.get('plain_forward'), unit)} | "
            f"{ratio(m.get('original_way'), m['edit'])} | {ratio(m.get('finetune_25_adam'), m['edit'])} | "
            f"{m['edit']['median_s'] / m['plain_forward']['median_s']:.2f} | "
            + (f"{gib(m.get('peak_bytes_edit'))} / {gib(plain)} = {m['peak_bytes_edit'] / plain:.3f} | "
               f"{m['peak_bytes_finetune'] / plain:.3f} |" if plain and m.get("peak_bytes_finetune") else
               (f"{m['peak_bytes_edit'] / plain:.3f} | — |" if plain else "not measured on CPU | — |"))
        )
    lines.append("")
    for name, m in data["models"].items():
        if "answer_length" in m:
            lines += [f"**Edit time vs answer length** ({name})", "", "| answer words | kept positions | one edit |",
                      "|---|---|---|"]
            lines += [f"| {r['answer_words']} | {r['kept_positions']} | {ms(r, unit)} |" for r in m["answer_length"]]
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
        f"## Sharded over {data['gpus']} GPUs ({env.get('gpu')}, `benchmarks/sharded_edit.py`)", "",
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


def targets_section(suites: dict) -> list[str]:
    lines = ["## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    cpu = suites.get("cpu")
    if cpu:
        m = next(iter(cpu["models"].values()))
        t = m["edit"]["median_s"]
        lines.append(f"| CPU, 2 cores, bundled 1.5B: one edit ≤ 2.0 s | {t:.2f} s | {'met' if t <= 2.0 else 'missed'} |")
    gpu = suites.get("gpu")
    if gpu:
        models = gpu["models"]
        best = min((m for k, m in models.items() if k.startswith("random 1.5b")), key=lambda m: m["edit"]["median_s"])
        base = models.get("random 1.5b", best)
        t = best["edit"]["median_s"]
        lines.append(f"| GPU, bf16, 1.5B shape: one edit ≤ 5 ms | {t * 1e3:.2f} ms | {'met' if t <= 0.005 else 'missed'} |")
        for label, key, limit in (("(b) FT-L", "finetune_25_adam", 100), ("(a) the original's way", "original_way", 20)):
            r = base[key]["median_s"] / best["edit"]["median_s"]
            lines.append(f"| GPU: ≥ {limit}× faster than {label} | {r:.0f}× | {'met' if r >= limit else 'missed'} |")
        worst = max(m["peak_bytes_edit"] / m["peak_bytes_plain_forward"] for m in models.values())
        lines.append(f"| edit peak memory ≤ 1.05 × plain inference (worst shape) | {worst:.3f} | "
                     f"{'met' if worst <= 1.05 else 'missed'} |")
    return lines + [""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results")
    args = parser.parse_args(argv)
    root = Path(args.results)
    suites = {s: json.loads((root / f"performance_{s}.json").read_text())
              for s in ("cpu", "gpu") if (root / f"performance_{s}.json").exists()}
    lines = [
        "# Edit latency and memory",
        "",
        "Written by `benchmarks/render_performance.py` from the JSON that `benchmarks/edit_latency.py` wrote "
        "(`--suite cpu` on this project's machine with the bundled model's real weights; `--suite gpu --random-shape "
        "--compile` on the lent GPU, random weights of the real shapes). Medians of repeated runs.",
        "",
        "One edit = both teacher-forced passes in one forward cut after layer L + the float64 solve + the update "
        "written into down_proj (`QF.learn`, rows kept in memory). (a) = the original's way: both passes token by "
        "token through the whole model with a KV cache, then the same solve. (b) = Adam on the same down_proj, 25 "
        "steps. (c) = one plain forward of the closed-book prompt and answer, whole model.",
        "",
    ]
    lines += targets_section(suites)
    for s in ("cpu", "gpu"):
        if s in suites:
            lines += suite_section(suites[s])
    sharded = root / "performance_sharded.json"
    if sharded.exists():
        lines += sharded_section(json.loads(sharded.read_text()))
    (root / "performance.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {root / 'performance.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
