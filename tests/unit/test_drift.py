import pytest
import torch

from transformers_qf.editing.drift import DriftWatch


def _watch(edits=3, d_model=6, d_mlp=10):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(d_model, d_mlp, generator=g)
    watch = DriftWatch()
    for rows in range(2, 2 + edits):
        watch.add(torch.randn(rows, d_mlp, generator=g), torch.randn(rows, d_model, generator=g), W)
        W = W + 0.01 * torch.randn(d_model, d_mlp, generator=g)  # the edit that follows moves the weight
    return watch, W


def test_the_drift_is_the_move_of_each_edits_rows_since_it_was_fitted():
    watch, W = _watch()
    keys, base, fitted = watch.keys[0], watch.base[0], watch.fitted[0]
    want = torch.linalg.norm(base + keys @ W.T - fitted, dim=1) / torch.linalg.norm(fitted, dim=1)
    report = watch.measure(W)
    earlier = torch.cat([watch._drift(W, 0), watch._drift(W, 1)])
    assert torch.allclose(watch._drift(W, 0), want)
    assert report["drift_earlier_max"] == float(earlier.max()) and report["drift_own"] > 0


def test_past_max_rows_the_earlier_edits_are_measured_at_an_even_subset_of_their_rows():
    watch, W = _watch(edits=5)  # earlier edits of 2, 3, 4 and 5 rows: 14
    full = watch.measure(W)
    assert full["drift_earlier_rows"] == 14
    watch.max_rows = 5  # every third row of each earlier edit
    strided = watch.measure(W)
    subset = torch.cat([watch._drift(W, i)[::3] for i in range(4)])
    assert strided["drift_earlier_rows"] == len(subset) == 1 + 1 + 2 + 2
    assert strided["drift_earlier"] == pytest.approx(float(subset.mean()))
    assert strided["drift_own"] == full["drift_own"]  # the last edit's rows are always measured whole


def test_keys_are_kept_in_the_models_dtype_and_measured_as_in_float32():
    g = torch.Generator().manual_seed(1)
    keys, base = torch.randn(4, 10, generator=g).bfloat16(), torch.randn(4, 6, generator=g).bfloat16()
    W = torch.randn(6, 10, generator=g).bfloat16()
    watch, exact = DriftWatch(), DriftWatch()
    watch.add(keys, base, W)
    exact.add(keys.float(), base.float(), W)
    assert watch.keys[0].dtype == torch.bfloat16 and watch.fitted[0].dtype == torch.float32  # half the memory
    moved = W.float() + 0.01
    assert watch.measure(W) == {"drift_own": 0.0}  # an unchanged weight measures 0, not bf16's rounding
    assert watch.measure(moved) == exact.measure(moved)
    restored = DriftWatch()
    restored.load_state_dict(watch.state_dict())
    assert restored.keys[0].dtype == torch.bfloat16 and restored.measure(moved) == watch.measure(moved)


def test_a_watch_goes_on_from_its_state_in_either_form():
    watch, W = _watch()
    state = watch.state_dict()
    assert sorted(state) == sorted(f"{name}.{i}" for name in ("keys", "base", "fitted") for i in range(3))
    assert all(state[f"keys.{i}"] is watch.keys[i] for i in range(3))  # kept as they are, not copied
    concatenated = {"sizes": torch.tensor([len(k) for k in watch.keys]),  # how states were saved before
                    **{name: torch.cat(getattr(watch, name)) for name in ("keys", "base", "fitted")}}
    for saved in (state, concatenated):
        restored = DriftWatch()
        restored.load_state_dict(saved)
        # the same rows up to float32 rounding: a block split out of one tensor may take another kernel path
        assert restored.measure(W) == pytest.approx(watch.measure(W), rel=1e-5)
    empty = DriftWatch()
    empty.load_state_dict({})
    assert empty.measure(W) == {} and empty.state_dict() == {}
