"""results/bench/benchmark.md + benchmark.json + PNG plots from the runs' summary.json files.

    python -m transformers_qf.bench.report RUNS_DIR --out results/bench

Every folder under RUNS_DIR with a summary.json is a run; its folder name is its label in the tables.
Folders named `sweep-*` make the layer sweep (one row per layer; plot `benchmark_layers.png`); the
others make one table per protocol and number of facts, methods as rows. Sequential runs with
checkpoints give the retention plot (`benchmark_retention.png`: efficacy over the facts learned so far
and specificity, against the number of edits).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from transformers_qf.editing.editor import PAPER
from transformers_qf.core.report import _cell, write_json

COLUMNS = (
    ("efficacy", "efficacy", "{:.2f}"), ("paraphrase", "paraphrase", "{:.2f}"),
    ("n_paraphrases_scored", "paraphrases scored", "{:d}"),
    ("specificity", "specificity", "{:.2f}"), ("specificity_target_only", "spec. (own target only)", "{:.2f}"),
    ("specificity_same_relation", "spec. same relation", "{:.2f}"),
    ("specificity_other", "spec. other", "{:.2f}"), ("leak", "leak", "{:.2f}"),
    ("control_changed", "controls changed", "{:.2f}"),
    ("fluency_drop", "fluency drop", "{:+.1%}"), ("logprob_before", "log p before", "{:.1f}"),
    ("logprob_after", "log p after", "{:.1f}"), ("delta_rel", "‖ΔW‖/‖W‖", "{:.3f}"),
    ("residual_max", "residual", "{:.0e}"), ("seconds_per_edit", "s / edit", "{:.2f}"),
    ("device", "device", "{}"),
)
SEQUENTIAL_EXTRA = (("efficacy_immediate", "efficacy right after", "{:.2f}"),
                    ("paraphrase_immediate", "paraphrase right after", "{:.2f}"))


SPECIFICITY_NOTE = (
    "A control counts for specificity when the unedited model answered it right and the edited model's answer "
    "still gives its own target and names no edited fact's value (whole words; a value that is the control's own "
    "target, is named by its question, or was named by the unedited model's answer to it is not counted)."
    " `spec. (own target only)` is the earlier score, which "
    "asked only for the own target; `leak`: control answers naming an edited fact's value; `controls changed`: "
    "control answers that differ from the unedited model's. Runs summarized before these scores existed show "
    "`–` for them.")


DEVICE_NOTE = ("`device`: where the run's edits were made and scored (`s / edit` is that device's wall-clock "
               "time an edit); `cpu*`: a run summarized before the device was recorded, made on 2 CPU cores.")


SCALE_EDITS = 200  # runs of this many facts or more get a plot of their own (benchmark_scale.png), stopped ones too

# keys whose meaning changed when a kept control had to name no edited value; older summaries lack them
STRICT_KEYS = ("specificity", "specificity_target_only", "specificity_same_relation", "specificity_other", "leak",
               "control_changed")


def load_runs(root: Path) -> list[dict]:
    runs = []
    for path in sorted(root.glob("*/summary.json")):
        summary = json.loads(path.read_text(encoding="utf-8"))
        runs.append({"label": path.parent.name, **summary})
    return runs


def _fmt(value, pattern: str) -> str:
    if value is None:
        return "–"
    return pattern.format(value)


def _config(run: dict) -> str:
    c = run.get("method_config") or {}
    if run["method"].startswith("qf"):
        parts = [f"layers {','.join(map(str, c['layers']))}", c["positions"]]
        if c.get("gamma"):
            parts.append(f"γ {c['gamma']:g}")
        if c.get("ridge"):
            parts.append(f"ridge {c['ridge']:g}" + (" x each layer's mean |u|²" if c.get("ridge_relative") else ""))
        if c.get("covariance"):
            parts.append(f"covariance of {c.get('cov_corpus', 'generic')} text (shrink {c.get('cov_shrink', 0.1):g})")
            if c.get("cov_answer_weight"):
                parts.append(f"+ {c['cov_answer_weight']:g} x its answers' covariance")
            if c.get("null_space"):
                parts.append(f"change confined to its null space (variance < {c['null_space']:g} x mean)")
        if c.get("target", "open-book") != "open-book":
            contexts = f", {c['target_contexts'] + 1} contexts" if c.get("target_contexts") else ""
            contexts += f", up to {c['target_wordings']} rewordings" if c.get("target_wordings") else ""
            contexts += f", up to {c['target_templates']} relation phrasings" if c.get("target_templates") else ""
            contexts += ", the model's own answer forms" if c.get("target_forms") else ""
            essence = f", essence KL {c['target_essence']:g}" if c.get("target_essence") else ""
            spread = f", fitted at layer {c['layers'][-1]} and spread" if len(c["layers"]) > 1 else ""
            fit = f", lr {c['target_lr']:g}" if c.get("target_lr", 0.1) != 0.1 else ""
            fit += f", stopped below loss {c['target_stop']:g}" if c.get("target_stop") else ""
            parts.append(f"{c['target']} target ({c['target_steps']} steps{fit}{contexts}{essence}{spread})")
        elif c.get("target_wordings"):
            parts.append(f"open book on up to {c['target_wordings']} rewordings too")
        if c.get("keep_context"):
            parts.append("other rows kept")
        if c.get("incremental"):
            parts.append("factor extended by each round")
        if c.get("drift_rows"):
            parts.append(f"{c['drift_rows']} drift rows a context")
        return ", ".join(parts)
    if run["method"] == "ft":
        return f"layer {c['layers'][0]}, {c['steps']} Adam steps, lr {c['lr']:g}"
    return ""


def _value(run: dict, key: str):
    """A summary's value; the number of paraphrases scored, which older summaries lack, from their options where
    that is exact (every fact has at least two paraphrases, so --paraphrases 1 or 2 scores that many a fact)."""
    if "specificity_target_only" not in run and key in STRICT_KEYS:  # summarized before the strict scores
        return run.get("specificity") if key == "specificity_target_only" else None
    if key == "device" and run.get(key) is None:
        return "cpu*"  # summarized before the device was recorded: every such run was made on 2 CPU cores
    if key == "n_paraphrases_scored" and run.get(key) is None:
        per_fact = (run.get("options") or {}).get("paraphrases")
        scored = run.get("n_questions_scored")
        return per_fact * scored if per_fact in (1, 2) and scored is not None else None
    return run.get(key)


def _method(run: dict) -> str:
    """qf-paper only where the run's configuration is the paper's (a run started from --paper and changed is qf)."""
    if not run["method"].startswith("qf"):
        return run["method"]
    config = run.get("method_config") or {}
    return "qf-paper" if all(config.get(k, v) == v for k, v in PAPER.as_dict().items()) else "qf"


def _label(run: dict) -> str:
    """The run's name, and how far it got if it has not finished (summarized while going, or stopped)."""
    if run.get("complete") is False and run.get("edits_made") is not None:
        return f"{run['label']} (stopped after {run['edits_made']} of {run['n_facts']} edits)"
    return run["label"]


def table(runs: list[dict], sequential: bool, first: str = "run") -> list[str]:
    columns = COLUMNS + (SEQUENTIAL_EXTRA if sequential else ())
    lines = [f"| {first} | method | configuration | " + " | ".join(c[1] for c in columns) + " |",
             "|" + "---|" * (len(columns) + 3)]
    for run in runs:
        cells = [_fmt(_value(run, key), pattern) for key, _, pattern in columns]
        lines.append(f"| {_cell(_label(run))} | {_method(run)} | {_cell(_config(run))} | " + " | ".join(cells) + " |")
    return lines


def layer_plot(runs: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(runs, key=lambda r: r["layer"])
    layers = [r["layer"] for r in runs]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for key, style in (("efficacy", "o-"), ("paraphrase", "s-"), ("specificity", "^-"), ("leak", "x--")):
        ax.plot(layers, [r.get(key) for r in runs], style, label=key)
    ax.set_xlabel("edited layer")
    ax.set_ylabel("fraction")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"QF layer sweep: {runs[0]['n_facts']} facts, {runs[0]['protocol']} ({runs[0]['model']}, {runs[0]['dtype']})",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def retention_plot(runs: list[dict], path: Path, change: bool = False) -> None:
    """Efficacy and specificity at each run's checkpoints; with `change`, a third panel: the deepest edited
    layer's ‖ΔW‖/‖W0‖ after every edit (summary's "deepest_layer"), where a run that outgrows its rows shows."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    legend = 0.2 * ((len(runs) + 1) // 2) + 0.2  # inches: two labels a row, below the plots
    panels = 3 if change else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.6 + legend), sharex=True)
    for run in runs:
        points = [c for c in run.get("checkpoints", []) if c.get("efficacy") is not None]
        if not points:
            continue
        x = [c["edits"] for c in points]
        line, = axes[0].plot(x, [c["efficacy"] for c in points], "o-", label=_label(run))
        old = "specificity_target_only" not in points[0]  # summarized before the strict score: own target only
        axes[1].plot(x, [c["specificity"] for c in points], "o:" if old else "o-", color=line.get_color(),
                     label=_label(run) + (" (own target only)" if old else ""))
        if change and run.get("deepest_layer"):
            series = run["deepest_layer"]
            axes[2].plot(series["edits"], series["delta_rel"], "-", color=line.get_color())
    titles = ["efficacy over the facts learned so far", "specificity (controls still right)",
              "‖ΔW‖/‖W0‖ of the deepest edited layer"][:panels]
    for ax, name in zip(axes, titles):
        ax.set_xscale("log")
        ax.set_xlabel("number of sequential edits")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[:2]:
        ax.set_ylim(-0.03, 1.03)
    if change:
        axes[2].set_yscale("log")  # from a tenth to tens: a run that outgrows its rows jumps
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, legend / (3.6 + legend), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def portable(command: str | None, runs: str, label: str | None = None) -> str | None:
    """A run's recorded command with its --out/--before-from/--edits-from folders under `runs` as given to the
    report, not the absolute paths of the machine that made it; --out is the run's folder there (`label`), which
    may have been renamed when the run was brought from another machine."""
    if command is None:
        return None
    root = runs.rstrip("/")

    def folder(m: re.Match) -> str:
        return f"{m[1]} {root}/{label if label and m[1] == '--out' else m[2]}"

    return re.sub(r"(--out|--before-from|--edits-from) \S*?([^/\s]+)(?=\s|$)", folder, command)


def earlier_runs(path: Path, runs: list[dict]) -> list[dict]:
    """The runs of an earlier benchmark.json whose label has no run folder now, as they were recorded: a fresh
    machine's runs then add to the report instead of replacing it."""
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))["runs"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"--earlier {path}: not a benchmark.json written by this report ({error}); "
                         "give results/bench/benchmark.json or leave --earlier out") from None
    present = {r["label"] for r in runs}
    return [r for r in recorded if r["label"] not in present]


def not_run(root: Path, runs: list[dict]) -> dict[str, str]:
    """Runs of the folder's plan.json (if any) that have no complete run among `runs`: name -> command."""
    plan_file = root / "plan.json"
    if not plan_file.is_file():
        return {}
    plan = json.loads(plan_file.read_text(encoding="utf-8"))
    done = {r["label"] for r in runs if r.get("complete")}
    return {name: command for name, command in plan.items() if name not in done}


def render(runs: list[dict], out: Path, command: str, missing: dict[str, str] | None = None) -> str:
    sweep = [r for r in runs if r["label"].startswith("sweep-")]
    others = [r for r in runs if not r["label"].startswith("sweep-")]
    lines = ["# The facts benchmark", "", f"Written by `{command}` from the runs' summary.json files; "
             "do not edit by hand. Every number is a fraction of answers scored by free greedy generation "
             "(no teacher forcing); see docs/findings.md for the definitions.", "",
             SPECIFICITY_NOTE, "", DEVICE_NOTE, ""]
    if runs:
        r0 = runs[0]
        lines += [f"- **model**: {r0['model']} ({r0['dtype']})", f"- **commits**: "
                  f"{', '.join(sorted({str(r.get('commit')) for r in runs}))}", ""]
    groups: dict[tuple, list[dict]] = {}
    for r in others:
        groups.setdefault((r["protocol"], r["n_facts"]), []).append(r)
    for (protocol, n), group in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lines += [f"## {n} facts, {protocol} protocol", ""]
        lines += table(group, protocol == "sequential") + [""]
    if sweep:
        sweep.sort(key=lambda r: r["layer"])
        layer_plot(sweep, out / "benchmark_layers.png")
        lines += [f"## Layer sweep ({sweep[0]['n_facts']} facts, {sweep[0]['protocol']} protocol)", "",
                  "![layer sweep](benchmark_layers.png)", ""]
        lines += table(sweep, sweep[0]["protocol"] == "sequential", first="layer run") + [""]
    retention = [r for r in others if r["protocol"] == "sequential" and len(r.get("checkpoints", [])) > 1]
    if retention:
        retention_plot(retention, out / "benchmark_retention.png")
        lines += ["## Retention against the number of edits", "", "![retention](benchmark_retention.png)", ""]
        scale = [r for r in retention if r["n_facts"] >= SCALE_EDITS]
        if scale:
            retention_plot(scale, out / "benchmark_scale.png", change=True)
            lines += [f"The runs of {SCALE_EDITS} facts or more (those stopped early too):", "",
                      "![scale](benchmark_scale.png)", ""]
        by_steps: dict[tuple, list[dict]] = {}
        for r in retention:
            by_steps.setdefault(tuple(c["edits"] for c in r["checkpoints"]), []).append(r)
        for steps, group in sorted(by_steps.items(), key=lambda kv: kv[0][-1]):
            lines += ["| run | " + " | ".join(f"after {n}" for n in steps) + " |", "|---|" + "---|" * len(steps)]
            for r in group:
                lines.append(f"| {_cell(_label(r))} | " + " | ".join(
                    f"{_fmt(c['efficacy'], '{:.2f}')} / {_fmt(c['specificity'], '{:.2f}')}"
                    + ("" if "specificity_target_only" in c else "*") for c in r["checkpoints"]) + " |")
            lines += [""]
        lines += ["Each cell: efficacy over the facts learned so far / specificity, after that many edits "
                  "(*: the earlier specificity, own target only).", ""]
    lines += ["## The runs", "", "Each run's command (`python -m transformers_qf.bench ...`; `--before-from` only reuses "
              "the unedited model's answers of an identical earlier run):", ""]
    lines += [f"- `{r['label']}`: `{r.get('command') or '(not recorded)'}`" for r in sorted(runs, key=lambda r: r["label"])]
    if missing:
        lines += ["", "## Planned but not run (or not finished)", ""]
        lines += [f"- `{name}`: `{command}`" for name, command in missing.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m transformers_qf.bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("runs", help="folder holding one folder per run")
    parser.add_argument("--out", default="results/bench", help="where benchmark.md/.json and the plots go")
    parser.add_argument("--extra", default=None, help="a markdown file appended to the report (the findings)")
    parser.add_argument("--earlier", default=None, metavar="BENCHMARK_JSON",
                        help="keep the runs of this earlier benchmark.json that have no folder under RUNS "
                             "(e.g. results/bench/benchmark.json, when the run folders of earlier machines are gone)")
    args = parser.parse_args(argv)
    runs = load_runs(Path(args.runs))
    for run in runs:
        run["command"] = portable(run.get("command"), args.runs, run["label"])
    if args.earlier:
        try:
            runs = sorted(runs + earlier_runs(Path(args.earlier), runs), key=lambda r: r["label"])
        except ValueError as error:
            print(f"report: error: {error}", file=sys.stderr)
            return 2
    if not runs:
        print(f"report: error: no run under {args.runs} has a summary.json: run the benchmark first", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = render(runs, out, "python -m transformers_qf.bench.report " + " ".join(argv), not_run(Path(args.runs), runs))
    if args.extra:
        text += "\n" + Path(args.extra).read_text(encoding="utf-8")
    (out / "benchmark.md").write_text(text + "\n", encoding="utf-8")
    write_json(out / "benchmark.json", {"runs": runs})
    print(f"wrote {out / 'benchmark.md'} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
