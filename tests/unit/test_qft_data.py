"""QFt's training data generator: deterministic, filtered by the base model, held-out facts kept out."""

import pytest

from transformers_qf.qf2 import data as qft_data
from transformers_qf.data import worldfacts
from transformers_qf.qf2.data import NEED_MORE


def _knows_every_other(questions):
    """A stand-in for the base model: answers the even questions right (with a CEO name it was told)."""
    answers = []
    for i, q in enumerate(questions):
        fact = CANDIDATES[i]
        answers.append(f"It is {fact.answers[0]}." if i % 2 == 0 else "I do not know.")
    return answers


CANDIDATES = qft_data.real_candidates()


def test_candidates_are_company_facts_of_the_shared_table():
    assert CANDIDATES and all(f.relation in qft_data.COMPANY_RELATIONS for f in CANDIDATES)
    assert {"ceo", "founder", "headquarters", "founding_year", "staff_size", "product"} >= set(qft_data.COMPANY_RELATIONS)


def test_known_facts_keeps_exactly_what_the_model_answers_right():
    kept = qft_data.known_facts(CANDIDATES, _knows_every_other)
    assert kept == CANDIDATES[::2]


def test_build_is_deterministic_and_mixes_the_three_kinds():
    known = CANDIDATES[:80]
    a = qft_data.build(known, n_samples=500, seed=3)
    b = qft_data.build(known, n_samples=500, seed=3)
    c = qft_data.build(known, n_samples=500, seed=4)
    assert a.train == b.train and a.heldout_real == b.heldout_real and a.heldout_text == b.heldout_text
    assert a.train != c.train
    kinds = {k: sum(s.kind == k for s in a.train) for k in qft_data.KINDS}
    assert len(a.train) == 500 and kinds == {"real": 100, "instructed": 250, "unknown": 150}
    for s in a.train:
        if s.kind == "unknown":
            assert s.answer == NEED_MORE and s.subject not in s.system
        elif s.kind == "instructed":
            assert s.subject in s.system and any(acc in s.system and acc in s.answer for acc in s.accepted)
        else:
            assert s.system == "" and s.answer and s.accepted


def test_held_out_real_facts_never_appear_in_training_in_any_phrasing():
    data = qft_data.build(CANDIDATES[:80], n_samples=400, heldout_facts=30)
    held = {(s.subject, s.relation) for s in data.heldout_real}
    trained = {(s.subject, s.relation) for s in data.train if s.kind == "real"}
    assert len(held) == 30 and not held & trained
    assert all(s.kind == "real" for s in data.heldout_real)


def test_invented_companies_come_from_the_qft_pool_only():
    data = qft_data.build(CANDIDATES[:80], n_samples=300)
    invented = {s.subject for s in data.train + data.heldout_text if s.kind != "real"}
    assert invented and all(worldfacts.pool_of(worldfacts.invented_word(n)) == "qft" for n in invented)
    bench = set(worldfacts.fictional_names(300, seed=0, pool="bench"))
    assert not invented & bench


def test_too_few_known_facts_is_refused():
    with pytest.raises(ValueError, match="--heldout-facts"):
        qft_data.build(CANDIDATES[:10], heldout_facts=30)
