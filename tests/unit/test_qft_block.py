"""The QF2 block and the QFt blend on tiny random models."""

import pytest
import torch

from transformers_qf import UnsupportedModelError, load_model
from transformers_qf.core.architectures import locate
from transformers_qf.qf2.block import QF2MLP, alpha_at, block_of, convert, qf2_config, steps_to_zero


def _hidden(model, ids, layer):
    """The hidden states leaving decoder layer `layer`."""
    out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    return out.hidden_states[layer + 1]


def _manual_layer_parts(model, ids, layer):
    """v (residual entering the MLP), the original MLP output and the firing block's, by hand."""
    parts = locate(model, layer)
    seen = {}
    handle = parts.mlp_norm.register_forward_pre_hook(lambda _m, args: seen.setdefault("v", args[0]))
    model(input_ids=ids, use_cache=False)
    handle.remove()
    v = seen["v"]
    x = parts.mlp_norm(v)
    orig = parts.down(torch.nn.functional.silu(parts.gate(x)) * parts.up(x))
    return v, orig, x


@torch.no_grad()
def test_blend_is_the_original_layer_at_alpha_1_and_the_firing_block_at_alpha_0(tiny_model):
    ids = torch.randint(3, 300, (2, 9))
    layer, beta = 2, 10.0
    reference = _hidden(tiny_model, ids, layer)
    v, orig, x = _manual_layer_parts(tiny_model, ids, layer)
    assert torch.allclose(reference, v + orig, atol=1e-5)

    block = convert(tiny_model, layer, beta=beta, alpha=1.0)
    assert isinstance(locate(tiny_model, layer).mlp, QF2MLP)
    torch.testing.assert_close(_hidden(tiny_model, ids, layer), reference, rtol=0, atol=1e-6)

    block.alpha = 0.0
    firing = block.down_proj(torch.sigmoid(beta * block.up_proj(x)))
    torch.testing.assert_close(_hidden(tiny_model, ids, layer), firing, rtol=0, atol=1e-6)

    block.alpha = 0.3
    torch.testing.assert_close(_hidden(tiny_model, ids, layer), 0.3 * (v + orig) + 0.7 * firing, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_a_partial_residual_keeps_that_share_of_the_input_around_the_block(tiny_qwen2, tokenizer, tmp_path):
    """Ablation: residual r makes the finished layer r * v + block(x), and blends as (alpha + (1-alpha) r) v."""
    ids = torch.randint(3, 300, (1, 9))
    v, orig, x = _manual_layer_parts(tiny_qwen2, ids, 2)
    block = convert(tiny_qwen2, 2, beta=10.0, alpha=0.0, residual=0.5)
    firing = block.down_proj(torch.sigmoid(10.0 * block.up_proj(x)))
    torch.testing.assert_close(_hidden(tiny_qwen2, ids, 2), 0.5 * v + firing, rtol=1e-5, atol=1e-6)
    block.alpha = 0.4
    torch.testing.assert_close(_hidden(tiny_qwen2, ids, 2), 0.4 * (v + orig) + 0.6 * (0.5 * v + firing),
                               rtol=1e-5, atol=1e-5)
    block.alpha = 0.0
    tiny_qwen2.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), "cpu", dtype="float32").model
    assert qf2_config(loaded)["residual"] == 0.5 and locate(loaded, 2).mlp.residual == 0.5
    torch.testing.assert_close(loaded(input_ids=ids, use_cache=False).logits, tiny_qwen2(input_ids=ids, use_cache=False).logits,
                               rtol=0, atol=1e-5)


def test_alpha_schedule():
    assert alpha_at(0) == 1.0
    assert alpha_at(1) == pytest.approx(0.99)
    assert alpha_at(100) == pytest.approx(0.99 ** 100)
    n = steps_to_zero(0.99)
    assert n == 459  # 0.99 ** 458 = 0.01004, 0.99 ** 459 = 0.00994
    assert alpha_at(n - 1) >= 0.01 and alpha_at(n) == 0.0 and alpha_at(10 * n) == 0.0
    assert alpha_at(0, c=0.0) == 1.0 and alpha_at(1, c=0.0) == 0.0


def test_gradients_reach_the_shared_projections(tiny_qwen2):
    block = convert(tiny_qwen2, 1, beta=10.0, alpha=0.5)
    loss = tiny_qwen2(input_ids=torch.randint(3, 300, (1, 7)), use_cache=False).logits.square().mean()
    loss.backward()
    for proj in (block.gate_proj, block.up_proj, block.down_proj):
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_converting_twice_or_a_stock_model_is_refused(tiny_qwen2):
    with pytest.raises(UnsupportedModelError, match="qft_train.py"):
        block_of(tiny_qwen2)
    convert(tiny_qwen2, 3, beta=5.0)
    with pytest.raises(UnsupportedModelError, match="QF2 block already"):
        convert(tiny_qwen2, 3)


@torch.no_grad()
def test_a_converted_model_round_trips_through_save_and_load(tiny_model, tokenizer, tmp_path):
    ids = torch.randint(3, 300, (1, 11))
    block = convert(tiny_model, 2, beta=7.0, alpha=0.0)
    block.up_proj.weight.add_(0.01)  # something a training run would have changed
    expected = tiny_model(input_ids=ids, use_cache=False).logits
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert all("." in k and "hooks" not in k for k in state)  # the stock state dict: same parameter names

    loaded = load_model(str(tmp_path), "cpu", dtype="float32")  # beside the CPU model, also where a GPU is
    assert qf2_config(loaded.model) == {"format": 1, "layer": 2, "beta": 7.0}
    restored = locate(loaded.model, 2).mlp
    assert isinstance(restored, QF2MLP) and restored.beta == 7.0 and restored.alpha == 0.0
    torch.testing.assert_close(loaded.model(input_ids=ids, use_cache=False).logits, expected, rtol=0, atol=1e-5)


@torch.no_grad()
def test_generation_with_a_kv_cache_matches_the_full_forward(tiny_qwen2):
    convert(tiny_qwen2, 2, beta=10.0)
    ids = torch.randint(3, 300, (1, 6))
    out = tiny_qwen2.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                              pad_token_id=0)
    for n in range(ids.shape[1], out.shape[1]):
        nxt = tiny_qwen2(input_ids=out[:, :n], use_cache=False).logits[0, -1].argmax()
        assert int(nxt) == int(out[0, n])
