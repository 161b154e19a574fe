import pytest
import torch

from transformers_qf.solve.keyed import KeyMetric
from transformers_qf.solve.exact import SolveError, relative_residual, solve


def _rows(k=10, d_model=48, d_mlp=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d_model, d_mlp, generator=g) / d_mlp**0.5
    U, Up = torch.randn(k, d_mlp, generator=g), torch.randn(k, d_mlp, generator=g)
    V, Vp = torch.randn(k, d_model, generator=g), torch.randn(k, d_model, generator=g)
    return W, U, Up, V, Vp


def test_eq3_meets_every_constraint_in_fp32():
    W, U, Up, V, Vp = _rows()
    W_new = W.clone()
    update, report = solve(W_new, U, Up, V, Vp, apply=True)
    assert W_new.dtype == torch.float32
    torch.testing.assert_close(W_new, update.applied_to(W))
    target = (U @ W.T + V).double()
    assert relative_residual(W_new.double(), Up.double(), Vp.double(), target) < 1e-5
    assert report.method == "exact" and report.residual < 1e-12 and report.residual_applied < 1e-5
    assert report.rank == 10 and report.rows == 10


def test_eq3_is_the_minimum_norm_change():
    W, U, Up, V, Vp = _rows()
    update, _ = solve(W, U, Up, V, Vp)
    dW = update.delta()
    # any other solution differs by a matrix that vanishes on the rows of U'; it can only be larger
    N = torch.randn(W.shape[0], W.shape[1], dtype=torch.float64)
    P = torch.eye(W.shape[1], dtype=torch.float64) - torch.linalg.pinv(Up.double()) @ Up.double()
    other = dW + N @ P
    assert torch.linalg.norm(dW) < torch.linalg.norm(other)
    # and the minimum-norm change lies in the row space of U'
    torch.testing.assert_close(dW @ P, torch.zeros_like(dW), atol=1e-10, rtol=0)


def test_a_basis_of_keys_times_c_inverse_gives_the_smallest_change_in_that_metric():
    W, U, Up, V, Vp = _rows()
    X = torch.randn(400, W.shape[1], generator=torch.Generator().manual_seed(1)) * torch.linspace(0.1, 3, W.shape[1])
    metric = KeyMetric(X.T @ X / len(X), shrink=0.1)
    C = metric.factor @ metric.factor.T  # the shrunk covariance the metric inverts
    update, report = solve(W, U, Up, V, Vp, basis=metric.apply(Up))
    dW = update.delta()
    target = U.double() @ W.double().T + V.double()
    assert report.method == "exact" and report.residual < 1e-10
    assert relative_residual(W.double() + dW, Up.double(), Vp.double(), target) < 1e-10
    assert report.delta_rel == pytest.approx(float(torch.linalg.norm(dW) / torch.linalg.norm(W.double())), rel=1e-9)
    # optimal in the metric: dW C lies in the row space of U' (and the plain solve's dW does not)
    P = torch.eye(W.shape[1], dtype=torch.float64) - torch.linalg.pinv(Up.double()) @ Up.double()
    torch.testing.assert_close(dW @ C @ P, torch.zeros_like(dW), atol=1e-9, rtol=0)
    plain = solve(W, U, Up, V, Vp)[0].delta()
    assert torch.linalg.norm(plain @ C @ P) > 1e-3 * torch.linalg.norm(plain @ C)
    with pytest.raises(SolveError, match="basis has shape"):
        solve(W, U, Up, V, Vp, basis=metric.apply(Up)[:3])


def test_duplicated_rows_fall_back_to_pinv_with_the_same_answer():
    W, U, Up, V, Vp = _rows()
    exact, _ = solve(W, U, Up, V, Vp)
    dup = lambda t: torch.cat([t, t[:3]])  # the original repeats a row n times for significance n
    with pytest.warns(UserWarning, match="singular"):
        update, report = solve(W, dup(U), dup(Up), dup(V), dup(Vp))
    assert report.method == "pinv" and report.rank == 10
    torch.testing.assert_close(update.delta(), exact.delta(), rtol=1e-7, atol=1e-9)


def test_ridge_tends_to_exact_and_weights_decide_which_rows_are_met():
    W, U, Up, V, Vp = _rows()
    exact, _ = solve(W, U, Up, V, Vp)
    tiny, rep = solve(W, U, Up, V, Vp, ridge=1e-9)
    assert rep.method == "ridge"
    torch.testing.assert_close(tiny.delta(), exact.delta(), rtol=1e-5, atol=1e-7)
    weights = torch.ones(10, dtype=torch.float64)
    weights[0] = 100.0
    soft, _ = solve(W, U, Up, V, Vp, weights=weights, ridge=10.0)
    W_new = (W.double() + soft.delta())
    err = torch.linalg.norm(Up.double() @ W_new.T + Vp.double() - (U @ W.T + V).double(), dim=1)
    assert err[0] < err[1:].min()


def test_accumulated_rounds_equal_one_stacked_solve():
    W, U, Up, V, Vp = _rows(k=12)
    both, _ = solve(W, U, Up, V, Vp)
    again, _ = solve(W, *(torch.cat([t[:5], t[5:]]) for t in (U, Up, V, Vp)))
    torch.testing.assert_close(both.delta(), again.delta())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: (r[0], r[1], r[2][:-1], r[3], r[4]), "rows"),
        (lambda r: (r[0], r[1][:0], r[2][:0], r[3][:0], r[4][:0]), "no rows"),
        (lambda r: (r[0], r[1], r[2], r[3], r[4].fill_(float("nan"))), "non-finite"),
        (lambda r: (r[0], r[1][:, :5], r[2], r[3], r[4]), "width"),
    ],
)
def test_unsolvable_rows_are_refused(mutate, message):
    with pytest.raises(SolveError, match=message):
        solve(*mutate(_rows()))


def test_blockwise_passes_over_w_give_the_same_update(monkeypatch):
    import transformers_qf.solve.exact as qf

    W, U, Up, V, Vp = _rows()
    whole, whole_W = W.clone(), W.clone()
    ref, ref_report = solve(whole_W, U, Up, V, Vp, apply=True)
    import transformers_qf.solve.weights as weights

    monkeypatch.setattr(qf, "CHUNK", 7)  # 160 columns in 23 blocks, the last one short
    monkeypatch.setattr(weights, "CHUNK", 7)  # the same in the write of W' (Update.apply_)
    got, report = solve(whole, U, Up, V, Vp, apply=True)
    torch.testing.assert_close(got.delta(), ref.delta())
    torch.testing.assert_close(whole, whole_W)
    assert abs(report.delta_rel - ref_report.delta_rel) < 1e-12
    assert report.residual_applied < 1e-5
    # ||W'-W||/||W|| from the k x k identity equals the direct computation
    direct = torch.linalg.norm(ref.delta()) / torch.linalg.norm(W.double())
    assert abs(report.delta_rel - float(direct)) < 1e-10


def test_incremental_rounds_equal_a_solve_from_scratch():
    from transformers_qf.solve.exact import Accumulator

    W, U, Up, V, Vp = _rows(k=30)
    scratch = W.clone()
    solve(scratch, U, Up, V, Vp, apply=True)
    W_inc = W.clone()
    acc = Accumulator(W.clone())
    for lo, hi in ((0, 12), (12, 13), (13, 30)):  # rounds of 12, 1 and 17 rows
        report = acc.add(W_inc, U[lo:hi], Up[lo:hi], V[lo:hi], Vp[lo:hi])
        assert report.method == "incremental" and report.rows == hi and report.residual_applied < 1e-5
    torch.testing.assert_close(W_inc, scratch, rtol=1e-5, atol=1e-6)
    # every earlier row is still met
    target = (U @ W.T + V).double()
    assert relative_residual(W_inc.double(), Up.double(), Vp.double(), target) < 1e-5
    with pytest.raises(SolveError, match="dependent"):
        acc.add(W_inc, U[:3], Up[:3], V[:3], Vp[:3])  # the same rows again


def test_padded_rows_are_inert():
    """The CUDA-graph solve pads the rows to a bucket: the same solve on the CPU, padded, gives solve()'s W'."""
    from transformers_qf.solve import exact as qf

    W, U, Up, V, Vp = _rows(k=10)
    want_W = W.clone()
    want, want_report = solve(want_W, U, Up, V, Vp, apply=True)
    padded = [torch.cat([t, torch.zeros(6, t.shape[1])]) for t in (U, Up, V, Vp)]
    pad = torch.cat([torch.zeros(10), torch.ones(6)]).double()
    got_W = W.clone()
    s = qf._system(got_W, *padded, pad=pad)
    coef, info, gate = qf._exact_coefficients(s)
    A, numbers = qf._finish(got_W, s, coef, gate, apply=True)
    spectrum, values = qf._to_host(qf._flatten(s.G, numbers, s.finite, info, gate), s.G.shape)
    got, report = qf._conclude(got_W, s, coef, A, spectrum, values, 0.0, True, 0.0, rows=10)
    torch.testing.assert_close(got_W, want_W)
    torch.testing.assert_close(got.delta(), want.delta())
    assert (report.rows, report.method, report.rank) == (10, "exact", 10)
    assert abs(report.cond / want_report.cond - 1) < 1e-9
    assert report.residual < 1e-12 and abs(report.delta_rel - want_report.delta_rel) < 1e-12


def test_a_solve_the_device_does_not_trust_is_finished_by_the_host(monkeypatch):
    """Between cond(G) and the device's upper bound on it, nothing is written until the host has the eigenvalues."""
    from transformers_qf.solve import exact as qf

    W, U, Up, V, Vp = _rows()
    want_W = W.clone()
    _, want = solve(want_W, U, Up, V, Vp, apply=True)
    G = Up.double() @ Up.double().T
    bound = float(torch.linalg.norm(G) * torch.linalg.norm(torch.linalg.inv(torch.linalg.cholesky(G))).square())
    assert bound > 1.5 * want.cond
    monkeypatch.setattr(qf, "SINGULAR_COND", (bound * want.cond) ** 0.5)  # above cond(G), below the bound
    got_W = W.clone()
    _, report = solve(got_W, U, Up, V, Vp, apply=True)
    assert report.method == "exact" and report.residual_applied < 1e-5
    torch.testing.assert_close(got_W, want_W)


def test_a_singular_system_applies_the_pseudo_inverse_once():
    W, U, Up, V, Vp = _rows()
    dup = lambda t: torch.cat([t, t[:3]])
    W_new = W.clone()
    with pytest.warns(UserWarning, match="singular"):
        update, report = solve(W_new, dup(U), dup(Up), dup(V), dup(Vp), apply=True)
    assert report.method == "pinv" and report.residual_applied < 1e-5
    torch.testing.assert_close(W_new, update.applied_to(W))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graphed_solver_matches_solve_on_cuda():
    from transformers_qf.solve.exact import GraphedSolver

    W, U, Up, V, Vp = (t.cuda() for t in _rows(k=45))
    solver = GraphedSolver(W.clone(), bucket=16)
    for k in (10, 45, 7, 10):  # three padded sizes; a smaller round after a larger one in the same bucket
        want_W = W.clone()
        want, want_report = solve(want_W, U[:k], Up[:k], V[:k], Vp[:k], apply=True)
        solver.W.copy_(W)
        got, report = solver(U[:k], Up[:k], V[:k], Vp[:k])
        assert solver.fallback_reason is None, solver.fallback_reason
        torch.testing.assert_close(solver.W, want_W)
        torch.testing.assert_close(got.delta(), want.delta())
        assert (report.rows, report.method, report.rank) == (k, "exact", k)
        assert report.residual_applied < 1e-5 and abs(report.delta_rel - want_report.delta_rel) < 1e-9
    assert sorted(solver.graphs) == [16, 48]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_many_rows_on_cuda_take_the_eigenvalues_from_the_device():
    from transformers_qf.solve.exact import HOST_EIGEN_ROWS

    k = HOST_EIGEN_ROWS + 20
    W, U, Up, V, Vp = _rows(k=k, d_mlp=4 * k)
    W_cpu, W_gpu = W.clone(), W.cuda()
    _, want = solve(W_cpu, U, Up, V, Vp, apply=True)
    _, got = solve(W_gpu, U.cuda(), Up.cuda(), V.cuda(), Vp.cuda(), apply=True)
    assert got.method == "exact" and abs(got.cond / want.cond - 1) < 1e-6
    torch.testing.assert_close(W_gpu.cpu(), W_cpu)
