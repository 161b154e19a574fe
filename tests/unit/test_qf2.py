"""QF2's firing update and its qfmodes on tiny random models converted to the firing block."""

import json

import pytest
import torch

from transformers_qf import QF, ParametersError, UnsupportedModelError
from transformers_qf.core.architectures import locate
from transformers_qf.core.capture import record
from transformers_qf.qf2.rows import answer_rows
from transformers_qf.qf2.update import QF2, firing_update, wrong_side
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
    tf = answer_rows(tokenizer, system, user, answer, sig).nonzero()
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
    # the original's decode rows: ` The` (significance 1) ... the final row with the last word's 10
    weights = manifest["rounds"][0]["weights"]
    assert weights[0] == 1.0 and weights[-1] == 10.0 and tokenizer.decode(manifest["rounds"][0]["targets"]).startswith(" The")
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
    assert qf2.weights_name == "W''" and torch.equal(qf2.folder.load("w"), qf2._original.original)
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


def test_the_labelled_variants_change_only_what_they_say():
    torch.manual_seed(2)
    ystar, xp, W = torch.rand(5, 12), torch.randn(5, 6), torch.randn(12, 6)
    weights = torch.tensor([1.0, 1.0, 2.0, 1.0, 10.0])
    centre = torch.randn(6)
    torch.testing.assert_close(firing_update(ystar, xp, weights, 1e-2, centre=centre),
                               firing_update(ystar, xp - centre, weights, 1e-2))
    mask = wrong_side(ystar, xp, W, beta=10.0)
    expected = torch.sigmoid(10.0 * xp.double() @ W.double().T) > 0.5
    assert torch.equal(mask, expected != (ystar > 0.5))
    masked = firing_update(ystar, xp, weights, 1e-2, mask=mask)
    torch.testing.assert_close(masked, firing_update(0.5 + (ystar - 0.5) * mask, xp, weights, 1e-2))


def test_an_unknown_variant_is_refused(tiny_qwen2, tokenizer, tmp_path):
    model = _converted(tiny_qwen2)
    with pytest.raises(ParametersError, match="unknown QF2 variant"):
        QF2(model, tokenizer, folder=tmp_path, variant="other")
    with pytest.raises(ParametersError, match="mean input"):
        QF2(model, tokenizer, folder=tmp_path, variant="centred")


@torch.no_grad()
def test_the_oracle_puts_the_open_book_layer_output_at_the_closed_book_rows(tiny_qwen2, tokenizer):
    """With no residual around the block, overwriting the firing with y* makes the layer's output at the kept
    rows exactly the open-book one: what the model does with it is the converted model's part."""
    from transformers_qf.qf2.oracle import firing_overridden, open_book_firing, oracle

    model = _converted(tiny_qwen2)
    parts = locate(model, 2)
    ystar = open_book_firing(model, tokenizer, *FACT)
    opened = answer_rows(tokenizer, *FACT).nonzero()
    closed = answer_rows(tokenizer, "", *FACT[1:]).nonzero()
    out_open = record(model, parts, opened.input_ids)[0].y[opened.kept]
    with firing_overridden(model, closed.kept, ystar):
        out_oracle = record(model, parts, closed.input_ids)[0].y[closed.kept]
    out_closed = record(model, parts, closed.input_ids)[0].y[closed.kept]
    torch.testing.assert_close(out_oracle, out_open, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out_closed, out_open, atol=1e-3)
    assert parts.mlp.firing_override is None
    result = oracle(model, tokenizer, *FACT, max_new_tokens=4)
    assert result["rows"] == len(closed.kept) and isinstance(result["greedy_oracle"], str)
    assert 0 <= result["argmax_oracle"] <= 1


def test_pushes_are_lr_s_dot_products_beta_over_2():
    from transformers_qf.qf2.calibration import cosines, lr_for_push, pushes

    x = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.float64)
    s = torch.tensor([1.0, 10.0])
    p = pushes(x, s, lr=1e-3, beta=10.0)
    assert p[0, 0] == pytest.approx(1e-3 * 25 * 5) and p[1, 1] == pytest.approx(1e-3 * 10 * 4 * 5)
    assert p[0, 1] == pytest.approx(1e-3 * 10 * 8 * 5)  # row 1 (s = 10) pushes row 0 by s * x1.x0
    assert cosines(x, x)[0, 1] == pytest.approx(0.8)
    assert lr_for_push(25.0, 10.0, logits=4.0) * 25.0 * 10.0 / 2 == pytest.approx(4.0)
