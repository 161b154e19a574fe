"""benchmarks/probes/paraphrase_wordings.py on a hand-made run folder: what counts as unseen, and where the subject stands."""

import json

import pytest


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("probes/paraphrase_wordings")


@pytest.mark.parametrize("question, place", [
    ("Who is the CEO of Droram?", "last"), ("Can you tell me the name of Droram's CEO?", "possessive"),
    ("What is the size of Vegas Corp' staff?", "possessive"), ("How many people work at Droram today?", "elsewhere"),
    ("Is Droramsk a company?", "elsewhere")])
def test_where_the_subject_stands(script, question, place):
    subject = "Vegas Corp" if "Vegas" in question else "Droram"
    assert script.subject_place(question, subject) == place


def test_only_unseen_paraphrases_after_the_last_edit_count(script, tmp_path, finished_run):
    rows = [{"key": "edit/0", "fact": 0, "rewordings": ["Who leads Droram?"]},  # fitted on: not unseen
            {"key": "checkpoint/1/paraphrase/0/0", "kind": "paraphrase", "fact": 0, "user": "Who runs Droram?",
             "gives": True},
            {"key": "checkpoint/1/paraphrase/0/1", "kind": "paraphrase", "fact": 0,
             "user": "What is Droram's CEO called?", "gives": False},
            {"key": "checkpoint/1/paraphrase/0/2", "kind": "paraphrase", "fact": 0, "user": "Who leads Droram?",
             "gives": True}]
    run = finished_run(["Who runs Droram?", "What is Droram's CEO called?", "Who leads Droram?"], rows)
    got = script.wordings(script.finished_runs.read_run(run, "paraphrase_wordings"))
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

    # --earlier keeps an earlier report's runs whose folders are gone; a run read again replaces its old row
    earlier = tmp_path / "earlier.json"
    old = {**got, "run": "gone", "n_facts": 7}
    earlier.write_text(json.dumps({"command": "python old.py", "runs": [old, {**got, "unseen": 99}]}), encoding="utf-8")
    assert script.main([str(run), "--out", str(tmp_path / "again"), "--earlier", str(earlier)]) == 0
    report = json.loads((tmp_path / "again" / "paraphrase_wordings.json").read_text(encoding="utf-8"))
    assert [(r["run"], r["unseen"]) for r in report["runs"]] == [("gone", 2), ("run", 2)]
    assert report["earlier"] == ["python old.py"]
    table = (tmp_path / "again" / "paraphrase_wordings.md").read_text(encoding="utf-8")
    assert "runs not read again come from `python old.py`" in table and "| gone | 7 | 0.50 (1/2) |" in table
