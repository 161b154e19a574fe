"""worldfacts: relations, the real-facts table and the invented names of two disjoint pools."""

import random

import pytest

from transformers_qf.data.worldfacts import (
    POOLS, REAL_FACTS, RELATIONS, NameMaker, Relation, asked_relation, fictional_names, invented_word, known_names,
    pool_of, real_facts,
)


def _words(names):
    return {invented_word(n).lower() for n in names}


def test_the_bench_and_qft_pools_never_share_a_name():
    bench = set()
    qft = set()
    for seed in range(3):
        for kind in ("company", "country"):
            bench |= _words(fictional_names(700, seed, kind, "bench"))
            qft |= _words(fictional_names(700, seed, kind, "qft"))
    assert len(bench) > 3000 and len(qft) > 3000
    assert not bench & qft
    assert {pool_of(w) for w in bench} == {"bench"} and {pool_of(w) for w in qft} == {"qft"}


def test_invented_values_come_from_the_pool_too():
    names = NameMaker(seed=5, pool="qft")
    rng = random.Random(5)
    for relation in ("product", "capital"):
        for _ in range(50):
            value = RELATIONS[relation].draw_value(rng, names)
            assert pool_of(invented_word(value)) == "qft"


def test_invented_names_are_not_real_ones():
    real = {f.subject.lower() for f in REAL_FACTS} | known_names()
    for pool in POOLS:
        for name in fictional_names(2000, 0, "company", pool):
            assert name.lower() not in real and invented_word(name).lower() not in real, name
            assert not any(invented_word(name).lower().startswith(k) for k in known_names()), name


def test_names_are_deterministic_distinct_and_prefix_stable():
    a = fictional_names(300, seed=7, kind="company", pool="bench")
    assert a == fictional_names(300, seed=7, kind="company", pool="bench")
    assert a[:50] == fictional_names(50, seed=7, kind="company", pool="bench")
    assert len(set(_words(a))) == 300
    assert a != fictional_names(300, seed=8, kind="company", pool="bench")


def test_bad_pool_or_kind_is_refused():
    with pytest.raises(ValueError, match="unknown pool 'train'"):
        NameMaker(0, "train")
    with pytest.raises(ValueError, match="no invented entities of kind 'planet'"):
        fictional_names(1, 0, "planet")
    with pytest.raises(ValueError, match="has no invented values"):
        Relation("x", "work", ("{subject} {value}",), ("a", "b", "c"), "{value}", None).draw_value(
            random.Random(0), NameMaker())


@pytest.mark.parametrize("relation", sorted(RELATIONS))
def test_every_relation_has_facts_three_questions_and_an_answer_with_the_target(relation):
    rel = RELATIONS[relation]
    assert len(rel.facts) >= 2 and len(rel.questions) >= 3
    subject, rng, names = "Velmora Labs", random.Random(0), NameMaker()
    value = rel.draw_value(rng, names) if rel.value_kind else "Someone Real"
    for i in range(len(rel.questions)):
        q = rel.question(subject, i)
        assert subject in q and q.endswith("?") and "{" not in q
    for template in rel.facts:
        fact = template.format(subject=subject, value=value)
        assert subject in fact and rel.target(value) in fact
    answer = rel.answer(subject, value)
    assert rel.target(value) in answer and answer[0].isupper()


@pytest.mark.parametrize("relation", sorted(RELATIONS))
def test_fit_phrasings_name_the_subject_and_no_benchmark_question_uses_them(relation):
    rel, subject = RELATIONS[relation], "Velmora Networks"
    fitted = rel.fit_wordings(subject, len(rel.fit_questions))
    asked = {rel.question(subject, i).casefold() for i in range(len(rel.questions))}
    assert len(fitted) >= 3 and all(subject in w and w[0].isupper() for w in fitted)
    assert not {w.casefold() for w in fitted} & asked
    assert "Velmora Networks' " in " ".join(fitted) or relation not in ("ceo", "founder")  # possessive, well written
    for i in range(len(rel.questions)):
        assert asked_relation("  " + rel.question(subject, i).upper(), subject) is rel
    assert asked_relation(f"Tell me everything about {subject}.", subject) is None


def test_the_real_facts_table_is_well_formed():
    assert len(REAL_FACTS) > 150
    seen = set()
    for f in REAL_FACTS:
        assert f.relation in RELATIONS and f.subject and f.value and f.answers
        assert all(a.strip() for a in f.answers)
        assert (f.relation, f.subject) not in seen, f
        seen.add((f.relation, f.subject))
    # controls on the same relations as the invented facts, and on others
    company = {"ceo", "founder", "headquarters", "founding_year", "product"}
    assert {f.relation for f in REAL_FACTS} >= company | {"capital", "author"}
    assert len(real_facts("ceo")) >= 20 and all(f.relation == "ceo" for f in real_facts("ceo"))
