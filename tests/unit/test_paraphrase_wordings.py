"""benchmarks/paraphrase_wordings.py on a hand-made run folder: what counts as unseen, and where the subject stands."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "paraphrase_wordings.py"


@pytest.fixture(scope="module")
def script():
    sys.path.insert(0, str(SCRIPT.parent))  # as when run as a script: its sibling finished_runs.py is importable
    try:
        spec = importlib.util.spec_from_file_location("paraphrase_wordings", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


@pytest.mark.parametrize("question, place", [
    ("Who is the CEO of Droram?", "last"), ("Can you tell me the name of Droram's CEO?", "possessive"),
    ("What is the size of Vegas Corp' staff?", "possessive"), ("How many people work at Droram today?", "elsewhere"),
    ("Is Droramsk a company?", "elsewhere")])
def test_where_the_subject_stands(script, question, place):
    subject = "Vegas Corp" if "Vegas" in question else "Droram"
    assert script.subject_place(question, subject) == place


def test_only_unseen_paraphrases_after_the_last_edit_count(script, tmp_path):
    fact = {"system": "The CEO of Droram is Orla Esposito.", "user": "Who is the CEO of Droram?",
            "assistant": "The CEO of Droram is Orla Esposito.", "target": "Orla Esposito", "subject": "Droram",
            "paraphrases": ["Who runs Droram?", "What is Droram's CEO called?", "Who leads Droram?"]}
    facts = tmp_path / "facts.jsonl"
    facts.write_text(json.dumps(fact) + "\n", encoding="utf-8")
    rows = [{"key": "header", "facts_file": str(facts), "n_facts": 1},
            {"key": "edit/0", "fact": 0, "rewordings": ["Who leads Droram?"]},  # fitted on: not unseen
            {"key": "checkpoint/1/paraphrase/0/0", "kind": "paraphrase", "fact": 0, "user": "Who runs Droram?",
             "gives": True},
            {"key": "checkpoint/1/paraphrase/0/1", "kind": "paraphrase", "fact": 0,
             "user": "What is Droram's CEO called?", "gives": False},
            {"key": "checkpoint/1/paraphrase/0/2", "kind": "paraphrase", "fact": 0, "user": "Who leads Droram?",
             "gives": True}]
    run = tmp_path / "run"
    run.mkdir()
    (run / "cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    got = script.wordings(script.read_run(run, "paraphrase_wordings"))
    assert (got["unseen"], got["answered"]) == (2, 1)
    assert got["by_place"]["last"] == {"answered": 1, "scored": 1}
    assert got["by_place"]["possessive"] == {"answered": 0, "scored": 1}
    assert got["by_wording"]["What is X's CEO called?"] == {"answered": 0, "scored": 1}
    assert got["fitted_by_place"] == {"last": 2, "possessive": 0, "elsewhere": 0}  # the question and its rewording
    assert script.main([str(run), "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "paraphrase_wordings.md").read_text(encoding="utf-8")
    assert "| run | 1 | 0.50 (1/2) | 1.00 (1/1) | 0.00 (0/1) | – |" in table
    with pytest.raises(SystemExit, match="holds no cases.jsonl"):
        script.main([str(tmp_path), "--out", str(tmp_path / "out")])
