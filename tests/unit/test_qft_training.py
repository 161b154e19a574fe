"""QFt training on tiny random models: the cached path is exact, the blend anneals per sample, the loss goes
down, and a checkpointed run resumes to exactly the run that was never stopped."""

import math

import pytest
import torch

from transformers_qf import ParametersError, load_model
from transformers_qf.core.architectures import locate
from transformers_qf.core.capture import record
from transformers_qf.qf2 import data as qft_data
from transformers_qf.qf2.block import QF2MLP, qf2_config
from transformers_qf.qf2.training import (PRESETS, Conversion, QFtConfig, _Top, check_checkpoint, deviations,
                                          encode_sample, read_checkpoint)


@pytest.fixture(scope="module")
def samples():
    return qft_data.build(n_samples=48, heldout_facts=20, seed=1).train


def _state(model, layer):
    return {k: v.detach().clone() for k, v in locate(model, layer).layer.state_dict().items()}


@torch.no_grad()
@pytest.mark.parametrize("loss", ["full", "answer"])
def test_the_cached_top_gives_the_full_models_loss(tiny_model, tokenizer, samples, loss):
    """Layers start.. from the cached hidden states = the whole model, at every loss position."""
    conversion = Conversion(tiny_model, tokenizer, QFtConfig(layer=2, loss=loss), precision="no")
    conversion.prepare(samples[:4], progress=False)
    assert conversion.start == 1
    hidden, positions, targets = conversion._collate([0, 1, 2, 3])
    cached_loss = _Top(tiny_model, conversion.start)(hidden.float(), positions, targets)
    losses = []
    for i in range(4):
        enc = encode_sample(tokenizer, samples[i], loss)
        logits = tiny_model(input_ids=enc.ids.view(1, -1), use_cache=False).logits[0, enc.positions]
        losses.append(torch.nn.functional.cross_entropy(logits, enc.targets, reduction="sum"))
    assert float(cached_loss) == pytest.approx(float(sum(losses) / len(targets)), rel=1e-5)


def test_the_full_loss_covers_every_token_of_the_text(tokenizer, samples):
    s = samples[0]
    full = encode_sample(tokenizer, s, "full")
    assert tokenizer.decode(full.ids) == f"system: {s.system}\nuser: {s.user}\nassistant: {s.answer}\n"
    assert torch.equal(full.positions, torch.arange(len(full.ids) - 1)) and torch.equal(full.targets, full.ids[1:])
    answer = encode_sample(tokenizer, s, "answer")
    assert tokenizer.decode(answer.targets) == f" {s.answer}\n" and torch.equal(answer.ids, full.ids)


def test_the_blend_anneals_per_sample_and_the_model_learns(tiny_qwen2, tokenizer, samples):
    frozen_before = _state(tiny_qwen2, 0)
    trained_before = _state(tiny_qwen2, 2)
    config = QFtConfig(layer=2, c=0.8, samples=48, copies=4, steps=40, batch_size=4, lr=3e-3)
    conversion = Conversion(tiny_qwen2, tokenizer, config, precision="no")
    conversion.prepare(samples, progress=False)
    assert conversion.train(progress=False)
    log = conversion.log
    assert log.alpha[0] == 1.0 and log.alpha[1] == pytest.approx(0.8 ** 4)  # c per sample: c^batch a step
    assert log.alpha.index(0.0) == 6  # 0.8 ** 20 = 0.0115, 0.8 ** 24 < 0.01
    assert sum(log.loss[-5:]) / 5 < sum(log.loss[:5]) / 5
    assert all(torch.equal(v, _state(tiny_qwen2, 0)[k]) for k, v in frozen_before.items())  # layer 0 frozen
    assert any(not torch.equal(v, _state(tiny_qwen2, 2)[k].to(v.dtype)) for k, v in trained_before.items())
    conversion.finish()
    block = locate(tiny_qwen2, 2).mlp
    assert isinstance(block, QF2MLP) and block.alpha == 0.0


def test_a_stopped_run_resumes_to_exactly_the_uninterrupted_one(tokenizer, samples, tmp_path):
    from tests.conftest import _tiny

    config = QFtConfig(layer=2, c=0.9, samples=48, copies=2, steps=12, batch_size=4, lr=2e-3)
    whole = Conversion(_tiny("qwen2", len(tokenizer)), tokenizer, config, precision="no")
    whole.prepare(samples, progress=False)
    whole.train(progress=False)

    first = Conversion(_tiny("qwen2", len(tokenizer)), tokenizer, config, precision="no")
    first.identity = {"config": config.identity()}
    first.prepare(samples, progress=False)
    assert not first.train(progress=False, deadline=0.0) and first.step == 0  # a deadline already past
    assert not first.train(progress=False, until=5) and first.step == 5  # then killed after step 5
    first.save_checkpoint(tmp_path / "ckpt")
    meta = read_checkpoint(tmp_path / "ckpt")
    assert meta["step"] == 5 and not meta["done"]

    second = Conversion(_tiny("qwen2", len(tokenizer)), tokenizer, config, precision="no")
    second.prepare(samples, progress=False)
    second.load_checkpoint(tmp_path / "ckpt")
    assert second.step == 5 and second.log.loss == first.log.loss
    assert second.train(progress=False)
    assert second.log.loss == pytest.approx(whole.log.loss, rel=1e-5) and second.log.alpha == whole.log.alpha
    for name, p in whole.named_trainable().items():
        torch.testing.assert_close(second.named_trainable()[name], p, rtol=1e-5, atol=1e-6)


def test_a_checkpoint_of_another_configuration_is_refused():
    mine = {"model": "m", "config": PRESETS["paper"].identity(), "data": "abc"}
    check_checkpoint({"identity": dict(mine)}, mine)
    other = {**mine, "config": PRESETS["cpu"].identity()}
    with pytest.raises(ParametersError, match="another configuration .*config"):
        check_checkpoint({"identity": other}, mine)
    with pytest.raises(ParametersError, match="another configuration .*model"):
        check_checkpoint({"identity": {**mine, "model": "other"}}, mine)


def test_the_presets_and_their_deviations():
    paper, cpu = PRESETS["paper"], PRESETS["cpu"]
    assert (paper.total_steps(), paper.batch_size, paper.lr, paper.loss, paper.init) == (12000, 1, 5e-5, "full", "none")
    assert paper.trainable_layers() == (22, 23, 24) and paper.beta == 10.0 and paper.alpha(458) > 0 == paper.alpha(459)
    assert cpu.total_steps() * cpu.batch_size == 12000 and cpu.alpha(1) == pytest.approx(0.99 ** 8)
    assert cpu.lr == pytest.approx(5e-5 * math.sqrt(8))
    assert deviations(paper.identity()) == []
    text = " ".join(deviations(cpu.identity()))
    assert "batch 8 x 1500" in text and "sqrt(8)" in text and "per sample" in text


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
    conversion = Conversion(tiny_qwen2, tokenizer, QFtConfig(layer=2, init="lstsq", init_tokens=10_000), precision="no")
    conversion.prepare(samples[:40], progress=False)
    fit = conversion.fit_down_proj()
    assert error(parts.down.weight) < 0.5 * original
    assert fit["median_rel_error_fit"] <= fit["median_rel_error_heldout"] + 0.05 and fit["tokens"] > 500


def test_a_conversion_saves_and_reloads_with_its_block(tiny_model, tokenizer, samples, tmp_path):
    config = QFtConfig(layer=1, samples=12, steps=3, batch_size=4, lr=1e-3, beta=20.0)
    conversion = Conversion(tiny_model, tokenizer, config, precision="no")
    conversion.prepare(samples[:12], progress=False)
    conversion.train(progress=False)
    conversion.finish()
    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    ids = torch.randint(3, 300, (1, 9))
    with torch.no_grad():
        expected = tiny_model(input_ids=ids, use_cache=False).logits
        loaded = load_model(str(tmp_path), "cpu", dtype="float32").model
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
    config = QFtConfig(layer=1, distill=1.0)
    conversion = Conversion(tiny_qwen2, tokenizer, config, precision="no")
    conversion.prepare(samples[:6], progress=False)
    ids = conversion.encoded[2].ids
    out = {}
    handle = locate(tiny_qwen2, 2).layer.register_forward_hook(lambda _m, _a, o: out.setdefault("h", o))
    tiny_qwen2(input_ids=ids.view(1, -1), use_cache=False)
    handle.remove()
    h = out["h"][0] if isinstance(out["h"], tuple) else out["h"]
    torch.testing.assert_close(conversion.teacher[2].float(), h[0].float(), rtol=1e-5, atol=1e-5)
    batch = conversion._collate([0, 1, 2])
    plain = _Top(tiny_qwen2, conversion.start)(*batch[:3])
    both = _Top(tiny_qwen2, conversion.start, 2, 1.0)(*batch)  # the last trainable layer, as train() uses
    assert 0 <= float(both - plain) < 1e-6  # unchanged model: no distance
