"""QF sessions on tiny random models: the closed-book layer output meets the open-book one."""

import json

import pytest
import torch

from transformers_qf import QF, ParametersError, PromptError, UnsupportedModelError
from transformers_qf.core.architectures import locate
from transformers_qf.core.capture import record
from transformers_qf.core.prompting import teacher_forced

FACT = ("Qi started Oxinnovate.", "Who started Oxinnovate?", "Oxinnovate was started by Qi.")
FACT2 = ("Oxinnovate is located at PKU Science Park, in Beijing.", "Where is Oxinnovate located?",
         "Oxinnovate is located at PKU Science Park, in Beijing.")


def _layer_out(model, tokenizer, layer, system, user, answer, sig=None):
    tf = teacher_forced(tokenizer, system, user, answer, sig).nonzero()
    parts = locate(model, layer)
    rec = record(model, parts, tf.input_ids)[0]
    return (rec.v + rec.u @ parts.down.weight.T)[tf.kept]


def _rel(a, b) -> float:
    """||a - b||_F / ||b||_F in float64."""
    return float(torch.linalg.norm(a.detach().double() - b.double()) / torch.linalg.norm(b.double()))


def _learn(qf, fact, sig=None):
    system, user, answer = fact
    qf.instruct(system, user, answer, sig)
    qf.update(user, answer, sig)
    return qf.solve()


def test_closed_book_output_equals_open_book_after_the_edit(tiny_model, tokenizer, tmp_path):
    qf = QF(tiny_model, tokenizer, layer=2, folder=tmp_path)
    sig = [0, 1, 1, 1, 1]
    open_book = _layer_out(tiny_model, tokenizer, 2, *FACT, sig)
    report = _learn(qf, FACT, sig)
    assert report.residual_applied < 1e-5
    qf.respond("", FACT[1], qfmode="QF-infer-wp")
    closed_book = _layer_out(tiny_model, tokenizer, 2, "", FACT[1], FACT[2], sig)
    rel = torch.linalg.norm(closed_book - open_book, dim=1) / torch.linalg.norm(open_book, dim=1)
    assert rel.max() < 1e-5


def test_a_fact_is_learned_in_a_llama3_chat_format(tiny_llama3, llama3_tokenizer, tmp_path):
    """The kept rows follow the tokenizer's own template: the closed-book rows of the Llama-3 format meet the
    open-book ones, and the rows recorded are those of the answer turn `assistant<|end_header_id|>...<|eot_id|>`."""
    model = tiny_llama3
    qf = QF(model, llama3_tokenizer, layer=2, folder=tmp_path)
    open_book = _layer_out(model, llama3_tokenizer, 2, *FACT)
    assert _learn(qf, FACT).residual_applied < 1e-5
    qf.respond("", FACT[1], qfmode="QF-infer-wp")
    closed_book = _layer_out(model, llama3_tokenizer, 2, "", FACT[1], FACT[2])
    assert _rel(closed_book, open_book.detach()) < 1e-5
    tf = teacher_forced(llama3_tokenizer, "", FACT[1], FACT[2])
    assert llama3_tokenizer.decode(tf.targets) == "assistant<|end_header_id|>\n\n" + FACT[2] + "<|eot_id|>"
    assert len(open_book) == len(tf.kept)


def test_second_round_re_solves_both_facts_from_the_original_weight(tiny_qwen2, tokenizer, tmp_path):
    qf = QF(tiny_qwen2, tokenizer, layer=1, folder=tmp_path)
    W = locate(tiny_qwen2, 1).down.weight.detach().clone()
    _learn(qf, FACT)
    qf.apply()
    _learn(qf, FACT2)
    assert torch.equal(qf.folder.load("weight"), W)  # saved once, at the first instruct
    qf.apply()
    assert qf.weights_name == "W''"
    for fact in (FACT, FACT2):
        qf.revert()
        target = _layer_out(tiny_qwen2, tokenizer, 1, *fact)
        qf.apply()
        got = _layer_out(tiny_qwen2, tokenizer, 1, "", fact[1], fact[2])
        assert (torch.linalg.norm(got - target, dim=1) / torch.linalg.norm(target, dim=1)).max() < 1e-5


def test_infer_wp_applies_once_and_reverts_exactly(tiny_qwen2, tokenizer, tmp_path):
    qf = QF(tiny_qwen2, tokenizer, layer=3, folder=tmp_path, max_new_tokens=4)
    weight = locate(tiny_qwen2, 3).down.weight
    W = weight.detach().clone()
    _learn(qf, FACT)
    assert torch.equal(weight, W)  # solving does not touch the model
    answer = qf.respond("", FACT[1], qfmode="QF-infer-wp")
    assert isinstance(answer, str)
    assert torch.equal(weight, qf.folder.load("w_prime"))
    assert qf.weights_name == "W'"
    weight.data.add_(1.0)  # a second infer-wp does not reload W' (applied once per solve)
    qf.respond("", FACT[1], qfmode="QF-infer-wp")
    assert torch.equal(weight, qf.folder.load("w_prime") + 1.0)
    qf.revert()
    assert torch.equal(weight, W) and qf.weights_name == "W"


def test_folder_round_trip_and_mismatches(tiny_qwen2, tokenizer, tmp_path):
    qf = QF(tiny_qwen2, tokenizer, layer=2, folder=tmp_path, identity={"name": "a", "hidden_size": 32})
    _learn(qf, FACT, [0, 1, 1, 1, 1])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["layer"] == 2 and manifest["dtype"] == "float32"
    kept = teacher_forced(tokenizer, *FACT, [0, 1, 1, 1, 1]).nonzero()
    assert manifest["rounds"][0]["weights"] == kept.weights.tolist()
    assert manifest["rounds"][0]["targets"] == kept.targets.tolist()
    assert manifest["files"]["u"] == [len(kept.kept), 96]
    for name in ("u", "up", "v", "vp", "weight", "w_prime"):
        assert (tmp_path / f"layer2_{name}.safetensors").is_file()
    # reopening continues the rows
    again = QF(tiny_qwen2, tokenizer, layer=2, folder=tmp_path, identity={"name": "a", "hidden_size": 32})
    assert again.folder.rows("u") == qf.folder.rows("u") > 0
    with pytest.raises(ParametersError, match="layer 2"):
        QF(tiny_qwen2, tokenizer, layer=1, folder=tmp_path, identity={"name": "a", "hidden_size": 32})
    with pytest.raises(ParametersError, match="another folder or start fresh"):
        QF(tiny_qwen2, tokenizer, layer=2, folder=tmp_path, identity={"name": "b", "hidden_size": 32})
    fresh = QF(tiny_qwen2, tokenizer, layer=2, folder=tmp_path, identity={"name": "b", "hidden_size": 32}, fresh=True)
    assert fresh.folder.rows("u") == 0 and not (tmp_path / "layer2_u.safetensors").exists()


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _nothing(qf):
    pass


def _instruct(qf):
    qf.instruct(*FACT)


@pytest.mark.parametrize(
    "setup, failing, error, message",
    [
        (_nothing, lambda qf: qf.update(FACT[1], FACT[2]), ParametersError, "no matching QF-instruct"),
        (_nothing, lambda qf: qf.instruct(FACT[0], FACT[1], "  "), PromptError, "no tokens"),
        (_nothing, lambda qf: qf.instruct(FACT[0], FACT[1], FACT[2], [1, 1]), PromptError, "5 words"),
        (_nothing, lambda qf: qf.instruct(FACT[0], FACT[1], FACT[2], [1, 1, -2, 1, 1]), PromptError, ">= 0"),
        (_nothing, lambda qf: qf.respond("", "?", qfmode="QF-magic"), ValueError, "unknown qfmode"),
        (_instruct, lambda qf: qf.update(FACT[1], "Oxinnovate was started by Li."), ParametersError, "differ"),
        (_instruct, lambda qf: qf.instruct(*FACT), ParametersError, "no QF-update yet"),
        (_instruct, lambda qf: qf.solve(), ParametersError, "pending round"),
    ],
)
def test_bad_input_is_refused_and_leaves_the_folder_as_it_was(tiny_qwen2, tokenizer, tmp_path, setup, failing,
                                                              error, message):
    qf = QF(tiny_qwen2, tokenizer, layer=2, folder=tmp_path)
    _learn(qf, FACT2)
    setup(qf)
    before = _snapshot(tmp_path)
    with pytest.raises(error, match=message):
        failing(qf)
    assert _snapshot(tmp_path) == before


def test_infer_wp_before_any_solve_is_refused(tiny_qwen2, tokenizer, tmp_path):
    with pytest.raises(ParametersError, match="no W'"):
        QF(tiny_qwen2, tokenizer, layer=2, folder=tmp_path).respond("", "?", qfmode="QF-infer-wp")


def test_layer_out_of_range_and_unknown_architecture(tokenizer, tiny_qwen2, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(UnsupportedModelError, match=r"layer 4 is out of range: this model has 4 layers \(0..3\)"):
        QF(tiny_qwen2, tokenizer, layer=4, folder=tmp_path)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=len(tokenizer)))
    with pytest.raises(UnsupportedModelError, match="no recognised MLP"):
        QF(gpt2, tokenizer, layer=0, folder=tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("in_memory", [False, True])
def test_learn_in_one_forward_equals_the_four_steps(tiny_model, tokenizer, tmp_path, in_memory):
    slow = QF(tiny_model, tokenizer, layer=2, folder=tmp_path / "slow")
    for fact, sig in ((FACT, [0, 1, 1, 1, 1]), (FACT2, None)):
        _learn(slow, fact, sig)
    slow.apply()
    W_slow = locate(tiny_model, 2).down.weight.detach().clone()
    slow.revert()
    fast = QF(tiny_model, tokenizer, layer=2, folder=None if in_memory else tmp_path / "fast")
    for fact, sig in ((FACT, [0, 1, 1, 1, 1]), (FACT2, None)):
        report = fast.learn(*fact, sig)
    assert fast.weights_name == "W''" and report.rows == slow.last_report.rows
    # the packed forward's masked attention rounds differently from one unmasked sequence (rows agree to ~1e-7)
    assert _rel(locate(tiny_model, 2).down.weight, W_slow) < 1e-5
    for name in ("u", "up", "v", "vp"):
        torch.testing.assert_close(fast.folder.load(name), slow.folder.load(name), rtol=1e-5, atol=1e-6)
    assert fast.folder.rounds[1]["targets"] == slow.folder.rounds[1]["targets"]
    fast.respond("", FACT[1], qfmode="QF-infer-wp")  # already in place: nothing to reload
    fast.revert()
    fast.apply()
    assert _rel(locate(tiny_model, 2).down.weight, W_slow) < 1e-5
    if in_memory:
        assert not (tmp_path / "fast").exists()


def test_incremental_learning_gives_the_re_solved_weight(tiny_qwen2, tokenizer):
    full = QF(tiny_qwen2, tokenizer, layer=2, folder=None)
    for fact in (FACT, FACT2):
        full.learn(*fact)
    W_full = locate(tiny_qwen2, 2).down.weight.detach().clone()
    full.revert()
    inc = QF(tiny_qwen2, tokenizer, layer=2, folder=None, incremental=True)
    reports = [inc.learn(*fact) for fact in (FACT, FACT2)]
    assert [r.method for r in reports] == ["incremental", "incremental"]
    torch.testing.assert_close(locate(tiny_qwen2, 2).down.weight, W_full, rtol=1e-5, atol=1e-6)
    inc.revert()  # the model no longer holds W': the next round re-solves every round once
    third = ("Oxinnovate has one people.", "How many people in Oxinnovate?", "Oxinnovate has one people.")
    assert inc.learn(*third).method == "exact" and inc.last_report.rows == inc.folder.rows("u")


def test_a_failed_round_keeps_nothing(tiny_qwen2, tokenizer, tmp_path):
    """Non-finite activations in the second round: an error, and the folder and down_proj stay as after the first."""
    qf = QF(tiny_qwen2, tokenizer, layer=2, folder=tmp_path)
    qf.learn(*FACT)
    W_first = locate(tiny_qwen2, 2).down.weight.detach().clone()
    manifest = json.loads((tmp_path / "manifest.json").read_text())

    def poison(_module, _args, output):
        output[0][..., 0] = float("nan")

    handle = locate(tiny_qwen2, 0).layer.register_forward_hook(poison)
    try:
        with pytest.raises(FloatingPointError, match="non-finite values in the recorded v at layer 2"):
            qf.learn(*FACT2)
    finally:
        handle.remove()
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    assert qf.folder.rows("u") == qf.folder.rows("up") == manifest["rounds"][0]["instruct_rows"]
    assert torch.equal(locate(tiny_qwen2, 2).down.weight, W_first) and qf.weights_name == "W'"
    qf.learn(*FACT2)  # and the session goes on
    assert qf.weights_name == "W''"
