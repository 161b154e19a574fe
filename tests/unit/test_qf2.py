"""QF2's firing update and its qfmodes on tiny random models converted to the firing block."""

import json

import pytest
import torch

from transformers_qf import QF, ParametersError, UnsupportedModelError
from transformers_qf.core.architectures import locate
from transformers_qf.core.capture import record
from transformers_qf.core.prompting import plain_teacher_forced
from transformers_qf.qf2.update import QF2, firing_update
from transformers_qf.qf2.block import convert

FACT = ("Qi is the CEO of Oxinnovate.", "Who is the CEO of Oxinnovate?", "The CEO of Oxinnovate is Qi.")
SIG = [1, 1, 1, 1, 1, 10]
FACT2 = ("Oxinnovate has one people", "How many people in Oxinnovate?", "Oxinnovate has one people.")


def test_the_update_is_the_sum_of_weighted_outer_products():
    torch.manual_seed(0)
    ystar, xp = torch.rand(7, 12), torch.randn(7, 5)
    weights = torch.tensor([1.0, 0.0, 2.0, 1.0, 10.0, 1.0, 0.5])
    lr = 4e-4
    expected = torch.zeros(12, 5, dtype=torch.float64)
    for t in range(7):
        expected += lr * weights[t].double() * torch.outer(ystar[t].double() - 0.5, xp[t].double())
    torch.testing.assert_close(firing_update(ystar, xp, weights, lr), expected, rtol=1e-12, atol=1e-15)
    with pytest.raises(ParametersError, match="same answer"):
        firing_update(ystar, xp[:6], weights, lr)


def test_one_position_moves_every_neuron_to_the_side_of_its_target():
    """Seed 004, eq. 2: W' x' = W x' + lr (y* - 0.5) |x'|^2, so a large enough lr puts sigmoid(beta W' x')
    on y*'s side of 0.5 for every neuron, whatever W was (rows of several positions interfere instead)."""
    torch.manual_seed(1)
    W, x = torch.randn(40, 8, dtype=torch.float64), torch.randn(1, 8, dtype=torch.float64)
    ystar = (torch.rand(1, 40) > 0.5).double() * 0.98 + 0.01
    before = torch.sigmoid(10 * x @ W.T)
    after = torch.sigmoid(10 * x @ (W + firing_update(ystar, x, torch.ones(1), lr=50.0)).T)
    assert ((before > 0.5) == (ystar > 0.5)).float().mean() < 0.9
    assert torch.equal(after > 0.5, ystar > 0.5)


def _converted(model, layer=2, beta=10.0):
    convert(model, layer, beta=beta)
    return model


def _kept_x(model, tokenizer, system, user, answer, sig, layer=2):
    tf = plain_teacher_forced(tokenizer, system, user, answer, sig).nonzero()
    return record(model, locate(model, layer), tf.input_ids)[0].x[tf.kept]


@torch.no_grad()
def test_one_round_records_ystar_and_x_and_adds_the_update_to_up_proj(tiny_model, tokenizer, tmp_path):
    model = _converted(tiny_model)
    up = locate(model, 2).up.weight
    W = up.detach().clone()
    qf2 = QF2(model, tokenizer, folder=tmp_path, lr=1e-3)
    ystar = qf2.instruct(*FACT, SIG)
    x_open = _kept_x(model, tokenizer, *FACT, SIG)
    torch.testing.assert_close(ystar, torch.sigmoid(10.0 * x_open @ W.T), rtol=1e-5, atol=1e-6)
    xp = qf2.update(FACT[1], FACT[2], SIG)
    torch.testing.assert_close(xp, _kept_x(model, tokenizer, "", *FACT[1:], SIG))

    report = qf2.solve()
    assert torch.equal(up, W)  # solving does not touch the model
    weights = torch.tensor(qf2.folder.rounds[0]["weights"], dtype=torch.float64)
    expected = (W.double() + firing_update(ystar, xp, weights, 1e-3)).float()
    answer = qf2.respond("", FACT[1], qfmode="QF-infer-wp")
    assert isinstance(answer, str) and qf2.weights_name == "W'"
    torch.testing.assert_close(up.detach(), expected, rtol=0, atol=1e-7)
    assert report.rows == len(ystar) and 0 <= report.agreement_after <= 1 and 0 <= report.agreement_before <= 1
    assert 0 < report.delta_rel < 1

    names = sorted(p.name for p in tmp_path.glob("layer2_*.safetensors"))
    assert names == ["layer2_w.safetensors", "layer2_w_prime.safetensors", "layer2_xp.safetensors",
                     "layer2_ystar.safetensors"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["method"] == "QF2" and manifest["rounds"][0]["lr"] == 1e-3
    # the final '.' counts 1, the words their own significance, `assistant:` 1
    assert manifest["rounds"][0]["weights"][:2] == [1.0, 1.0] and manifest["rounds"][0]["weights"][-1] == 1.0
    assert 10.0 in manifest["rounds"][0]["weights"]
    qf2.revert()
    assert torch.equal(up, W) and qf2.weights_name == "W"


@torch.no_grad()
def test_rounds_are_sequential_from_the_current_weight(tiny_qwen2, tokenizer, tmp_path):
    model = _converted(tiny_qwen2)
    up = locate(model, 2).up.weight
    qf2 = QF2(model, tokenizer, folder=tmp_path)
    for i, (fact, lr) in enumerate(((FACT, 0.01), (FACT2, 0.02))):
        before = up.detach().clone()
        ystar = qf2.instruct(*fact)
        xp = qf2.update(fact[1], fact[2])
        qf2.solve(lr=lr)
        qf2.apply()
        weights = torch.tensor(qf2.folder.rounds[i]["weights"], dtype=torch.float64)
        torch.testing.assert_close(up.detach(), (before.double() + firing_update(ystar, xp, weights, lr)).float(),
                                   rtol=0, atol=1e-7)
    assert qf2.weights_name == "W''" and torch.equal(qf2.folder.load("w"), qf2._original)
    assert qf2.folder.rows("ystar") == qf2.folder.rows("xp") == sum(r["instruct_rows"] for r in qf2.folder.rounds)


def test_modes_out_of_order_and_stock_models_are_refused(tiny_qwen2, tokenizer, tmp_path):
    with pytest.raises(UnsupportedModelError, match="qft_train.py"):
        QF2(tiny_qwen2, tokenizer, folder=tmp_path)
    model = _converted(tiny_qwen2)
    qf2 = QF2(model, tokenizer, folder=tmp_path / "qf2")
    with pytest.raises(ParametersError, match="QF-instruct"):
        qf2.update(FACT[1], FACT[2])
    with pytest.raises(ParametersError, match="no W'"):
        qf2.apply()
    qf2.instruct(*FACT)
    with pytest.raises(ParametersError, match="no QF-update yet"):
        qf2.instruct(*FACT)
    with pytest.raises(ParametersError, match="differ"):
        qf2.update(FACT[1], "Another answer.")
    with pytest.raises(ParametersError, match="holds QF2 rows"):
        QF(model, tokenizer, layer=2, folder=tmp_path / "qf2")
