"""QF's closed-form update of down_proj (eq. 3 of arXiv 2507.04300), solved in float64.

Rows are positions. With W: [d_model, d_mlp], open-book rows U: [k, d_mlp], V: [k, d_model] and
closed-book rows U', V', the update makes the closed-book layer output equal the open-book one,

    W' u'_t + v'_t = W u_t + v_t      for every kept position t,

with the smallest ||W' - W||_F:

    R  = (U' - U) W^T + (V' - V)          [k, d_model]   what each closed-book row is off by
    G  = U' U'^T                          [k, k]
    dW = -R^T G^+ U'                      [d_model, d_mlp], rank <= k

Significance weights s_t: in the exact solve only their zeros matter (a consistent system with
duplicated or rescaled rows has the same minimum-norm solution). With a ridge term lambda > 0 the
solve minimises lambda ||dW||^2 + sum_t s_t ||dW u'_t + r_t||^2 instead, and then the weights decide
how closely each row is met:

    dW = -R^T S^1/2 (lambda I + S^1/2 G S^1/2)^-1 S^1/2 U'
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass

import torch

SINGULAR_COND = 1e12  # above this, G is treated as singular and solved by pseudo-inverse
CHUNK = 2048  # columns of W handled at a time in float64


class SolveError(ValueError):
    """Rows that cannot be solved (mismatched counts, non-finite values)."""


@dataclass
class SolveReport:
    rows: int
    method: str  # "exact", "pinv" (singular system fallback) or "ridge"
    cond: float  # condition number of G = U' U'^T
    rank: int
    residual: float  # max_t |W'u'_t + v'_t - (W u_t + v_t)| / |W u_t + v_t|, W' in float64
    residual_applied: float  # the same with W' as stored in the weight's dtype (nan if not applied)
    delta_rel: float  # ||W' - W||_F / ||W||_F
    seconds: float
    ridge: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Update:
    """dW = A @ B, a rank-k update of a [d_model, d_mlp] weight. A: [d_model, k], B: [k, d_mlp] (float64)."""

    A: torch.Tensor
    B: torch.Tensor

    def delta(self) -> torch.Tensor:
        return self.A @ self.B

    def applied_to(self, W: torch.Tensor) -> torch.Tensor:
        """W + A B, computed in float64 and stored in W's dtype and device (a new tensor)."""
        out = W.detach().clone()
        self.apply_(out)
        return out

    @torch.no_grad()
    def apply_(self, W: torch.Tensor, probe: torch.Tensor | None = None) -> torch.Tensor | None:
        """W += A B in place, in float64 one block of columns at a time (no full-size float64 copy).

        With `probe` ([m, d_mlp], float64) it also returns probe @ W_new^T as stored, in float64.
        """
        A = self.A.to(W.device)
        B = self.B.to(W.device)
        seen = None if probe is None else torch.zeros(probe.shape[0], W.shape[0], dtype=torch.float64, device=W.device)
        chunk = CHUNK
        for c in range(0, W.shape[1], chunk):
            block = W[:, c:c + chunk]
            block.copy_(block.to(torch.float64).addmm_(A, B[:, c:c + chunk]))
            if seen is not None:
                seen.addmm_(probe[:, c:c + chunk], block.to(torch.float64).T)
        return seen


def _check_rows(W, U, Up, V, Vp, weights):
    k = U.shape[0]
    for name, t, cols in (("u'", Up, W.shape[1]), ("v", V, W.shape[0]), ("v'", Vp, W.shape[0])):
        if t.shape[0] != k:
            raise SolveError(
                f"{name} has {t.shape[0]} rows but u has {k}: every QF-instruct needs a QF-update with the same answer"
            )
        if t.shape[1] != cols:
            raise SolveError(f"{name} has width {t.shape[1]}, expected {cols}: rows from another model or layer")
    if U.shape[1] != W.shape[1]:
        raise SolveError(f"u has width {U.shape[1]}, expected {W.shape[1]}: rows from another model or layer")
    if k == 0:
        raise SolveError("no rows to solve: run QF-instruct and QF-update first (all significances may be 0)")
    if weights is not None and (weights.shape != (k,) or (weights <= 0).any() or not torch.isfinite(weights).all()):
        raise SolveError(f"weights must be {k} finite positive numbers, got shape {tuple(weights.shape)}")
    # finiteness of the rows is checked on G and R, which every non-finite row value reaches (no extra sync)


@torch.no_grad()
def _times_wt(W: torch.Tensor, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """X @ W^T in float64 ([m, d_mlp] -> [m, d_model]) and ||W||_F^2, one block of W's columns at a time."""
    out = torch.zeros(X.shape[0], W.shape[0], dtype=torch.float64, device=W.device)
    sq = torch.zeros((), dtype=torch.float64, device=W.device)
    chunk = CHUNK
    for c in range(0, W.shape[1], chunk):
        block = W[:, c:c + chunk].to(torch.float64)
        out.addmm_(X[:, c:c + chunk], block.T)
        sq += block.square().sum()
    return out, sq


@torch.no_grad()
def solve(
    W: torch.Tensor,
    U: torch.Tensor,
    Up: torch.Tensor,
    V: torch.Tensor,
    Vp: torch.Tensor,
    weights: torch.Tensor | None = None,
    ridge: float = 0.0,
    apply: bool = False,
) -> tuple[Update, SolveReport]:
    """The minimum-norm (or ridge) update of W; see the module docstring. Returns the factors and a report.

    Works where W lives (CPU or GPU) and never makes a full-size float64 copy of it. With `apply`, W
    is updated in place to W' and the report's `residual_applied` (that of W' as stored in W's dtype)
    is filled; without it W is left alone and `residual_applied` is nan.
    """
    t0 = time.perf_counter()
    _check_rows(W, U, Up, V, Vp, weights)
    f64 = dict(dtype=torch.float64, device=W.device)
    U, Up, V, Vp = (t.detach().to(**f64) for t in (U, Up, V, Vp))
    k = U.shape[0]
    products, w_sq = _times_wt(W, torch.cat([Up, U]))  # w_sq stays on the device until the end
    P, Q = products[:k], products[k:]  # U' W^T, U W^T
    target = Q + V  # W u_t + v_t, the open-book layer output
    R = P + Vp - target  # [k, d_model]
    G = Up @ Up.T  # [k, k]
    coef, method, cond, rank = _solve_system(G, R, weights, ridge)  # coef: [k, d_model]
    update = Update(A=-coef.T.contiguous(), B=Up)
    # W' u'_t + v'_t = P_t - (G coef)_t + v'_t, and ||A B||_F^2 = trace(A^T A B B^T): no d_model x d_mlp work
    closed = P - G @ coef + Vp
    seen = update.apply_(W, probe=Up) if apply else None
    nan = torch.tensor(float("nan"), **f64)
    residual, residual_applied, delta_sq, w_sq = torch.stack([  # one device-to-host sync for the report
        _max_rel(closed, target),
        nan if seen is None else _max_rel(seen + Vp, target),
        torch.trace((coef @ coef.T) @ G),
        w_sq,
    ]).tolist()
    report = SolveReport(
        rows=k,
        method=method,
        cond=cond,
        rank=rank,
        residual=residual,
        residual_applied=residual_applied,
        delta_rel=(max(delta_sq, 0.0) / w_sq) ** 0.5,
        seconds=time.perf_counter() - t0,
        ridge=ridge,
    )
    return update, report


def _host_copy(matrix: torch.Tensor, *scalars: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """A small float64 matrix and some scalars on the host, in one device-to-host copy (one sync)."""
    flat = torch.cat([matrix.reshape(-1), torch.stack([s.to(torch.float64) for s in scalars])]).cpu()
    n = matrix.numel()
    return flat[:n].view(matrix.shape), flat[n:].tolist()


def _extreme_eigenvalues(host_matrix: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Eigenvalues (ascending) of a small symmetric host matrix and its condition number (inf if singular)."""
    eig = torch.linalg.eigvalsh(host_matrix)
    lo, hi = float(eig[0]), float(eig[-1])
    return eig, (hi / lo if lo > 0 else float("inf"))


def _solve_system(G: torch.Tensor, R: torch.Tensor, weights, ridge: float):
    """coef = G^-1 R (or its ridge / pseudo-inverse form) in float64, where G lives.

    The factorisation and the solve run where G lives. One device-to-host sync brings G, a finiteness
    flag and the Cholesky info flag to the host, where the k x k eigenvalues (condition number, rank,
    the choice of method) are computed: a GPU's eigensolver is slow for small matrices, and the host
    needs the numbers anyway.
    """
    k = G.shape[0]
    f64 = dict(dtype=torch.float64, device=G.device)
    factor, info = torch.linalg.cholesky_ex(G)
    finite = torch.isfinite(G).all() & torch.isfinite(R).all()
    G_host, (ok, not_definite) = _host_copy(G, finite, info)
    if not ok:
        raise SolveError("the recorded rows hold non-finite values: record again in float32 (--dtype float32)")
    eig, cond = _extreme_eigenvalues(G_host)
    singular = cond >= SINGULAR_COND or not_definite
    rank = int((eig > float(eig[-1]) * k * torch.finfo(torch.float64).eps).sum()) if singular else k
    if ridge > 0:
        s = torch.ones(k, **f64) if weights is None else weights.to(**f64).sqrt()
        M = ridge * torch.eye(k, **f64) + s[:, None] * G * s[None, :]  # positive definite for ridge > 0
        coef = s[:, None] * torch.cholesky_solve(s[:, None] * R, torch.linalg.cholesky_ex(M)[0])
        method = "ridge"
    elif not singular:
        coef = torch.cholesky_solve(R, factor)
        method = "exact"
    else:
        warnings.warn(
            f"QF system is singular (cond {cond:.2e}, rank {rank} of {k}): "
            "fell back to the pseudo-inverse; constraints are met in the least-squares sense",
            stacklevel=3,
        )
        coef = torch.linalg.pinv(G_host, hermitian=True).to(G.device) @ R
        method = "pinv"
    return coef, method, cond, rank


def _max_rel(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (torch.linalg.norm(out - target, dim=1) / torch.linalg.norm(target, dim=1)).max()


def relative_residual(W_new: torch.Tensor, Up: torch.Tensor, Vp: torch.Tensor, target: torch.Tensor) -> float:
    """max_t |W_new u'_t + v'_t - target_t| / |target_t| (float64, rows are positions)."""
    out = Up @ W_new.T + Vp
    return float(_max_rel(out, target))


class Accumulator:
    """Eq. 3 over rows that arrive in rounds, extended in place instead of re-solved from scratch.

    After each `add`, W holds the minimum-norm W' for every row so far, the same matrix as
    `solve(W0, all rows)` up to rounding. A round of m rows on top of k costs O(m k d_mlp + k^2 m +
    m d_mlp d_model) instead of the O(k^2 d_mlp + k^3 + k d_mlp d_model) of a full re-solve:

        Z  = U'_new - C G^-1 U'_old          the new rows' part orthogonal to the old rows (C = U'_new U'_old^T)
        S  = Z U'_new^T                      the Schur complement of G; extends G's Cholesky factor
        dW = -r^T S^-1 Z                     r: the new rows' residuals under the current W'

    dW vanishes on the old rows, so they stay met. Exact solves only (no ridge, no pseudo-inverse).
    """

    def __init__(self, W0: torch.Tensor):
        self.W0 = W0  # the original weight, kept as is
        f64 = dict(dtype=torch.float64, device=W0.device)
        self.Up = torch.zeros(0, W0.shape[1], **f64)
        self.L = torch.zeros(0, 0, **f64)  # Cholesky factor of G = U' U'^T over every row so far

    @property
    def rows(self) -> int:
        return self.Up.shape[0]

    @torch.no_grad()
    def add(self, W: torch.Tensor, U, Up, V, Vp) -> SolveReport:
        """Add one round's rows; W (holding the current W') is updated in place."""
        t0 = time.perf_counter()
        _check_rows(W, U, Up, V, Vp, None)
        f64 = dict(dtype=torch.float64, device=W.device)
        U, Up, V, Vp = (t.detach().to(**f64) for t in (U, Up, V, Vp))
        target = _times_wt(self.W0, U)[0] + V  # W0 u_t + v_t
        now, w_sq = _times_wt(W, Up)
        r = now + Vp - target  # [m, d_model]
        if self.rows:
            C = Up @ self.Up.T  # [m, k]
            L21 = torch.linalg.solve_triangular(self.L, C.T, upper=False).T  # [m, k]
            Z = Up - torch.cholesky_solve(C.T, self.L).T @ self.Up
        else:
            L21 = torch.zeros(Up.shape[0], 0, **f64)
            Z = Up
        S = Up @ Up.T - L21 @ L21.T
        L22, info = torch.linalg.cholesky_ex(S)
        S_host, (finite, bad) = _host_copy(S, torch.isfinite(r).all() & torch.isfinite(S).all(), info)
        cond = _extreme_eigenvalues(S_host)[1] if finite else float("nan")
        if bad or not finite or not cond < SINGULAR_COND:
            raise SolveError(
                f"the new rows are (nearly) dependent on the earlier ones (cond {cond:.2e}) or not finite: "
                "re-solve from scratch with solve(), which falls back to the pseudo-inverse"
            )
        coef = torch.cholesky_solve(r, L22)  # S^-1 r, [m, d_model]
        seen = Update(A=-coef.T.contiguous(), B=Z).apply_(W, probe=Up)
        k = self.rows
        self.L = torch.cat([torch.cat([self.L, torch.zeros(k, Up.shape[0], **f64)], 1), torch.cat([L21, L22], 1)])
        self.Up = torch.cat([self.Up, Up])
        residual_applied, delta_sq, w_sq = torch.stack(
            [_max_rel(seen + Vp, target), torch.trace((coef @ coef.T) @ S), w_sq]
        ).tolist()
        return SolveReport(
            rows=self.rows, method="incremental", cond=cond, rank=self.rows, residual=float("nan"),
            residual_applied=residual_applied, delta_rel=(max(delta_sq, 0.0) / w_sq) ** 0.5,
            seconds=time.perf_counter() - t0,
        )
