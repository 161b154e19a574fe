import torch

from transformers_qf.core.architectures import locate
from transformers_qf.core.capture import record


def test_layer_output_is_v_plus_down_of_u(tiny_model):
    ids = torch.arange(3, 20)
    parts = locate(tiny_model, 2)
    rec = record(tiny_model, parts, ids, stop=False)[0]
    with torch.no_grad():
        hidden = tiny_model(input_ids=ids.view(1, -1), output_hidden_states=True).hidden_states
    # hidden_states[i + 1] is the output of layer i
    torch.testing.assert_close(rec.v + rec.u @ parts.down.weight.T, hidden[3][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rec.u @ parts.down.weight.T, rec.y, rtol=1e-5, atol=1e-5)
    assert rec.u.shape == (len(ids), tiny_model.config.intermediate_size)
    assert rec.v.shape == rec.x.shape == (len(ids), tiny_model.config.hidden_size)


def test_forward_stops_after_the_recorded_layer_and_hooks_are_removed(tiny_model):
    above = locate(tiny_model, 3).layer
    calls = []
    handle = above.register_forward_pre_hook(lambda *a: calls.append(1))
    parts = locate(tiny_model, 1)
    rec = record(tiny_model, parts, torch.arange(3, 12))[0]
    handle.remove()
    assert calls == [] and rec.u is not None
    for module in (parts.mlp, parts.mlp_norm, parts.down):
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_cut_and_batched_forwards_record_what_one_full_forward_records(tiny_model):
    parts = locate(tiny_model, 2)
    a, b = torch.arange(3, 20), torch.arange(40, 51)
    full = [record(tiny_model, parts, s, stop=False)[0] for s in (a, b)]
    both = record(tiny_model, parts, [a, b])  # one forward, packed, cut after layer 2
    for one, batched in zip(full, both):
        for name in ("v", "x", "u", "y"):
            torch.testing.assert_close(getattr(batched, name), getattr(one, name), rtol=1e-5, atol=1e-6)
    assert len(tiny_model.model.layers) == 4  # the truncation is undone
