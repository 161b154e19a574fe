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


class SolveError(ValueError):
    """Rows that cannot be solved (mismatched counts, non-finite values)."""


@dataclass
class SolveReport:
    rows: int
    method: str  # "exact", "pinv" (singular system fallback) or "ridge"
    cond: float  # condition number of G = U' U'^T
    rank: int
    residual: float  # max_t |W'u'_t + v'_t - (W u_t + v_t)| / |W u_t + v_t|, W' in float64
    residual_applied: float  # the same with W' rounded to the weight's dtype
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
        """W + A B, computed in float64 and stored in W's dtype and device."""
        return (W.to(torch.float64) + self.delta().to(W.device)).to(W.dtype)


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
    for name, t in (("u", U), ("u'", Up), ("v", V), ("v'", Vp)):
        if not torch.isfinite(t).all():
            raise SolveError(f"{name} holds non-finite values: record again in float32")


def solve(
    W: torch.Tensor,
    U: torch.Tensor,
    Up: torch.Tensor,
    V: torch.Tensor,
    Vp: torch.Tensor,
    weights: torch.Tensor | None = None,
    ridge: float = 0.0,
) -> tuple[Update, SolveReport]:
    """The minimum-norm (or ridge) update of W; see the module docstring. Returns the factors and a report."""
    t0 = time.perf_counter()
    _check_rows(W, U, Up, V, Vp, weights)
    f64 = dict(dtype=torch.float64, device="cpu")
    W64 = W.detach().to(**f64)
    U, Up, V, Vp = (t.detach().to(**f64) for t in (U, Up, V, Vp))
    R = (Up - U) @ W64.T + (Vp - V)  # [k, d_model]
    G = Up @ Up.T  # [k, k]
    cond = float(torch.linalg.cond(G))
    rank = int(torch.linalg.matrix_rank(G))
    if ridge > 0:
        s = torch.ones(G.shape[0], **f64) if weights is None else weights.to(**f64).sqrt()
        M = ridge * torch.eye(G.shape[0], **f64) + s[:, None] * G * s[None, :]
        coef = s[:, None] * torch.linalg.solve(M, s[:, None] * R)  # [k, d_model]
        method = "ridge"
    elif cond < SINGULAR_COND:
        coef = torch.linalg.solve(G, R)
        method = "exact"
    else:
        warnings.warn(
            f"QF system is singular (cond {cond:.2e}, rank {rank} of {G.shape[0]}): "
            "fell back to the pseudo-inverse; constraints are met in the least-squares sense",
            stacklevel=2,
        )
        coef = torch.linalg.pinv(G, hermitian=True) @ R
        method = "pinv"
    update = Update(A=-coef.T.contiguous(), B=Up)
    W_new64 = W64 + update.delta()
    target = U @ W64.T + V
    report = SolveReport(
        rows=G.shape[0],
        method=method,
        cond=cond,
        rank=rank,
        residual=relative_residual(W_new64, Up, Vp, target),
        residual_applied=relative_residual(W_new64.to(W.dtype).to(torch.float64), Up, Vp, target),
        delta_rel=float(torch.linalg.norm(update.delta()) / torch.linalg.norm(W64)),
        seconds=time.perf_counter() - t0,
        ridge=ridge,
    )
    return update, report


def relative_residual(W_new: torch.Tensor, Up: torch.Tensor, Vp: torch.Tensor, target: torch.Tensor) -> float:
    """max_t |W_new u'_t + v'_t - target_t| / |target_t| (float64, rows are positions)."""
    out = Up @ W_new.T + Vp
    return float((torch.linalg.norm(out - target, dim=1) / torch.linalg.norm(target, dim=1)).max())
