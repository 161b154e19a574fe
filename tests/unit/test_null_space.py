"""The null-space metric (keyed.py, `KeyMetric(..., null_space=T)`): AlphaEdit's projection of the change onto the
key directions that the preserved keys barely use, solved exactly over the edited rows."""

import pytest
import torch

from transformers_qf.core.prompting import PromptError
from transformers_qf.editing.editor import EditConfig
from transformers_qf.solve.exact import SolveError
from transformers_qf.solve.keyed import KeyMetric, KeySolver


def _preserved(d_mlp=40, used=30, n=400, seed=0):
    """Keys that live in the first `used` directions of a random rotation (plus a trace of noise elsewhere), their
    covariance (exact) and that rotation [d_mlp, d_mlp]."""
    g = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(d_mlp, d_mlp, generator=g, dtype=torch.float64))
    scales = torch.cat([torch.linspace(0.5, 2.0, used, dtype=torch.float64),
                        torch.full((d_mlp - used,), 1e-3, dtype=torch.float64)])
    samples = (torch.randn(n, d_mlp, generator=g, dtype=torch.float64) * scales) @ rotation.T
    return samples, (rotation * scales**2) @ rotation.T, rotation


def test_the_basis_is_the_low_variance_eigenspace_and_apply_projects_onto_it():
    samples, covariance, rotation = _preserved()
    metric = KeyMetric(covariance, null_space=0.01)
    assert metric.null_rank == 10 and metric.factor is None
    unused = rotation[:, 30:]
    P = unused @ unused.T
    keys = torch.randn(5, 40, dtype=torch.float64)
    torch.testing.assert_close(metric.apply(keys), keys @ P, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(metric.apply(samples[:20]), torch.zeros(20, 40, dtype=torch.float64), rtol=0,
                               atol=1e-2)


def test_the_change_meets_every_edited_row_and_leaves_the_preserved_keys_alone():
    samples, covariance, _ = _preserved()
    g = torch.Generator().manual_seed(1)
    W0 = torch.randn(12, 40, generator=g, dtype=torch.float64)
    keys = torch.randn(6, 40, generator=g, dtype=torch.float64)
    R = torch.randn(6, 12, generator=g, dtype=torch.float64)
    changes = {}
    for name, metric in {"null": KeyMetric(covariance, null_space=0.01), "weighted": KeyMetric(covariance)}.items():
        solver = KeySolver(W0, metric)
        W = W0.clone()
        solver.add(keys, R, torch.linalg.norm(R, dim=1))
        report = solver.solve_into(W)
        assert report.residual < 1e-6  # the solver keeps a metric's keys in float32
        torch.testing.assert_close((W - W0) @ keys.T, -R.T, rtol=1e-6, atol=1e-6)
        changes[name] = W - W0
    moved = {name: float(torch.linalg.norm(dW @ samples[:100].T) / torch.linalg.norm(dW)) for name, dW in changes.items()}
    # confined to the unused directions, the change moves the preserved keys' outputs by their noise only
    assert moved["null"] < 0.05 < moved["weighted"]


def test_a_null_space_metric_refuses_the_primal_form_and_thresholds_below_every_variance():
    samples, covariance, _ = _preserved()
    metric = KeyMetric(covariance, null_space=0.01)
    W0 = torch.randn(12, 40, dtype=torch.float64)
    solver = KeySolver(W0, metric, dual_rows=8)
    keys, R = torch.randn(10, 40, dtype=torch.float64), torch.randn(10, 12, dtype=torch.float64)
    solver.add(keys[:6], R[:6], torch.ones(6))
    with pytest.raises(SolveError, match="10 rows: a null-space metric solves at most 8 rows"):
        solver.add(keys[6:], R[6:], torch.ones(4))
    W = W0.clone()  # the refused rows are not kept: the solver goes on with the first six
    assert solver.solve_into(W).rows == 6 and solver.count == 6
    torch.testing.assert_close((W - W0) @ keys[:6].T, -R[:6].T, rtol=1e-6, atol=1e-6)
    with pytest.raises(SolveError, match="raise the null-space threshold"):
        KeyMetric(covariance, null_space=1e-9)
    with pytest.raises(SolveError, match="null-space threshold must be >= 0"):
        KeyMetric(covariance, null_space=-1.0)


def test_the_metric_moves_to_a_device_with_its_basis():
    samples, covariance, _ = _preserved()
    metric = KeyMetric(covariance, null_space=0.01)
    assert metric.to("cpu") is metric
    keys = torch.randn(3, 40, dtype=torch.float64)
    torch.testing.assert_close(metric.to("meta").basis.shape, metric.basis.shape)
    assert metric.to("meta").null_rank == 10 and metric.to("meta") is metric.to("meta")
    torch.testing.assert_close(metric.apply(keys), metric.apply(keys))


def test_the_editor_takes_a_null_space_only_with_the_covariance():
    assert EditConfig(covariance=True, null_space=0.01).as_dict()["null_space"] == 0.01
    assert "null_space" not in EditConfig(covariance=True).as_dict()  # earlier runs' configurations read the same
    with pytest.raises(PromptError, match="with the covariance"):
        EditConfig(null_space=0.01)
