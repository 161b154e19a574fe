"""The one Fact type: the walkthrough, the benchmark's facts file and the edits file all read and write it,
and the files on disk keep their formats (the facts file's "assistant" key, edits files written before)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from transformers_qf.bench.data import FactsFile, fact_row, read_facts, write_facts
from transformers_qf.core.facts import Fact
from transformers_qf.qf.walkthrough import Learn, run_walkthrough
from transformers_qf.teach.edits import META_KEY, Edits, LearnedFact

ROOT = Path(__file__).resolve().parents[2]
# written by teach/edits.py as it was at commit 0878138 (the Fact that held text and rows together), from
# random tensors: d_model 8, d_mlp 16; format 1 (plain), 2 (covariance metric), 3 (a method's state)
FIXTURES = Path(__file__).parent / "fixtures"


def test_a_fact_as_a_dict_names_only_what_is_set():
    plain = Fact("Qi started Oxinnovate.", "Who started Oxinnovate?", "Oxinnovate was started by Qi.", [0, 1, 1, 1, 1])
    assert plain.as_dict() == {"system": "Qi started Oxinnovate.", "user": "Who started Oxinnovate?",
                               "answer": "Oxinnovate was started by Qi.", "significance": [0, 1, 1, 1, 1]}
    full = Fact("S.", "Q?", "A is B.", None, target="B", subject="A", relation="ceo", paraphrases=["Q2?"])
    assert full.as_dict() == {"system": "S.", "user": "Q?", "answer": "A is B.", "significance": None,
                              "target": "B", "subject": "A", "relation": "ceo", "paraphrases": ["Q2?"]}
    assert Fact.from_dict(full.as_dict()) == full and Fact.from_dict(plain.as_dict()) == plain


@pytest.mark.parametrize("name", ["facts_10.jsonl", "facts_100.jsonl"])
def test_a_bundled_facts_file_is_written_back_byte_for_byte(tmp_path, name):
    source = ROOT / "benchmarks" / "facts" / name
    data = read_facts(source)
    assert all(isinstance(f, Fact) and f.answer and f.target and f.relation for f in data.facts)
    write_facts(tmp_path / name, data)
    assert (tmp_path / name).read_bytes() == source.read_bytes()


def test_a_facts_row_keeps_the_answer_under_assistant(tmp_path):
    fact = Fact("Qi started Oxinnovate.", "Who started Oxinnovate?", "Oxinnovate was started by Qi.", target="Qi",
                paraphrases=["Who founded Oxinnovate?"])
    assert fact_row(fact) == {"system": fact.system, "user": fact.user, "assistant": fact.answer, "target": "Qi",
                              "paraphrases": ["Who founded Oxinnovate?"], "significance": None}
    write_facts(tmp_path / "f.jsonl", FactsFile([fact], []))
    assert json.loads((tmp_path / "f.jsonl").read_text())["assistant"] == fact.answer
    assert read_facts(tmp_path / "f.jsonl").facts == [fact]


class _Session:
    """What run_walkthrough needs of a QF / QF2 session, recording how it was called."""

    layer, weights_name = 3, "W"

    def __init__(self):
        self.calls = []

    def answer_logprob(self, system, user, answer):
        return -1.0

    def instruct(self, *args):
        self.calls.append(("instruct", args))

    def update(self, *args):
        self.calls.append(("update", args))

    def solve(self, **kw):
        self.calls.append(("solve", kw))
        return type("Report", (), {"as_dict": lambda self: {"rows": 2}, "summary": lambda self: "2 rows"})()

    def apply(self):
        pass


def test_a_learn_step_carries_the_rounds_lr_and_its_record_keeps_the_facts_keys():
    fact = Fact("Qi is the CEO of Oxinnovate.", "Who is the CEO of Oxinnovate?", "The CEO of Oxinnovate is Qi.",
                [1, 1, 1, 1, 1, 10])
    qf = _Session()
    result = run_walkthrough(qf, [Learn(fact, lr=4e-4), Learn(fact)], log=lambda *a: None)
    assert [c for c in qf.calls if c[0] == "solve"] == [("solve", {"lr": 4e-4}), ("solve", {})]
    assert ("instruct", (fact.system, fact.user, fact.answer, fact.significance)) in qf.calls
    # the same record as before the lr moved from the fact to the step (the keys in results/qf*/...json)
    assert [r["fact"] for r in result.rounds] == [
        {"system": fact.system, "user": fact.user, "answer": fact.answer, "significance": [1, 1, 1, 1, 1, 10],
         "lr": lr} for lr in (4e-4, None)]


def _stored(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()[META_KEY]), {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("fmt", [1, 2, 3])
def test_an_edits_file_written_before_the_one_fact_type_loads_and_saves_the_same(tmp_path, fmt):
    path = FIXTURES / f"edits_format{fmt}.safetensors"
    edits = Edits.load(path)
    manifest, tensors = _stored(path)
    assert manifest["format"] == f"transformers-qf/edits/{fmt}" and edits.format == manifest["format"]
    assert all(isinstance(f, LearnedFact) and isinstance(f.fact, Fact) for f in edits.facts)
    for learned, entry in zip(edits.facts, manifest["facts"], strict=True):
        assert (learned.fact.system, learned.fact.user, learned.fact.answer, learned.fact.significance) == \
            (entry["system"], entry["user"], entry["answer"], entry["significance"])
        assert (learned.fact.target, learned.fact.subject) == (entry.get("target"), entry.get("subject"))
        assert learned.entry() == entry
    if fmt == 1:
        assert edits.facts[1].fact.target == "number" and edits.facts[0].fact.target is None
        assert torch.equal(edits.facts[0].u, tensors["fact0.u"]) and torch.equal(edits.facts[1].a, tensors["fact1.a"])
        update = edits.update()
        assert update.A.shape == (8, 5) and update.B.shape == (5, 16)
    edits.save(tmp_path / "again.safetensors")
    again, again_tensors = _stored(tmp_path / "again.safetensors")
    assert again == manifest
    assert again_tensors.keys() == tensors.keys()
    assert all(torch.equal(again_tensors[k], tensors[k]) and again_tensors[k].dtype == tensors[k].dtype for k in tensors)
