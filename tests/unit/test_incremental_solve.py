"""The incremental solve (keyed.py, `KeySolver(incremental=True)`): the same change as the full re-solve, a state
that holds only the rows and rebuilds the factor, and a state size linear in the rows."""

import pytest
import torch

from transformers_qf.solve.exact import SolveError
from transformers_qf.solve.keyed import JITTER, KeyMetric, KeySolver


def _problem(k=30, d_model=12, d_mlp=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    W0 = torch.randn(d_model, d_mlp, generator=g, dtype=torch.float64)
    keys = torch.randn(k, d_mlp, generator=g, dtype=torch.float64).float().double()  # as recorded: float32 at most
    R = torch.randn(k, d_model, generator=g, dtype=torch.float64)
    samples = torch.randn(300, d_mlp, generator=g, dtype=torch.float64) * torch.linspace(0.2, 2.0, d_mlp,
                                                                                         dtype=torch.float64)
    return W0, keys, R, KeyMetric(samples.T @ samples / 300, shrink=0.1)


def _rounds(solver, keys, R, size=6):
    W = solver.W0.clone()
    reports = []
    for start in range(0, len(keys), size):
        solver.add(keys[start:start + size], R[start:start + size], torch.linalg.norm(R[start:start + size], dim=1))
        reports.append(solver.solve_into(W))
    return W, reports


@pytest.mark.parametrize("metric", [False, True])
def test_the_incremental_solve_gives_the_full_re_solves_change(metric):
    W0, keys, R, km = _problem()
    km = km if metric else None
    W_full, _ = _rounds(KeySolver(W0, km), keys, R)
    incremental = KeySolver(W0, km, incremental=True)
    W_inc, reports = _rounds(incremental, keys, R)
    torch.testing.assert_close(W_inc, W_full, rtol=1e-8, atol=1e-10)
    assert all(r.method == "incremental, exact" and r.residual < 1e-7 for r in reports)
    probe = keys[:4] + 0.1
    torch.testing.assert_close(incremental.change(probe), probe @ (W_inc - W0).T, rtol=1e-9, atol=1e-9)


def test_held_rows_that_repeat_earlier_ones_are_jittered_and_keep_their_output():
    """A held row is a row seen before with its output under the last solve as target: the new block's
    Schur complement is then (near) zero, and only its jitter keeps it factorisable."""
    W0, keys, R, km = _problem(k=12)
    solver = KeySolver(W0, km, incremental=True)
    W = W0.clone()
    solver.add(keys[:8], R[:8], torch.ones(8))
    solver.solve_into(W)
    before = solver.change(keys[:3]).clone()
    held = keys[:3]
    solver.add(torch.cat([keys[8:], held]), torch.cat([R[8:], -solver.change(held)]), torch.ones(7))
    report = solver.solve_into(W)
    assert report.method == "incremental, jittered" and report.jitter >= JITTER
    torch.testing.assert_close(solver.change(held), before, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(solver.change(keys[8:]), -R[8:], rtol=1e-6, atol=1e-8)


def test_an_incremental_state_holds_only_the_rows_and_goes_on_as_if_never_stopped():
    W0, keys, R, km = _problem(k=30)
    kept = KeySolver(W0, km, incremental=True)
    _rounds(kept, keys[:18], R[:18])
    state = {k: v.clone() for k, v in kept.state_dict().items()}
    assert set(state) == {"count", "keys", "R", "target_norm", "weights", "jitter"}  # no K, B, factor or coef
    restored = KeySolver(W0, km, incremental=True)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.change(keys[:5]), kept.change(keys[:5]), rtol=1e-9, atol=1e-10)
    W_kept, W_restored = W0.clone(), W0.clone()
    for solver, W in ((kept, W_kept), (restored, W_restored)):
        solver.add(keys[18:], R[18:], torch.ones(12))
        solver.solve_into(W)
    torch.testing.assert_close(W_restored, W_kept, rtol=1e-8, atol=1e-10)
    with pytest.raises(SolveError, match="full re-solve"):
        full = KeySolver(W0, km)
        full.add(keys[:6], R[:6], torch.ones(6))
        KeySolver(W0, km, incremental=True).load_state_dict(full.state_dict())


def test_the_incremental_state_grows_linearly_in_rows_at_its_documented_bytes_a_row():
    d_model, d_mlp = 12, 40
    W0, keys, R, km = _problem(k=36, d_model=d_model, d_mlp=d_mlp)  # up to d_mlp rows (then the primal form)
    solver = KeySolver(W0, km, incremental=True)
    sizes = []
    for start in range(0, 36, 9):
        solver.add(keys[start:start + 9], R[start:start + 9], torch.ones(9))
        sizes.append(sum(t.numel() * t.element_size() for t in solver.state_dict().values()))
    per_row = 4 * d_mlp + 8 * d_model + 24  # keyed.py's module doc
    assert [b - a for a, b in zip(sizes, sizes[1:])] == [9 * per_row] * 3


def _weighted_rounds(solver, keys, R, weights, size=6):
    W = solver.W0.clone()
    reports = []
    for start in range(0, len(keys), size):
        rows = slice(start, start + size)
        solver.add(keys[rows], R[rows], torch.linalg.norm(R[rows], dim=1), weights[rows])
        reports.append(solver.solve_into(W))
    return W, reports


@pytest.mark.parametrize("metric", [False, True])
def test_the_incremental_ridge_gives_the_full_ridge_solves_change_and_goes_on_from_its_state(metric):
    # the ridge is one more diagonal of K (lambda / s_t a row): rows, significances and a restart as the full solve
    W0, keys, R, km = _problem(k=36)
    km = km if metric else None
    weights = torch.linspace(0.5, 2.0, 36, dtype=torch.float64)
    ridge = 0.3 * float((keys ** 2).sum(1).mean())
    W_full, _ = _weighted_rounds(KeySolver(W0, km, ridge=ridge), keys, R, weights)
    incremental = KeySolver(W0, km, ridge=ridge, incremental=True)
    W_inc, reports = _weighted_rounds(incremental, keys[:24], R[:24], weights[:24])
    assert all(r.method == "incremental, ridge" for r in reports)
    assert reports[-1].residual > 1e-3  # a ridge does not meet its rows exactly
    restored = KeySolver(W0, km, ridge=ridge, incremental=True)
    restored.load_state_dict({k: v.clone() for k, v in incremental.state_dict().items()})
    for solver in (incremental, restored):
        W_inc, _ = _weighted_rounds(solver, keys[24:], R[24:], weights[24:])
        torch.testing.assert_close(W_inc, W_full, rtol=1e-7, atol=1e-9)  # the incremental jitter: 1e-10 of K's diagonal


@pytest.mark.parametrize("metric, ridge", [(False, 0.0), (True, 0.0), (True, 5.0)])
def test_past_its_dual_rows_the_incremental_solve_goes_on_in_the_primal_form_as_the_full_one(metric, ridge):
    # a long run (about 125 facts of the intact preset a layer) passes d_mlp rows and switches form mid-run
    W0, keys, R, km = _problem(k=60)
    incremental = KeySolver(W0, km if metric else None, ridge, incremental=True, dual_rows=30)
    full = KeySolver(W0, km if metric else None, ridge, dual_rows=30)
    W_inc, reports = _rounds(incremental, keys, R, size=10)
    W_full, _ = _rounds(full, keys, R, size=10)
    assert [r.method.startswith("incremental") for r in reports] == [True, True, True, False, False, False]
    assert incremental.primal is not None and "primal" in reports[-1].method
    torch.testing.assert_close(W_inc, W_full, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("metric", [False, True])
def test_a_relative_ridge_is_lambda_times_the_first_rounds_mean_metric_norm_and_survives_a_restart(metric):
    W0, keys, R, km = _problem(k=48)
    km = km if metric else None
    weights = torch.linspace(0.5, 2.0, 48, dtype=torch.float64)
    first = keys[:6] if km is None else km.apply(keys[:6])
    lam = 0.05 * float((weights[:6] * (first * keys[:6]).sum(1)).mean())
    W_abs, _ = _weighted_rounds(KeySolver(W0, km, ridge=lam, incremental=True, dual_rows=30), keys, R, weights)
    relative = KeySolver(W0, km, ridge=0.05, incremental=True, dual_rows=30, ridge_relative=True)
    W_rel, reports = _weighted_rounds(relative, keys[:24], R[:24], weights[:24])
    assert relative.ridge == pytest.approx(lam, rel=1e-12) and reports[0].ridge == relative.ridge
    restored = KeySolver(W0, km, ridge=0.05, incremental=True, dual_rows=30, ridge_relative=True)
    restored.load_state_dict({k: v.clone() for k, v in relative.state_dict().items()})
    assert restored.ridge == relative.ridge  # not the mean of the rows it goes on with
    for solver in (relative, restored):  # on past dual_rows, into the primal form
        W_rel, reports = _weighted_rounds(solver, keys[24:], R[24:], weights[24:])
        assert "primal" in reports[-1].method
        torch.testing.assert_close(W_rel, W_abs, rtol=1e-8, atol=1e-9)
    absolute = KeySolver(W0, km, ridge=lam, incremental=True)
    absolute.add(keys[:6], R[:6], torch.ones(6))
    with pytest.raises(SolveError, match="absolute ridge"):
        KeySolver(W0, km, ridge=0.05, incremental=True, ridge_relative=True).load_state_dict(absolute.state_dict())


def test_many_primal_rounds_keep_the_closed_form_ridge_solution_and_a_symmetric_p():
    # more primal rounds than keyed.SYMMETRIZE_EVERY: P is re-symmetrised only now and then
    W0, keys, R, _ = _problem(k=100, d_mlp=20)
    solver = KeySolver(W0, None, 5.0, incremental=True, dual_rows=10)
    W, reports = _rounds(solver, keys, R, size=2)
    assert sum("primal" in r.method for r in reports) == 45
    want = W0 - R.T @ keys @ torch.linalg.inv(5.0 * torch.eye(20, dtype=torch.float64) + keys.T @ keys)
    torch.testing.assert_close(W, want, rtol=1e-9, atol=1e-9)
    P = solver.primal.P
    assert float((P - P.T).abs().max()) < 1e-12 * float(P.abs().max())
