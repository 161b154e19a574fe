"""QFt's training data: the paper's composition, its Figure 3 / Table 1 rows, held-out facts kept out."""

import pytest

from transformers_qf.data import worldfacts
from transformers_qf.qf2 import data as qft_data
from transformers_qf.qf2.data import COMPOSITION, NEED_MORE, PAPER_ROWS


@pytest.fixture(scope="module")
def paper_data():
    return qft_data.build()


def test_the_paper_composition_of_3000_unique_rows(paper_data):
    train = paper_data.train
    assert len(train) == 3000 and len({(s.system, s.user, s.answer) for s in train}) == 3000
    counts = paper_data.composition()
    assert counts == {"closed_real": 450, "instructed_real": 870, "instructed": 1260, "unknown": 150,
                      "unknown_context": 270}
    for kind, share in COMPOSITION.items():
        assert abs(counts[kind] / 3000 - share) <= 0.011  # the measured shares sum to 99 %: the rest is instructed


def test_each_kind_looks_as_described(paper_data):
    real_subjects = {f.subject for f in qft_data.real_candidates()}
    for s in paper_data.train:
        if s.kind == "closed_real":
            assert s.system == "" and s.subject in real_subjects and s.accepted
        elif s.kind == "instructed_real":
            assert s.subject.lower() in s.system.lower() and s.subject in real_subjects
        elif s.kind == "instructed":
            assert s.subject.lower() in s.system.lower() and any(a in s.system and a in s.answer for a in s.accepted)
        elif s.kind == "unknown":
            assert s.system == "" and s.answer == NEED_MORE
        else:
            assert s.answer == NEED_MORE and s.system and s.subject.lower() not in s.system.lower()
            assert any(name.lower() in s.system.lower() for name in real_subjects)


def test_figure3_and_table1_real_items_are_training_rows(paper_data):
    rows = {(s.user, s.answer) for s in paper_data.train if s.kind == "closed_real"}
    for _, _, question, answer in PAPER_ROWS:
        assert (question, answer) in rows
    assert ("Who is the CEO of Nvidia?", "Jensen Huang is the CEO of NVIDIA.") in rows
    assert sum(s.user == "Who is the CEO of Nvidia?" and s.kind == "closed_real" for s in paper_data.train) == 1
    assert not any("oxinnovate" in (s.system + s.user + s.answer).lower() for s in paper_data.train)


def test_held_out_facts_never_appear_in_any_training_row(paper_data):
    held = paper_data.heldout_real
    assert len(held) == 30
    facts = {(f.subject, f.relation): f for f in qft_data.real_candidates()}
    systems = {s.system for s in paper_data.train}
    for h in held:
        fact = facts[(h.subject, h.relation)]
        rel = worldfacts.RELATIONS[fact.relation]
        sentences = {worldfacts._capitalise(t.format(subject=fact.subject, value=fact.value)) for t in rel.facts}
        assert not sentences & systems  # not even as another row's (irrelevant) system turn
        for s in paper_data.train:
            assert not (s.subject == h.subject and s.relation == h.relation)
    trained = {(s.subject, s.relation) for s in paper_data.trained_real}
    assert not trained & {(s.subject, s.relation) for s in held} and len(paper_data.trained_real) == 30


def test_build_is_deterministic_and_seeded():
    a, b, c = qft_data.build(300, seed=3), qft_data.build(300, seed=3), qft_data.build(300, seed=4)
    assert a.train == b.train and a.fingerprint() == b.fingerprint()
    assert a.train != c.train and a.fingerprint() != c.fingerprint()


def test_the_training_order_is_copies_shuffled_passes():
    order = qft_data.training_order(10, 4, seed=0)
    assert len(order) == 40 and all(sorted(order[i * 10:(i + 1) * 10]) == list(range(10)) for i in range(4))
    assert order[:10] != order[10:20] and order == qft_data.training_order(10, 4, seed=0)


def test_invented_companies_come_from_the_qft_pool_only(paper_data):
    invented = {s.subject for s in paper_data.train if s.kind in ("instructed", "unknown", "unknown_context")}
    assert invented and all(worldfacts.pool_of(worldfacts.invented_word(n)) == "qft" for n in invented)


def test_too_many_held_out_facts_are_refused():
    with pytest.raises(ValueError, match="--heldout-facts"):
        qft_data.build(heldout_facts=500)
