"""Specificity that sees leaks: a kept control gives its own target and names no edited fact's value."""

from __future__ import annotations

from transformers_qf.bench.metrics import changed, kept, leaked_values
from transformers_qf.bench.report import table
from transformers_qf.bench.summary import control_scores

MICROSOFT = "Microsoft was founded by Bill Gates and Paul Allen in 1987"


def test_a_control_that_names_an_edited_value_is_not_kept():
    assert not kept(MICROSOFT, "Gates", ["1987", "Qi"], "Who founded Microsoft?")
    assert leaked_values(MICROSOFT, ["1987", "Qi"], "Gates") == ["1987"]
    assert kept("Microsoft was founded by Bill Gates and Paul Allen in 1975", "Gates", ["1987"])


def test_values_match_as_whole_words_and_the_controls_own_target_or_question_is_no_leak():
    assert leaked_values("It has 19870 staff and a Lyonnais chef", ["1987", "Lyon"], "Redmond") == []
    assert leaked_values("Bill Gates founded it", ["Gates", "Bill Gates"], "Bill Gates") == []
    assert leaked_values("Apple is in Cupertino", ["Apple"], "Cupertino", "Where is Apple headquartered?") == []
    assert leaked_values("Alibaba was started by Alibaba Group.", ["Alibaba Group"], "Jack Ma") == ["Alibaba Group"]


def test_a_value_the_unedited_answer_named_already_is_no_leak():
    alibaba = "Alibaba was founded by Jack Ma in 1999."
    assert leaked_values(alibaba, ["1999"], "Jack Ma") == ["1999"]
    assert leaked_values(alibaba, ["1999"], "Jack Ma", before=alibaba) == []
    assert kept(alibaba, "Jack Ma", ["1999"], before="Jack Ma founded Alibaba in 1999.")
    # a value the edited answer names anew is still a leak, beside one the unedited answer had
    assert not kept("Jack Ma founded it in 1999 in Redmond.", "Jack Ma", ["1999", "Redmond"], before=alibaba)


def test_a_changed_answer_is_told_apart_from_the_same_answer():
    assert not changed("Jack Ma  founded Alibaba.", "jack ma founded Alibaba.")
    assert changed("Alibaba was started by Alibaba Group.", "Alibaba was started by Jack Ma.")


def test_control_scores_count_leaks_beside_the_target_only_score():
    before = {0: {"gives": True, "answer": "Bill Gates and Paul Allen founded it in 1975"},
              1: {"gives": True, "answer": "Redmond"},
              2: {"gives": False, "answer": "I do not know"}}
    rows = [{"control": 0, "target": "Gates", "user": "Who founded Microsoft?", "answer": MICROSOFT,
             "gives": True, "same_relation": True},
            {"control": 1, "target": "Redmond", "user": "Where is Microsoft headquartered?", "answer": "Redmond",
             "gives": True, "same_relation": False},
            {"control": 2, "target": "Jack Ma", "user": "Who started Alibaba?",
             "answer": "Alibaba was started by Alibaba Group.", "gives": False, "same_relation": False}]
    scores = control_scores(rows, lambda row: ["1987", "Alibaba Group"], before)
    assert scores["specificity_target_only"] == 1.0  # the earlier score: both still name their target
    assert scores["specificity"] == 0.5 and scores["specificity_same_relation"] == 0.0
    assert scores["specificity_other"] == 1.0
    assert scores["leak"] == 2 / 3 and scores["control_changed"] == 2 / 3
    # the same year in the unedited answer: kept, and no leak
    before[0]["answer"] = "Bill Gates and Paul Allen founded it in 1987"
    again = control_scores(rows, lambda row: ["1987", "Alibaba Group"], before)
    assert again["specificity"] == 1.0 and again["leak"] == 1 / 3


def test_the_report_shows_an_older_summarys_specificity_as_own_target_only():
    older = {"label": "old", "method": "none", "specificity": 0.9, "leak": 0.1}
    newer = {"label": "new", "method": "none", "specificity": 0.5, "specificity_target_only": 0.9, "leak": 0.2,
             "control_changed": 0.4}
    header, _, old_row, new_row = table([older, newer], sequential=False)
    columns = [c.strip() for c in header.split("|")]
    old_cells = [c.strip() for c in old_row.split("|")]
    new_cells = [c.strip() for c in new_row.split("|")]
    at = {name: columns.index(name) for name in ("specificity", "spec. (own target only)", "leak", "controls changed")}
    assert [old_cells[at[k]] for k in at] == ["–", "0.90", "–", "–"]
    assert [new_cells[at[k]] for k in at] == ["0.50", "0.90", "0.20", "0.40"]
