"""Markdown + JSON reports of a walkthrough, with the provenance needed to diff them."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import torch


def provenance(loaded, device, extra: dict | None = None) -> dict:
    import transformers

    return {
        "model": loaded.name,
        "model_source": loaded.source,
        "quantization": loaded.quantization,
        "dtype": str(loaded.model.dtype).replace("torch.", ""),
        "device": str(device),
        "commit": git_commit(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        **(extra or {}),
    }


# What the scripts write, not code: a checkout whose only changes are fresh reports is not "dirty".
OUTPUTS = ("results", "parameters")


def git_commit(where: Path | None = None) -> str:
    """The commit of the checkout holding `where` (default: this package), + a mark when code or data in it has
    uncommitted changes (changes under OUTPUTS do not count); $QF_COMMIT where there is no git."""
    if os.environ.get("QF_COMMIT"):
        return os.environ["QF_COMMIT"]
    here = Path(where) if where is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                                check=True).stdout.strip()
        paths = [":(top)", *(f":(top,exclude){folder}" for folder in OUTPUTS)]
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *paths], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def _cell(text) -> str:
    return str(text if text is not None else "").replace("|", "\\|").replace("\n", " ")


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def steps_table(rows: list[dict]) -> list[str]:
    lines = [
        "| step | weights | system | query | paper's answer | this run's answer | expected | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['step']} | {r['weights']} | {_cell(r['system'])} | {_cell(r['user'])} | {_cell(r['paper'])} | "
            f"{_cell(r['answer'])} | {_cell(r['expect'])} | {r['verdict']} |"
        )
    return lines


def rounds_table(rounds: list[dict]) -> list[str]:
    lines = [
        "| fact learned | rows | solve | cond(U'ᵀU') | residual (float64 W') | residual (W' in model dtype) "
        "| ‖W'−W‖/‖W‖ | log p(answer) closed: before → after | open book | instruct s | update s | solve s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rounds:
        s = r["solve"]
        lines.append(
            f"| {_cell(r['fact']['answer'])} | {s['rows']} | {s['method']} | {s['cond']:.3g} | {s['residual']:.1e} | "
            f"{s['residual_applied']:.1e} | {s['delta_rel']:.4f} | {r['logprob_closed_before']:.2f} → "
            f"{r['logprob_closed_after']:.2f} | {r['logprob_open_book']:.2f} | {r['instruct_seconds']:.2f} | "
            f"{r['update_seconds']:.2f} | {s['seconds']:.2f} |"
        )
    return lines


def provenance_lines(prov: dict) -> list[str]:
    return [f"- **{k}**: {_cell(v)}" for k, v in prov.items()]


def firing_rounds_table(rounds: list[dict]) -> list[str]:
    """QF2's rounds: the Hebbian update and how close the closed-book firing came to the open-book one."""
    lines = [
        "| fact learned | rows | lr | firing on y*'s side: before → after | firing gap: before → after | ‖dW‖/‖W‖ "
        "| log p(answer) closed: before → after | open book |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rounds:
        s = r["solve"]
        lines.append(
            f"| {_cell(r['fact']['answer'])} | {s['rows']} | {s['lr']:g} | {s['agreement_before']:.3f} → "
            f"{s['agreement_after']:.3f} | {s['firing_gap_before']:.3f} → {s['firing_gap_after']:.3f} | "
            f"{s['delta_rel']:.4f} | "
            f"{r['logprob_closed_before']:.2f} → {r['logprob_closed_after']:.2f} | {r['logprob_open_book']:.2f} |"
        )
    return lines
