"""results/qft/qft_results.md + .json and the loss curve of a QFt conversion."""

from __future__ import annotations

from pathlib import Path

from transformers_qf.qf2.data import Dataset
from transformers_qf.core.report import _cell, provenance_lines, write_json


def plot_loss(summary: dict, path: Path) -> None:
    """Loss per step (and a running mean) with alpha on a second axis, as a PNG."""
    try:
        import matplotlib
    except ImportError:  # requirements.txt has it; a bare GPU image may not
        print(f"matplotlib is not installed: no loss curve at {path} (the loss is in qft_results.json)")
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


def _mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


def schedule(summary: dict) -> dict:
    cfg = summary["config"]
    alpha = summary["alpha"]
    zero = next((i for i, a in enumerate(alpha) if a == 0.0), None)
    return {"samples": cfg["steps"] * cfg["batch_size"], "unique_rows": cfg["samples"], "copies": cfg["copies"],
            "batch": cfg["batch_size"], "steps": cfg["steps"], "steps_done": summary["steps_done"], "lr": cfg["lr"],
            "loss": cfg["loss"], "alpha": {"c": cfg["c"], "per": "sample", "start": alpha[0] if alpha else None,
                                           "first_zero_step": zero, "end": alpha[-1] if alpha else None}}


def write_report(out: Path, prov: dict, summary: dict, data: Dataset, before: dict, after: dict, preset: str) -> None:
    """results/qft/qft_results.md and .json (keys: schedule, figure3, trained_real_accuracy,
    heldout_real_accuracy, base_heldout_real_accuracy, general_ppl, ...)."""
    from transformers_qf.qf2.training import deviations

    cfg, loss = summary["config"], summary["loss"]
    head = min(200, len(loss))
    sched = schedule(summary)
    fig_held = sum(r["verdict"] == "holds" for r in after["figure3"])
    devs = deviations(cfg)
    seconds = {k: round(v, 1) for k, v in summary["seconds"].items()}
    lines = ["# QFt: layer converted to the QF2 firing block", "",
             "Written by `qft_train.py`; do not edit by hand.", ""]
    lines += provenance_lines(prov)
    lines += ["", "## Schedule", "",
              f"- preset `{preset}`: {sched['samples']} samples ({cfg['samples']} unique rows x {cfg['copies']}), batch "
              f"{cfg['batch_size']}, {cfg['steps']} steps, constant lr {cfg['lr']:.3g}, loss on {cfg['loss']} text, "
              f"beta {cfg['beta']}, layer {cfg['layer']}, trainable layers {summary['trainable']}",
              f"- alpha = {cfg['c']}^(samples seen), 0 below 0.01: 1.0 at step 0, 0 from step {sched['alpha']['first_zero_step']}",
              f"- loss: {_mean(loss[:head]):.3f} (first {head} steps) -> {_mean(loss[-head:]):.3f} (last {head})",
              f"- seconds: {seconds}",
              "- data: " + ", ".join(f"{k} {v}" for k, v in data.composition().items())
              + f" unique rows; {len(data.heldout_real)} real facts held out (never in any training row)", ""]
    lines += (["Deviations from the paper's batch-1 schedule:", ""] + [f"- {d}" for d in devs]
              if devs else ["No deviation from the paper's schedule (batch 1, 12,000 samples)."])
    lines += ["", "![loss curve](qft_loss.png)", "", f"## Figure 3 (left): {fig_held}/{len(after['figure3'])}", "",
              "| # | system | user | paper's converted model | base model | converted model | verdict |",
              "|---|---|---|---|---|---|---|"]
    for b, a in zip(before["figure3"], after["figure3"]):
        lines.append(f"| {a['step']} | {_cell(a['system'])} | {_cell(a['user'])} | {_cell(a['paper'])} | "
                     f"{_cell(b['answer'])} | {_cell(a['answer'])} | {a['verdict']} |")
    lines += ["", "Verdict: the converted model's answer contains the expected name (or \"Need more information\"). "
              "The paper's model answered check 2 wrongly (Tim Cook); the expected answer here is Steve Jobs. "
              "Checks 1 and 2 are training rows, as in the paper; 3-6 are about Oxinnovate, never trained on.", "",
              "## What the conversion keeps", "", "| | base model | converted model |", "|---|---|---|",
              f"| accuracy on {len(data.trained_real)} trained real company facts (closed book) | "
              f"{before['trained_accuracy']:.2f} | {after['trained_accuracy']:.2f} |",
              f"| accuracy on {len(data.heldout_real)} held-out real company facts | {before['heldout_accuracy']:.2f} | "
              f"{after['heldout_accuracy']:.2f} |",
              f"| perplexity of held-out samples' answers | {before['perplexity_answers']:.2f} | "
              f"{after['perplexity_answers']:.2f} |",
              f"| perplexity of general text (the base model's answers to open prompts) | "
              f"{before['perplexity_general']:.2f} | {after['perplexity_general']:.2f} |", "",
              "All asked in the plain `system: ...\\nuser: ...\\nassistant:` format, greedy. Targets (beyond the "
              "paper): held-out accuracy >= 0.8 x the base model's, general perplexity <= 2 x the base's.", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "qft_results.md").write_text("\n".join(lines))
    write_json(out / "qft_results.json", {
        "schedule": sched,
        "figure3": {"held": fig_held, "total": len(after["figure3"]), "rows": after["figure3"],
                    "base_rows": before["figure3"]},
        "trained_real_accuracy": after["trained_accuracy"],
        "heldout_real_accuracy": after["heldout_accuracy"],
        "base_heldout_real_accuracy": before["heldout_accuracy"],
        "base_trained_real_accuracy": before["trained_accuracy"],
        "general_ppl": {"base": before["perplexity_general"], "converted": after["perplexity_general"]},
        "answer_ppl": {"base": before["perplexity_answers"], "converted": after["perplexity_answers"]},
        "deviations": devs, "preset": preset, "provenance": prov, "composition": data.composition(),
        "config": cfg, "precision": summary["precision"], "seconds": summary["seconds"],
        "loss": [round(x, 4) for x in loss], "alpha": summary["alpha"][: (sched["alpha"]["first_zero_step"] or 0) + 1],
        "heldout_answers": {"base": before["heldout_answers"], "converted": after["heldout_answers"]},
        "trained_answers": {"base": before["trained_answers"], "converted": after["trained_answers"]},
    })


# -- QF2 (qf2_learn.py) -------------------------------------------------------------------------------
def write_walkthrough_report(stem: Path, prov: dict, result: dict, title: str) -> None:
    """{stem}.md and .json for one rule: keys steps_held, steps_total, collapsed, lr, rows_per_fact, table1."""
    from transformers_qf.core.report import firing_rounds_table, steps_table

    lines = [f"# QF2, the paper's 8 steps (seed 004, Table 1): {title}", "",
             "Written by `qf2_learn.py`; do not edit by hand.", ""]
    lines += provenance_lines(prov)
    lines += ["", f"## {result['steps_held']}/{result['steps_total']} steps hold (paper: {result['paper_steps_held']}); "
              f"collapsed: {str(result['collapsed']).lower()}", "",
              f"lr per round {result['lr']}, significances {result['significance']}, rows per fact "
              f"{result['rows_per_fact']}.", ""]
    lines += steps_table(result["table1"])
    bad = [f"step {r['step']}: {r['collapse']}" for r in result["table1"] if r["collapse"]]
    lines += ["", "Collapsed answers (a phrase repeated, or no sentence): " + (", ".join(bad) if bad else "none"), "",
              "## The updates", ""] + firing_rounds_table(result["updates"])
    if result.get("sweep"):
        lines += ["", "## lr sweep (paper significances; round 2 at a quarter of round 1)", "",
                  "| round-1 lr | steps held | collapsed |", "|---|---|---|"]
        lines += [f"| {p['round1_lr']:g} | {p['steps_held']} | {str(p['collapsed']).lower()} |" for p in result["sweep"]]
    lines += ["", "Verdict: `holds` when the answer contains the expected word (case-insensitive). Firing on y*'s side: "
              "the share of (kept row, neuron) pairs whose closed-book firing sigmoid(beta W x'_t) lies on the same "
              "side of 0.5 as the open-book y*_t, before and after the round. log p(answer): sum over the answer's "
              "tokens (`.\\n` included), teacher-forced after `assistant:`, closed book and open book.", ""]
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text("\n".join(lines))
    write_json(stem.with_suffix(".json"), {"provenance": prov, "title": title, **result})


def write_calibration_report(stem: Path, prov: dict, oracles: list[dict], calib: dict, points: list[dict],
                             paper_held: int) -> None:
    """{stem}.md and .json: oracle QF2, |x'|^2 and cosines of the kept rows, the lr sweep."""
    lines = ["# QF2: oracle, lr calibration and lr sweep", "", "Written by `qf2_learn.py`; do not edit by hand.", ""]
    lines += provenance_lines(prov)
    lines += ["", "## Oracle QF2", "",
              "The closed-book pass with the firing pattern at the kept rows replaced by the open-book y* (no weight "
              "change). log p: sum over the answer's tokens, teacher-forced; argmax: share of answer tokens that are "
              "the model's top token; greedy: the answer generated with the oracle firing at those positions.", "",
              "| fact | rows | log p closed | log p oracle | log p open book | argmax closed / oracle / open | "
              "greedy closed | greedy with oracle firing |", "|---|---|---|---|---|---|---|---|"]
    for o in oracles:
        lines.append(f"| {_cell(o['answer'])} | {o['rows']} | {o['logprob_closed']:.2f} | {o['logprob_oracle']:.2f} | "
                     f"{o['logprob_open']:.2f} | {o['argmax_closed']:.2f} / {o['argmax_oracle']:.2f} / "
                     f"{o['argmax_open']:.2f} | {_cell(o['greedy_closed'])} | {_cell(o['greedy_oracle'])} |")
    beta = calib["beta"]
    lines += ["", "## lr calibration (model-free)", "",
              f"A row's own push is lr * s * |x'|^2 * beta / 2 logits (beta {beta}); row t moves row u by "
              "lr * s_t * (x'_t . x'_u) * beta / 2. |x'|^2 of the mean input over generic text: "
              f"{calib['mean_input_norm2']:.1f}.", ""]
    for f in calib["facts"]:
        cos = [c for i, row in enumerate(f["cosine"]) for j, c in enumerate(row) if i != j]
        ccos = [c for i, row in enumerate(f["centred"]["cosine"]) for j, c in enumerate(row) if i != j]
        lines += [f"### {f['answer']} (lr {f['lr']:g})", "",
                  "| row predicts | s | ‖x'‖² | own push | largest push from another row | push if all rows agree "
                  "| mean cosine to the other rows | mean cosine to the probe's rows |", "|---|---|---|---|---|---|---|---|"]
        for i, tok in enumerate(f["tokens"]):
            others = [c for j, c in enumerate(f["cosine"][i]) if j != i]
            lines.append(f"| {_cell(repr(tok))} | {f['significance'][i]:g} | {f['norm2'][i]:.1f} | {f['own_push'][i]:.2f} | "
                         f"{f['max_cross_push'][i]:.2f} | {f['total_push_on_row'][i]:.2f} | "
                         f"{sum(others) / max(len(others), 1):.3f} | "
                         f"{sum(f['cosine_to_probe'][i]) / len(f['cosine_to_probe'][i]):.3f} |")
        lines += ["", f"Mean cosine between the kept rows: {sum(cos) / max(len(cos), 1):.3f} raw, "
                  f"{sum(ccos) / max(len(ccos), 1):.3f} centred. lr at which a row of significance 1 gets 4 logits of "
                  f"its own push (median |x'|^2): {f['lr_for_4_logits']:.3g}. Full cosine matrices in the JSON.", ""]
    lines += [f"## lr sweep ({calib['probe']['user']!r} is the probe prompt above)", "",
              f"Round 2's lr is a quarter of round 1's, as in the paper. Paper: {paper_held}/8.", "",
              "| round-1 lr | significances | steps held | collapsed | step 4 | step 5 | step 7 |", "|---|---|---|---|---|---|---|"]
    for p in points:
        a = p["answers"]
        lines.append(f"| {p['round1_lr']:g} | {p['significance']} | {p['steps_held']} | {str(p['collapsed']).lower()} | "
                     f"{_cell(a.get(4, ''))} | {_cell(a.get(5, ''))} | {_cell(a.get(7, ''))} |")
    ok = [p for p in points if p["steps_held"] >= paper_held and not p["collapsed"]]
    lines += ["", "Points that hold at least the paper's steps without collapse: "
              + (", ".join(f"{p['round1_lr']:g} ({p['significance']})" for p in ok) if ok else "none"), ""]
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text("\n".join(lines))
    write_json(stem.with_suffix(".json"), {"provenance": prov, "oracle": oracles, "calibration": calib, "sweep": points})
