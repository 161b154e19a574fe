"""The collapse detector of the QF2 reports."""

import pytest

from transformers_qf.qf2.collapse import collapse_reason, collapsed


@pytest.mark.parametrize("answer", [
    "The CEO of Oxinnovate is Qi.", "Need more information.", "Jensen Huang is the CEO of NVIDIA.", "Qi.",
    "Oxinnovate has one people.", "The founder of Oxinnovate is Qi!",
])
def test_intact_sentences_are_not_collapsed(answer):
    assert collapse_reason(answer) is None


@pytest.mark.parametrize("answer, reason", [
    ("The The CEO The CEO The CEO The CEO", "repeats"),
    ("The CEO The CEO The CEO.", "repeats"),
    ("The The The The.", "repeats"),
    ("The Qi The CEO The Qi The CEO The Qi", "repeats"),
    ("the one '", "no sentence"),
    ("", "no sentence"),
    ("?\" Black with", "no sentence"),
    ("The CEO of Oxinnovate is", "no sentence"),
])
def test_repeated_phrases_and_lost_sentences_are_collapsed(answer, reason):
    assert collapse_reason(answer) == reason


def test_any_collapsed_answer_marks_the_run():
    assert not collapsed(["Qi.", "Jensen Huang is the CEO of NVIDIA."])
    assert collapsed(["Qi.", "the one '"])
