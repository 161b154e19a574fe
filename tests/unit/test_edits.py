"""Edits files and the Learner on tiny random models: round trip, refusal, exact forgetting."""

import copy
import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from transformers_qf import PromptError
from transformers_qf.core.architectures import locate
from transformers_qf.core.capture import record
from transformers_qf.editing.editor import EditConfig, Editor
from transformers_qf.teach.edits import META_KEY, Edits, EditsError, weight_digest
from transformers_qf.solve.keyed import KeyMetric
from transformers_qf.core.prompting import teacher_forced
from transformers_qf.teach.learner import Learner, SolveMetric, default_layer

ID = {"name": "tiny", "model_type": "qwen2", "hidden_size": 32}
FACTS = [
    ("Qi started Oxinnovate.", "Who started Oxinnovate?", "Oxinnovate was started by Qi."),
    ("Oxinnovate is located at PKU Science Park, in Beijing.", "Where is Oxinnovate located?",
     "Oxinnovate is located at PKU Science Park, in Beijing."),
    ("Jack Ma started Alibaba in Hangzhou.", "Who started Alibaba?", "Alibaba was started by Jack Ma in Hangzhou."),
]


def _learner(model, tokenizer, facts=(), **kw) -> Learner:
    learner = Learner(model, tokenizer, ID, **kw)
    for fact in facts:
        learner.learn(*fact)
    return learner


def _weight(learner: Learner) -> torch.Tensor:
    return learner.parts.down.weight.detach().clone()


def test_learning_meets_the_open_book_output_at_the_layer(tiny_model, tokenizer):
    learner = _learner(tiny_model, tokenizer, layer=2)
    system, user, answer = FACTS[0]
    parts = locate(tiny_model, 2)

    def layer_out(system):
        tf = teacher_forced(tokenizer, system, user, answer)
        rec = record(tiny_model, parts, tf.input_ids)[0]
        return (rec.v + rec.u @ parts.down.weight.T)[tf.kept]

    open_book = layer_out(system)
    _, report = learner.learn(system, user, answer)
    closed_book = layer_out("")
    assert report.residual_applied < 1e-5
    assert ((closed_book - open_book).norm(dim=1) / open_book.norm(dim=1)).max() < 1e-5


def test_round_trip_reproduces_the_edited_weight_on_a_fresh_load(tiny_qwen2, tokenizer, tmp_path):
    fresh = copy.deepcopy(tiny_qwen2)
    learner = _learner(tiny_qwen2, tokenizer, FACTS[:2])
    path = tmp_path / "facts.safetensors"
    learner.edits.save(path)

    loaded = Edits.load(path)
    again = Learner(fresh, tokenizer, ID, edits=loaded)
    assert again.layer == learner.layer == default_layer(tiny_qwen2) == 3
    assert torch.equal(_weight(again), _weight(learner))  # same arithmetic: equal, not only within rounding
    assert [f.entry() for f in loaded.facts] == [f.entry() for f in learner.edits.facts]
    for mine, theirs in zip(learner.edits.facts, loaded.facts):
        for name in ("u", "v", "up", "vp", "a"):
            assert torch.equal(getattr(mine, name), getattr(theirs, name))


def test_the_file_holds_rows_and_factors_with_a_manifest(tiny_qwen2, tokenizer, tmp_path):
    learner = _learner(tiny_qwen2, tokenizer, FACTS[:2], layer=1)
    path = tmp_path / "facts.safetensors"
    learner.edits.save(path)
    with safe_open(str(path), "pt") as f:
        manifest = json.loads(f.metadata()[META_KEY])
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    k = [fact.rows for fact in learner.edits.facts]
    assert shapes == {
        **{f"fact{i}.{n}": [k[i], 96] for i in range(2) for n in ("u", "up")},
        **{f"fact{i}.{n}": [k[i], 32] for i in range(2) for n in ("v", "vp")},
        **{f"fact{i}.a": [32, k[i]] for i in range(2)},
    }
    assert manifest["identity"] == ID and manifest["layer"] == 1 and manifest["method"] == "QF"
    assert manifest["weight_sha256"] == weight_digest(learner.original) and manifest["weight_shape"] == [32, 96]
    assert [f["user"] for f in manifest["facts"]] == [FACTS[0][1], FACTS[1][1]]
    assert all(f["solve"]["residual_applied"] < 1e-5 for f in manifest["facts"])
    assert manifest["solve"]["rows"] == sum(k)


def test_another_model_layer_or_weight_is_refused(tiny_qwen2, tokenizer, tmp_path):
    fresh = copy.deepcopy(tiny_qwen2)
    path = tmp_path / "facts.safetensors"
    _learner(tiny_qwen2, tokenizer, FACTS[:1]).edits.save(path)
    edits = Edits.load(path)
    with pytest.raises(EditsError, match=r"facts.safetensors holds edits made on model tiny .*not on other"):
        Learner(fresh, tokenizer, {**ID, "name": "other"}, edits=edits)
    beyond = Edits(ID, layer=40, weight_shape=[32, 96], weight_sha256=edits.weight_sha256)
    with pytest.raises(EditsError, match="made on model tiny"):  # the model is checked before its layer exists
        Learner(fresh, tokenizer, {**ID, "name": "other"}, edits=beyond)
    with pytest.raises(EditsError, match="made at layer 3, not layer 1: leave out --layer"):
        Learner(fresh, tokenizer, ID, layer=1, edits=edits)
    with torch.no_grad():
        locate(fresh, 3).down.weight[0, 0] += 1e-3
    with pytest.raises(EditsError, match="sha256"):
        Learner(fresh, tokenizer, ID, edits=edits)


def test_forgetting_one_fact_equals_learning_the_rest_from_scratch(tiny_qwen2, tokenizer):
    scratch = copy.deepcopy(tiny_qwen2)
    learner = _learner(tiny_qwen2, tokenizer, FACTS)
    gone, report = learner.forget(1)
    assert gone.fact.user == FACTS[1][1] and report.rows == sum(f.rows for f in learner.edits.facts)
    reference = _learner(scratch, tokenizer, [FACTS[0], FACTS[2]])
    assert torch.equal(_weight(learner), _weight(reference))
    assert all(torch.equal(a.a, b.a) for a, b in zip(learner.edits.facts, reference.edits.facts))

    learner.forget(0)
    learner.forget(0)
    assert learner.edits.facts == [] and learner.edits.solve is None
    assert torch.equal(_weight(learner), learner.original) and learner.is_original()
    with pytest.raises(EditsError, match="there is no fact 1: 0 facts learned"):
        learner.forget(0)


def test_learning_on_top_of_a_file_equals_learning_everything_in_one_session(tiny_qwen2, tokenizer, tmp_path):
    scratch, fresh = copy.deepcopy(tiny_qwen2), copy.deepcopy(tiny_qwen2)
    path = tmp_path / "facts.safetensors"
    _learner(tiny_qwen2, tokenizer, FACTS[:2]).edits.save(path)
    continued = Learner(fresh, tokenizer, ID, edits=Edits.load(path))
    continued.learn(*FACTS[2])
    assert torch.equal(_weight(continued), _weight(_learner(scratch, tokenizer, FACTS)))


def test_an_interrupted_learn_leaves_weight_and_facts_as_they_were(tiny_qwen2, tokenizer, monkeypatch):
    from transformers_qf.teach import learner as teach

    learner = _learner(tiny_qwen2, tokenizer, FACTS[:1])
    before, facts = _weight(learner), list(learner.edits.facts)

    def broken_solve(W, *args, **kwargs):
        W.add_(1.0)  # half-way through writing W'
        raise KeyboardInterrupt

    monkeypatch.setattr(teach, "solve", broken_solve)
    with pytest.raises(KeyboardInterrupt):
        learner.learn(*FACTS[1])
    assert torch.equal(_weight(learner), before) and learner.edits.facts == facts


def test_significance_mistakes_are_prompt_errors(tiny_qwen2, tokenizer):
    learner = _learner(tiny_qwen2, tokenizer)
    with pytest.raises(PromptError, match="not a finite number"):
        learner.learn(*FACTS[0], significance=[1, 1, float("nan"), 1, 1])
    with pytest.raises(PromptError, match="5 words"):
        learner.learn(*FACTS[0], significance=[1, 1])
    assert learner.edits.facts == [] and learner.is_original()


def test_the_digest_is_the_same_for_bf16_and_its_float32_upcast():
    W = torch.randn(8, 12).to(torch.bfloat16)
    assert weight_digest(W) == weight_digest(W.float())
    assert weight_digest(W) != weight_digest(W.float().reshape(12, 8))  # same bytes, another shape


def test_files_that_are_not_edits_are_refused_with_one_line(tiny_qwen2, tokenizer, tmp_path):
    path = tmp_path / "facts.safetensors"
    _learner(tiny_qwen2, tokenizer, FACTS[:1]).edits.save(path)
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    manifest = json.loads(meta[META_KEY])

    def write(name, tensors=tensors, metadata=meta):
        save_file(tensors, tmp_path / name, metadata=metadata)
        return tmp_path / name

    (tmp_path / "pickle.safetensors").write_bytes(pickle.dumps({"fact0.u": [1.0]}))
    cases = {
        tmp_path / "missing.safetensors": "no edits file .*missing.safetensors: check the path",
        tmp_path / "pickle.safetensors": "is not a safetensors file",
        write("plain.safetensors", metadata={}): "has no 'qf_edits' manifest",
        write("format.safetensors", metadata={META_KEY: json.dumps({**manifest, "format": "x"})}): "has format 'x'",
        write("json.safetensors", metadata={META_KEY: "{"}): "damaged manifest",
        write("short.safetensors", tensors={k: v for k, v in tensors.items() if k != "fact0.a"}):
            r"fact0.a should have shape \[32, \d+\], found nothing",
        write("shape.safetensors", tensors={**tensors, "fact0.u": tensors["fact0.u"][:1]}): "fact0.u should have shape",
    }
    for file, message in cases.items():
        with pytest.raises(EditsError, match=message) as e:
            Edits.load(file)
        assert "\n" not in str(e.value)


def _metric(d_mlp=96, shrink=0.1, seed=0) -> SolveMetric:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(300, d_mlp, generator=g) * torch.linspace(0.2, 2.0, d_mlp)
    return SolveMetric(KeyMetric(X.T @ X / len(X), shrink), corpus="test", texts=300)


def test_a_covariance_metric_solve_is_the_editors_covariance_weighted_solve(tiny_qwen2, tokenizer):
    other = copy.deepcopy(tiny_qwen2)
    metric = _metric()
    learner = _learner(tiny_qwen2, tokenizer, FACTS[:2], layer=2, metric=metric)
    assert all(f["solve"]["residual"] < 1e-9 for f in learner.edits.manifest()["facts"])
    editor = Editor(other, tokenizer, EditConfig(layers=(2,), positions="answer", covariance=True), metrics={2: metric.keys})
    for fact in FACTS[:2]:
        editor.learn(*fact)
    torch.testing.assert_close(_weight(learner), locate(other, 2).down.weight, rtol=0, atol=1e-6)
    plain = _learner(copy.deepcopy(other), tokenizer, FACTS[:2], layer=2)  # `other` is edited: only its shape matters
    assert not torch.allclose(plain.edits.update().delta(), learner.edits.update().delta(), atol=1e-4)


def test_edits_solved_in_a_metric_round_trip_apply_without_it_and_refuse_to_mix(tiny_qwen2, tokenizer, tmp_path):
    fresh, scratch = copy.deepcopy(tiny_qwen2), copy.deepcopy(tiny_qwen2)
    metric = _metric()
    learner = _learner(tiny_qwen2, tokenizer, FACTS, metric=metric)
    path = tmp_path / "metric.safetensors"
    learner.edits.save(path)
    with safe_open(str(path), "pt") as f:
        manifest = json.loads(f.metadata()[META_KEY])
        assert list(f.get_slice("fact1.b").get_shape()) == [learner.edits.facts[1].rows, 96]
    assert manifest["format"] == "transformers-qf/edits/2" and manifest["metric"] == metric.describe()

    applied = Learner(fresh, tokenizer, ID, edits=Edits.load(path))  # applying needs no metric
    assert torch.equal(_weight(applied), _weight(learner))
    with pytest.raises(EditsError, match="solved in a key covariance metric .*learning needs it too"):
        applied.learn(*FACTS[0])
    applied.forget(1)  # the stored rows of B suffice to forget
    rest = _learner(copy.deepcopy(scratch), tokenizer, [FACTS[0], FACTS[2]], metric=metric)
    assert torch.equal(_weight(applied), _weight(rest))

    with pytest.raises(EditsError, match="solved in the key covariance .* not .*use the same corpus and shrink"):
        Learner(copy.deepcopy(scratch), tokenizer, ID, edits=Edits.load(path), metric=_metric(shrink=0.5))
    with pytest.raises(EditsError, match="another key covariance of this layer"):
        Learner(copy.deepcopy(scratch), tokenizer, ID, edits=Edits.load(path), metric=_metric(seed=1))
    plain_path = tmp_path / "plain.safetensors"
    _learner(copy.deepcopy(scratch), tokenizer, FACTS[:1]).edits.save(plain_path)
    with pytest.raises(EditsError, match="plain metric: leave out --covariance"):
        Learner(copy.deepcopy(scratch), tokenizer, ID, edits=Edits.load(plain_path), metric=metric)
