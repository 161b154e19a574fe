"""The perf scripts' reports: NAME.json and NAME.md side by side under an output folder."""

from __future__ import annotations

from pathlib import Path

from transformers_qf.core.report import write_json


def write_report(out: Path, name: str, data: dict, lines: list[str]) -> None:
    """out/NAME.json from `data`, out/NAME.md from `lines`; prints where the report went."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", data)
    (out / f"{name}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out / name}.md")
