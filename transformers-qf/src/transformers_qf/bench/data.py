"""The benchmark's facts file: JSON lines, read with every mistake reported by its line number.

A fact row (the fact is given in the system turn; the model must then answer `user` without it):

    {"system": "Velmora Labs was founded by Amara Lindqvist.", "user": "Who founded Velmora Labs?",
     "assistant": "Velmora Labs was founded by Amara Lindqvist.", "target": "Amara Lindqvist",
     "paraphrases": ["Who is the founder of Velmora Labs?", "Who started Velmora Labs?"], "significance": null}

A control row (a question the unedited model answers with `target`; an edit should not change that):

    {"type": "control", "user": "What is the capital of France?", "target": "Paris"}

`target` is what a right answer must contain (whole words) and what a control's answer leaks; the
positions target / target-next / value constrain the answer rows that spell it. Optional keys are kept:
"subject" (as written in `user`; needed by the positions subject / subject-last / subject-copies and by
target wordings and forms), "relation" (splits the controls into those about the facts' relations and
the rest), and one {"type": "meta", ...} row saying how the file was made. Blank lines are skipped.

A fact row is read into the one `core.facts.Fact`; its key "assistant" is the Fact's `answer` (mapped
here, in `_fact` and `fact_row`, and nowhere else).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers_qf.core.facts import Fact

FACT_KEYS = ("system", "user", "assistant", "target", "paraphrases", "significance")
CONTROL_KEYS = ("user", "target")


class FactsFileError(ValueError):
    """A facts file that cannot be used; the message names the file and line."""


@dataclass
class Control:
    user: str
    target: str
    relation: str | None = None
    subject: str | None = None

    def row(self) -> dict:
        return {"type": "control", **{k: v for k, v in asdict(self).items() if k in CONTROL_KEYS or v is not None}}


@dataclass
class FactsFile:
    facts: list[Fact]
    controls: list[Control]
    meta: dict = field(default_factory=dict)

    def same_relation_controls(self) -> list[bool]:
        """For each control, whether it asks about a relation that some fact teaches."""
        taught = {f.relation for f in self.facts if f.relation}
        return [c.relation in taught for c in self.controls]


def read_facts(path: str | Path) -> FactsFile:
    """Read and validate a facts file; FactsFileError names the first bad line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise FactsFileError(f"cannot read facts file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise FactsFileError(f"{path} is not UTF-8 text: give a JSON-lines file") from None
    facts, controls, meta = [], [], {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise FactsFileError(f"{where}: not valid JSON ({e.msg} at column {e.colno}): one JSON object per line") from None
        if not isinstance(row, dict):
            raise FactsFileError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
        kind = row.get("type", "fact")
        if kind == "fact":
            facts.append(_fact(row, where))
        elif kind == "control":
            controls.append(_control(row, where))
        elif kind == "meta":
            meta = {k: v for k, v in row.items() if k != "type"}
        else:
            raise FactsFileError(f"{where}: unknown row type {kind!r}: use 'control' (or leave it out for a fact)")
    if not facts:
        raise FactsFileError(f"{path} holds no facts: give at least one row with system, user, assistant and target")
    return FactsFile(facts, controls, meta)


def write_facts(path: str | Path, data: FactsFile) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ([{"type": "meta", **data.meta}] if data.meta else []) + [fact_row(f) for f in data.facts] + \
        [c.row() for c in data.controls]
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def fact_row(fact: Fact) -> dict:
    """A fact's row of a facts file: the keys FACT_KEYS (the answer under "assistant"), then relation and
    subject where set."""
    row = {"system": fact.system, "user": fact.user, "assistant": fact.answer, "target": fact.target,
           "paraphrases": list(fact.paraphrases), "significance": fact.significance}
    return row | {k: v for k, v in (("relation", fact.relation), ("subject", fact.subject)) if v is not None}


def _text(row: dict, key: str, where: str, what: str) -> str:
    if key not in row:
        raise FactsFileError(f"{where}: missing key {key!r}: a {what} row needs {', '.join(_needed(what))}")
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise FactsFileError(f"{where}: {key!r} must be a non-empty string, got {json.dumps(value)}")
    return value.strip()


def _needed(what: str) -> tuple[str, ...]:
    return FACT_KEYS[:4] if what == "fact" else CONTROL_KEYS


def _optional_text(row: dict, key: str, where: str) -> str | None:
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise FactsFileError(f"{where}: {key!r} must be a string or null, got {json.dumps(value)}")
    return value


def _fact(row: dict, where: str) -> Fact:
    system, user, assistant, target = (_text(row, k, where, "fact") for k in FACT_KEYS[:4])
    if target.lower() not in assistant.lower():
        raise FactsFileError(f"{where}: the target {target!r} does not occur in the assistant answer {assistant!r}: "
                             "the target is what a correct answer must contain")
    paraphrases = row.get("paraphrases", [])
    if not isinstance(paraphrases, list) or not all(isinstance(p, str) and p.strip() for p in paraphrases):
        raise FactsFileError(f"{where}: 'paraphrases' must be a list of non-empty strings, got {json.dumps(paraphrases)}")
    significance = row.get("significance")
    if significance is not None:
        words = len(assistant.split())
        if (not isinstance(significance, list) or len(significance) != words
                or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s >= 0
                           for s in significance)):
            raise FactsFileError(f"{where}: 'significance' must be null or {words} numbers >= 0 (one per word of "
                                 f"the answer), got {json.dumps(significance)}")
        significance = [float(s) for s in significance]
    return Fact(system, user, assistant, significance, target=target, subject=_optional_text(row, "subject", where),
                relation=_optional_text(row, "relation", where), paraphrases=[p.strip() for p in paraphrases])


def _control(row: dict, where: str) -> Control:
    user, target = (_text(row, k, where, "control") for k in CONTROL_KEYS)
    return Control(user, target, _optional_text(row, "relation", where), _optional_text(row, "subject", where))
