"""results/qft_results.md + .json and the loss curve of a QFt conversion."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path

from transformers_qf.qf2.data import Dataset
from transformers_qf.qf2.training import PRESETS
from transformers_qf.core.report import _cell, provenance_lines, write_json

TARGET_MINUTES = 60  # the CPU preset's promise, on 2 cores


def plot_loss(summary: dict, path: Path) -> None:
    """Loss per step (and a running mean) with alpha on a second axis, as a PNG."""
    try:
        import matplotlib
    except ImportError:  # requirements.txt has it; a bare GPU image may not
        print(f"matplotlib is not installed: no loss curve at {path}")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, loss, alpha = summary["steps"], summary["loss"], summary["alpha"]
    if not steps:
        return
    window = max(1, len(loss) // 50)
    smooth = [sum(loss[max(0, i - window + 1): i + 1]) / len(loss[max(0, i - window + 1): i + 1]) for i in range(len(loss))]
    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=110)
    ax.plot(steps, loss, color="0.8", lw=0.8, label="loss per step")
    ax.plot(steps, smooth, color="C0", lw=1.6, label=f"running mean ({window} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax2 = ax.twinx()
    ax2.plot(steps, alpha, color="C3", lw=1.2, label="alpha")
    ax2.set_ylim(-0.05, 1.05)
    ax2.set_ylabel("alpha (share of the original layer)")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right", fontsize=8)
    ax.set_title(f"QFt, layer {summary['config']['layer']}, beta {summary['config']['beta']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def gives_up(config: dict) -> list[str]:
    """How a configuration differs from the paper's schedule, in words."""
    paper = asdict(PRESETS["paper"])
    lines = []
    if config["steps"] * config["batch_size"] < paper["steps"] * paper["batch_size"] or config["batch_size"] != paper["batch_size"]:
        lines.append(f"{config['steps']} optimizer steps of {config['batch_size']} samples "
                     f"(paper: {paper['steps']} steps of {paper['batch_size']})")
    if config["samples"] != paper["samples"]:
        lines.append(f"{config['samples']} generated samples (paper: {paper['samples']} facts, cloned 4 times)")
    if config["loss"] != paper["loss"]:
        lines.append("loss on the answer's tokens only (paper: every token of the text)")
    if config["init"] == "lstsq":
        lines.append("down_proj of the firing block starts from its closed-form least-squares fit to the original "
                     "layer's output, so the blend is skipped: alpha is 0 from the first step (paper: annealed "
                     "from the original layer, alpha = 0.99^step)")
    if config["lr"] != paper["lr"]:
        lines.append(f"learning rate {config['lr']} (paper: {paper['lr']})")
    if config.get("distill", 0.0) > 0:
        lines.append(f"an extra loss term (weight {config['distill']}) keeps the last trainable layer's output close "
                     "to the original model's (paper: cross-entropy only)")
    return lines


def _mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


def write_report(out: Path, prov: dict, summary: dict, data: Dataset, before: dict, after: dict, seconds: dict,
                 threads: int) -> None:
    cfg, loss = summary["config"], summary["loss"]
    head = min(20, len(loss))
    minutes = seconds["conversion"] / 60
    kinds = Counter(s.kind for s in data.train)
    lines = ["# QFt: layer converted to the QF2 firing block", "",
             "Written by `qft_train.py`; do not edit by hand.", ""]
    lines += provenance_lines(prov)
    lines += ["", "## The conversion", "",
              f"- layer {cfg['layer']}, beta {cfg['beta']}, trainable layers {list(summary['trainable'])}, "
              f"c {cfg['c']}, lr {cfg['lr']}, loss on {cfg['loss']}, init {cfg['init']}, "
              f"distillation weight {cfg.get('distill', 0.0)}",
              f"- data: {data.known_facts} of {data.candidate_facts} real company facts answered correctly by the base "
              f"model; {len(data.train)} training samples ({kinds['real']} real, {kinds['instructed']} instructed, "
              f"{kinds['unknown']} unknown); {len(data.heldout_real)} real facts held out",
              f"- steps: {summary['steps_done']} of {cfg['steps']}" + (" (stopped early by the time budget)"
                                                                      if summary["stopped_early"] else ""),
              f"- loss: {_mean(loss[:head]):.3f} (first {head} steps) -> {_mean(loss[-head:]):.3f} (last {head}); "
              f"alpha at the end {summary['alpha'][-1] if summary['alpha'] else 'n/a'}",
              ]
    if summary["fit"]:
        fit = summary["fit"]
        lines.append(f"- closed-form down_proj: median |Y D^T - (v + FF(x))| / |v + FF(x)| = "
                     f"{fit['median_rel_error_fit']:.4f} on the fit's tokens, {fit['median_rel_error_heldout']:.4f} "
                     f"on held-out tokens ({fit['tokens']} tokens, ridge {fit['ridge']})")
    verdict = "met" if minutes <= TARGET_MINUTES else "missed"
    lines += ["", "| phase | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds.get(name, summary['seconds'].get(name, float('nan'))):.0f} |"
              for name in ("data", "cache", "fit", "train", "save")]
    lines += [f"| **conversion** (all of the above) | **{seconds['conversion']:.0f}** ({minutes:.1f} min; target "
              f"<= {TARGET_MINUTES} min on 2 cores: {verdict}; {threads} threads here) |",
              f"| checks before / after (not counted) | {seconds.get('checks_before', 0):.0f} / "
              f"{seconds.get('checks_after', 0):.0f} |", ""]
    given_up = gives_up(cfg)
    if given_up:
        lines += ["What this run gives up against the paper's schedule:", ""] + [f"- {g}" for g in given_up] + [""]
    lines += ["![loss curve](qft_loss.png)", "", "## Figure 3 (left) checks", "",
              "| # | system | user | paper's converted model | base model | converted model | verdict |",
              "|---|---|---|---|---|---|---|"]
    for b, a in zip(before["figure3"], after["figure3"]):
        lines.append(f"| {a['step']} | {_cell(a['system'])} | {_cell(a['user'])} | {_cell(a['paper'])} | "
                     f"{_cell(b['answer'])} | {_cell(a['answer'])} | {a['verdict']} |")
    lines += ["", "Verdict: the converted model's answer contains the expected name (or \"Need more information\"). "
              "The paper's model answered check 2 wrongly (Tim Cook); the expected answer here is Steve Jobs.", "",
              "## What the conversion cost", "", "| | base model | converted model |", "|---|---|---|",
              f"| accuracy on {len(data.heldout_real)} held-out real company facts | {before['heldout_accuracy']:.2f} | "
              f"{after['heldout_accuracy']:.2f} |",
              f"| perplexity of held-out samples' answers | {before['perplexity_answers']:.2f} | "
              f"{after['perplexity_answers']:.2f} |",
              f"| perplexity of held-out samples' whole text | {before['perplexity_text']:.2f} | "
              f"{after['perplexity_text']:.2f} |",
              f"| perplexity of general text (the base model's answers to open prompts) | "
              f"{before['perplexity_general']:.2f} | {after['perplexity_general']:.2f} |", "",
              "All asked in the plain `system: ...\\nuser: ...\\nassistant:` format, greedy. Held-out facts were never "
              "trained on, in any phrasing. The base model was trained for its chat format, not this one, so its "
              "numbers here are a reference, not a ceiling.", "",
              "Held-out questions whose verdict changed:", ""]
    changed = [(b, a) for b, a in zip(before["heldout_answers"], after["heldout_answers"]) if b["right"] != a["right"]]
    lines += [f"- {_cell(a['user'])}: {_cell(b['answer'])} -> {_cell(a['answer'])}" for b, a in changed] or ["- none"]
    lines.append("")
    out.mkdir(parents=True, exist_ok=True)
    (out / "qft_results.md").write_text("\n".join(lines))
    write_json(out / "qft_results.json", {
        "provenance": prov, "seconds": seconds, "summary": {k: v for k, v in summary.items() if k not in ("steps",)},
        "data": {"known_facts": data.known_facts, "candidate_facts": data.candidate_facts, "train": dict(kinds),
                 "heldout_real": [s.as_dict() for s in data.heldout_real]},
        "before": before, "after": after,
    })
