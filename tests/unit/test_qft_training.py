"""QFt training on tiny random models: the cached path is exact, the blend anneals, the loss goes down."""

import pytest
import torch

from transformers_qf import load_model
from transformers_qf.qf2 import data as qft_data
from transformers_qf.core.architectures import locate
from transformers_qf.core.capture import record
from transformers_qf.qf2.block import QF2MLP, qf2_config
from transformers_qf.qf2.training import Conversion, QFtConfig, _Top, encode_sample, make_accelerator

FACTS = qft_data.real_candidates()


@pytest.fixture(scope="module")
def samples():
    return qft_data.build(FACTS[:60], n_samples=48, heldout_facts=20, seed=1).train


def _cpu_accelerator():
    return make_accelerator(cpu=True)  # the tiny models live on the CPU, also where a GPU is visible


def _state(model, layer):
    return {k: v.detach().clone() for k, v in locate(model, layer).layer.state_dict().items()}


@torch.no_grad()
def test_the_cached_top_gives_the_full_models_loss(tiny_model, tokenizer, samples):
    """Layers start.. from the cached hidden states = the whole model, for the loss at the answer."""
    conversion = Conversion(tiny_model, tokenizer, QFtConfig(layer=2, loss="answer"), accelerator=_cpu_accelerator())
    conversion.prepare(samples[:4], progress=False)
    assert conversion.start == 1
    hidden, positions, targets = conversion._collate([0, 1, 2, 3])
    cached_loss = _Top(tiny_model, conversion.start)(hidden.float(), positions, targets)
    losses = []
    for i in range(4):
        enc = encode_sample(tokenizer, samples[i], "answer")
        logits = tiny_model(input_ids=enc.ids.view(1, -1), use_cache=False).logits[0, enc.positions]
        losses.append(torch.nn.functional.cross_entropy(logits, enc.targets, reduction="sum"))
    full_loss = sum(losses) / len(targets)
    tolerance = 2e-2 if conversion._bf16 else 1e-5  # the bottom is cached in bf16 where autocast is on
    assert abs(float(cached_loss) - float(full_loss)) < tolerance * float(full_loss)


def test_answer_loss_positions_predict_the_answer_and_its_newline(tokenizer, samples):
    enc = encode_sample(tokenizer, samples[0], "answer")
    text = tokenizer.decode(enc.targets)
    assert text.strip() == samples[0].answer and text.endswith("\n")
    assert torch.equal(enc.ids[enc.positions + 1], enc.targets)
    full = encode_sample(tokenizer, samples[0], "full")
    assert len(full.targets) == len(full.ids) - 1


def test_a_blended_conversion_anneals_alpha_to_0_and_learns(tiny_qwen2, tokenizer, samples):
    frozen_before = _state(tiny_qwen2, 0)
    trained_before = _state(tiny_qwen2, 2)
    config = QFtConfig(layer=2, c=0.8, steps=40, batch_size=8, lr=3e-3, loss="answer", init="none")
    conversion = Conversion(tiny_qwen2, tokenizer, config, accelerator=_cpu_accelerator())
    conversion.prepare(samples, progress=False)
    log = conversion.train(progress=False)
    assert log.alpha[0] == 1.0 and log.alpha[1] == pytest.approx(0.8) and log.alpha[-1] == 0.0
    assert log.alpha.index(0.0) == 21  # 0.8 ** 20 = 0.0115, 0.8 ** 21 = 0.0092 < 0.01
    assert sum(log.loss[-5:]) / 5 < sum(log.loss[:5]) / 5
    assert all(torch.equal(v, _state(tiny_qwen2, 0)[k]) for k, v in frozen_before.items())  # layer 0 frozen
    assert any(not torch.equal(v, _state(tiny_qwen2, 2)[k].to(v.dtype)) for k, v in trained_before.items())
    block = locate(tiny_qwen2, 2).mlp
    assert isinstance(block, QF2MLP) and block.alpha == 0.0


@torch.no_grad()
def test_the_closed_form_down_proj_fits_the_original_layer_better_than_the_original_weight(tiny_qwen2, tokenizer, samples):
    parts = locate(tiny_qwen2, 2)
    seqs = [encode_sample(tokenizer, s).ids for s in samples[40:48]]  # samples the fit never sees
    recs = record(tiny_qwen2, parts, seqs)
    x, target = torch.cat([r.x for r in recs]), torch.cat([r.v + r.y for r in recs])

    def error(down):
        out = torch.sigmoid(10.0 * parts.up(x)) @ down.T
        return float((torch.linalg.norm(out - target, dim=1) / torch.linalg.norm(target, dim=1)).median())

    original = error(parts.down.weight)
    conversion = Conversion(tiny_qwen2, tokenizer, QFtConfig(layer=2, init="lstsq", init_tokens=10_000),
                            accelerator=_cpu_accelerator())
    conversion.prepare(samples[:40], progress=False)
    fit = conversion.fit_down_proj()
    assert error(parts.down.weight) < 0.5 * original
    assert fit["median_rel_error_fit"] <= fit["median_rel_error_heldout"] + 0.05 and fit["tokens"] > 500


@torch.no_grad()
def test_a_conversion_saves_and_reloads_with_its_block(tiny_model, tokenizer, samples, tmp_path):
    config = QFtConfig(layer=1, steps=3, batch_size=4, lr=1e-3, loss="answer", init="lstsq", init_tokens=2000,
                       beta=20.0)
    conversion = Conversion(tiny_model, tokenizer, config, accelerator=_cpu_accelerator())
    conversion.prepare(samples[:12], progress=False)
    conversion.fit_down_proj()
    with torch.enable_grad():
        conversion.train(progress=False)
    conversion.save(tmp_path, dtype=torch.float32)
    ids = torch.randint(3, 300, (1, 9))
    expected = tiny_model(input_ids=ids, use_cache=False).logits
    loaded = load_model(str(tmp_path), "cpu", dtype="float32").model  # beside the CPU model
    assert qf2_config(loaded)["layer"] == 1 and locate(loaded, 1).mlp.beta == 20.0
    torch.testing.assert_close(loaded(input_ids=ids, use_cache=False).logits, expected, rtol=0, atol=1e-5)
    assert conversion.summary()["steps_done"] == 3 and conversion.summary()["trainable"] == [0, 1, 2]


def test_bad_configurations_are_refused(tiny_qwen2, tokenizer):
    with pytest.raises(ValueError, match="out of range"):
        Conversion(tiny_qwen2, tokenizer, QFtConfig(layer=9))
    with pytest.raises(ValueError, match="trainable layers"):
        Conversion(tiny_qwen2, tokenizer, QFtConfig(layer=3))  # L+1 = 4 does not exist
    with pytest.raises(ValueError, match="c < 1"):
        Conversion(tiny_qwen2, tokenizer, QFtConfig(layer=2, c=1.5))


@torch.no_grad()
def test_distillation_targets_are_the_original_models_layer_output(tiny_qwen2, tokenizer, samples):
    """With distill > 0 the cache also keeps the original output of the last trainable layer, and the loss
    adds how far the converted stack's output there is from it (0 while nothing has changed)."""
    config = QFtConfig(layer=1, loss="answer", distill=1.0)
    conversion = Conversion(tiny_qwen2, tokenizer, config, accelerator=_cpu_accelerator())
    conversion.prepare(samples[:6], progress=False)
    ids = conversion.encoded[2].ids
    out = {}
    handle = locate(tiny_qwen2, 2).layer.register_forward_hook(lambda _m, _a, o: out.setdefault("h", o))
    tiny_qwen2(input_ids=ids.view(1, -1), use_cache=False)
    handle.remove()
    tolerance = 5e-2 if conversion._bf16 else 1e-5
    torch.testing.assert_close(conversion.teacher[2].float(), out["h"][0].float(), rtol=tolerance, atol=tolerance)

    batch = conversion._collate([0, 1, 2])
    assert len(batch) == 5 and batch[4].sum() == sum(len(conversion.cached[i]) for i in (0, 1, 2))
    plain = _Top(tiny_qwen2, conversion.start)(*(t.float() if t.is_floating_point() else t for t in batch[:3]))
    both = _Top(tiny_qwen2, conversion.start, 1, 1.0)(*(t.float() if t.is_floating_point() else t for t in batch))
    assert 0 <= float(both - plain) < (0.05 if conversion._bf16 else 1e-6)  # unchanged model: ~no distance
    locate(tiny_qwen2, 2).mlp.down_proj.weight.mul_(3.0)  # a changed layer is far from the original
    changed = _Top(tiny_qwen2, conversion.start, 1, 1.0)(*(t.float() if t.is_floating_point() else t for t in batch))
    plain_changed = _Top(tiny_qwen2, conversion.start)(*(t.float() if t.is_floating_point() else t for t in batch[:3]))
    assert float(changed - plain_changed) > 0.01
