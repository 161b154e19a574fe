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

A covariance-weighted solve (the smallest ||dW C^1/2||_F for a key covariance C, MEMIT's metric) is the
same with B = U' C^-1 in place of U' as the update's right factor, and G = U' C^-1 U'^T: give `basis=B`.
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import asdict, dataclass

import torch

from transformers_qf.core.errors import SolveError  # noqa: F401 - raised here, defined with the other input errors
from transformers_qf.solve.weights import CHUNK, Update  # noqa: F401 - Update is part of this module's API

SINGULAR_COND = 1e12  # above this, G is treated as singular and solved by pseudo-inverse
HOST_EIGEN_ROWS = 128  # up to this many rows G's eigenvalues are computed on the host (a GPU's are slower)


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

    def summary(self) -> str:
        return (f"{self.rows} rows, residual {self.residual:.1e} (applied {self.residual_applied:.1e}), "
                f"||dW||/||W|| {self.delta_rel:.3f}")


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


@dataclass
class _System:
    """Eq. 3's float64 quantities where W lives. Rows are positions; rows marked in `pad` are all zero
    and inert (a unit diagonal in G, zero residual), so a padded system solves like the unpadded one.

    Up: [k, d_mlp]; Vp, P (= U' W^T), target (= U W^T + V), R: [k, d_model]; G: [k, k]; w_sq: ||W||_F^2;
    B: the update's right factor [k, d_mlp] (U', or U' C^-1 in a covariance metric) and BB = B B^T.
    """

    Up: torch.Tensor
    Vp: torch.Tensor
    P: torch.Tensor
    target: torch.Tensor
    R: torch.Tensor
    G: torch.Tensor
    w_sq: torch.Tensor
    pad: torch.Tensor | None = None  # [k], 1.0 on padded rows
    B: torch.Tensor | None = None  # None: B = U'
    BB: torch.Tensor | None = None

    @property
    def basis(self) -> torch.Tensor:
        return self.Up if self.B is None else self.B

    @property
    def basis_gram(self) -> torch.Tensor:
        return self.G if self.BB is None else self.BB

    @functools.cached_property
    def finite(self) -> torch.Tensor:
        return torch.isfinite(self.G).all() & torch.isfinite(self.R).all()


def _system(W: torch.Tensor, U, Up, V, Vp, pad: torch.Tensor | None = None, basis: torch.Tensor | None = None) -> _System:
    f64 = dict(dtype=torch.float64, device=W.device)
    U, Up, V, Vp = (t.detach().to(**f64) for t in (U, Up, V, Vp))
    k = U.shape[0]
    products, w_sq = _times_wt(W, torch.cat([Up, U]))
    P, Q = products[:k], products[k:]  # U' W^T, U W^T
    target = Q + V  # W u_t + v_t, the open-book layer output
    B = BB = None
    if basis is None:
        G = Up @ Up.T
    else:
        B = basis.detach().to(**f64)
        G = Up @ B.T
        G = (G + G.T) / 2  # symmetric in exact arithmetic (C^-1 is); rounding would upset the Cholesky factor
        BB = B @ B.T
    if pad is not None:
        G = G + torch.diag(pad)
    return _System(Up, Vp, P, target, P + Vp - target, G, w_sq, pad, B, BB)


def _exact_coefficients(s: _System) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """coef = G^-1 R through a Cholesky factor, and whether the device may trust it, with no sync.

    Trusted: finite rows, a positive definite G, and ||G||_F ||L^-1||_F^2 < SINGULAR_COND, an upper
    bound on cond(G); the host's eigenvalues settle the cases this bound leaves open.
    """
    factor, info = torch.linalg.cholesky_ex(s.G)
    half = torch.linalg.solve_triangular(factor, s.R, upper=False)
    coef = torch.linalg.solve_triangular(factor.T, half, upper=True)
    inverse = torch.linalg.solve_triangular(factor, torch.eye(len(s.G), dtype=s.G.dtype, device=s.G.device), upper=False)
    bound = torch.linalg.norm(s.G) * torch.linalg.norm(inverse).square()
    return coef, info, s.finite & (info == 0) & (bound < SINGULAR_COND)


def _ridge_coefficients(s: _System, weights, ridge: float) -> torch.Tensor:
    k = len(s.G)
    f64 = dict(dtype=torch.float64, device=s.G.device)
    w = torch.ones(k, **f64) if weights is None else weights.to(**f64).sqrt()
    M = ridge * torch.eye(k, **f64) + w[:, None] * s.G * w[None, :]  # positive definite for ridge > 0
    return w[:, None] * torch.cholesky_solve(w[:, None] * s.R, torch.linalg.cholesky_ex(M)[0])


def _finish(W: torch.Tensor, s: _System, coef: torch.Tensor, gate: torch.Tensor | None, apply: bool):
    """A = -coef^T (zero where `gate` is false, so W stays W), W += A U' when `apply`, and the report's
    numbers as one device tensor: residual, residual_applied, ||A U'||_F^2, ||W||_F^2."""
    A = -coef.T
    if gate is not None:
        A = torch.where(gate, A, 0.0)
    A = A.contiguous()
    # W' u'_t + v'_t = P_t - (G coef)_t + v'_t, and ||A B||_F^2 = trace(A^T A B B^T): no d_model x d_mlp work
    closed = s.P - s.G @ coef + s.Vp
    seen = Update(A, s.basis).apply_(W, probe=s.Up) if apply else None
    nan = torch.full((), float("nan"), dtype=torch.float64, device=W.device)  # no host copy: graph-capturable
    return A, torch.stack([
        _max_rel(closed, s.target, s.pad),
        nan if seen is None else _max_rel(seen + s.Vp, s.target, s.pad),
        torch.trace((coef @ coef.T) @ s.basis_gram),
        s.w_sq,
    ])


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
    basis: torch.Tensor | None = None,
    pinv_dtype: torch.dtype | None = None,
) -> tuple[Update, SolveReport]:
    """The minimum-norm (or ridge) update of W; see the module docstring. Returns the factors and a report.

    Works where W lives (CPU or GPU) and never makes a full-size float64 copy of it. With `apply`, W
    is updated in place to W' and the report's `residual_applied` (that of W' as stored in W's dtype)
    is filled; without it W is left alone and `residual_applied` is nan. On a GPU the whole solve is
    queued at once and read back with one sync, unless G turns out (nearly) singular. basis: the update's
    right factor U' C^-1 [k, d_mlp] for a solve in the metric of a key covariance C (KeyMetric.apply(U')).
    pinv_dtype: the original code's numerics instead: R and G^+ R computed in this dtype (e.g. float32) with a
    pseudo-inverse, no fallback (exact solves only); the report's residuals are still measured in float64.
    """
    t0 = time.perf_counter()
    _check_rows(W, U, Up, V, Vp, weights)
    if basis is not None and tuple(basis.shape) != tuple(Up.shape):
        raise SolveError(f"basis has shape {tuple(basis.shape)}, expected {tuple(Up.shape)} (one row per u' row)")
    s = _system(W, U, Up, V, Vp, basis=basis)
    if pinv_dtype is not None:
        if ridge > 0 or basis is not None:
            raise SolveError("pinv_dtype is for the exact solve only: drop ridge and basis")
        coef, info, gate = _pinv_coefficients(W, U, Up, V, Vp, pinv_dtype), torch.zeros((), device=W.device), s.finite
    elif ridge > 0:
        coef, info, gate = _ridge_coefficients(s, weights, ridge), torch.zeros((), device=W.device), s.finite
    else:
        coef, info, gate = _exact_coefficients(s)
    A, numbers = _finish(W, s, coef, gate, apply)
    source = _spectrum_source(s.G)
    spectrum, values = _to_host(_flatten(source, numbers, s.finite, info, gate), source.shape)
    method = None if pinv_dtype is None else "pinv-" + str(pinv_dtype).replace("torch.", "")
    return _conclude(W, s, coef, A, spectrum, values, ridge, apply, t0, method=method)


def _pinv_coefficients(W: torch.Tensor, U, Up, V, Vp, dtype: torch.dtype) -> torch.Tensor:
    """G^+ R in `dtype` throughout, as the original code solved eq. 3 (float32 pinv); returned in float64."""
    low = dict(dtype=dtype, device=W.device)
    U, Up, V, Vp = (t.detach().to(**low) for t in (U, Up, V, Vp))
    R = (Up - U) @ W.to(**low).T + (Vp - V)
    return (torch.linalg.pinv(Up @ Up.T) @ R).to(torch.float64)


def _conclude(W, s: _System, coef, A, spectrum: torch.Tensor, values: list[float], ridge: float, apply: bool,
              t0: float, rows: int | None = None, method: str | None = None) -> tuple[Update, SolveReport]:
    """The host's part of a solve queued by `_finish`, after its one sync: G's eigenvalues, and the rare second
    pass (a singular G: pseudo-inverse; or one that the device's bound left untrusted). spectrum, values: from
    `_to_host`; rows: the real rows of a padded system (the first `rows`)."""
    k = len(s.G) if rows is None else rows
    residual, residual_applied, delta_sq, w_sq, finite, info, gate = values
    if not finite:
        raise SolveError("the recorded rows hold non-finite values: record again in float32 (--dtype float32)")
    eig = _eigenvalues(spectrum[:k, :k] if spectrum.dim() == 2 else spectrum)
    cond = _condition(eig)
    singular = method is None and ridge == 0 and (cond >= SINGULAR_COND or info != 0)
    rank = int((eig > float(eig[-1]) * k * torch.finfo(torch.float64).eps).sum()) if singular else k
    method = method or ("ridge" if ridge > 0 else "pinv" if singular else "exact")
    if singular:
        warnings.warn(
            f"QF system is singular (cond {cond:.2e}, rank {rank} of {k}): "
            "fell back to the pseudo-inverse; constraints are met in the least-squares sense",
            stacklevel=3,
        )
        G = s.G if s.pad is None else s.G[:k, :k]
        coef = torch.linalg.pinv(G.cpu(), hermitian=True).to(W.device) @ s.R[:k]
        if s.pad is not None:
            coef = torch.cat([coef, torch.zeros_like(s.R[k:])])
    if not gate:  # nothing was written into W: finish the solve now that the host knows it is sound
        A, numbers = _finish(W, s, coef, None, apply)
        residual, residual_applied, delta_sq, w_sq = numbers.tolist()
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
    return Update(A=A[:, :k], B=s.basis[:k]), report


class GraphedSolver:
    """`solve(W, U, U', V, V', apply=True)` (exact method) on CUDA, replayed from a CUDA graph.

    W is the weight the solves write into; its storage must stay put (a moved W is recaptured). Rows
    are padded to a multiple of `bucket` with inert rows (see `_System`); each padded count up to
    `max_rows` captures one graph, once. More rows, or a failed capture, run the eager `solve`, and
    `fallback_reason` says why the graphs were given up. Gives what `solve` gives (tested).
    """

    def __init__(self, W: torch.Tensor, bucket: int = 32, max_rows: int = HOST_EIGEN_ROWS):
        self.W, self.bucket, self.max_rows = W, bucket, max_rows
        self.graphs: dict[int, _SolveGraph] = {}
        self.fallback_reason: str | None = None

    @torch.no_grad()
    def __call__(self, U, Up, V, Vp) -> tuple[Update, SolveReport]:
        t0 = time.perf_counter()
        k = U.shape[0]
        if self.fallback_reason is not None or not 0 < k <= self.max_rows:
            return solve(self.W, U, Up, V, Vp, apply=True)
        _check_rows(self.W, U, Up, V, Vp, None)
        padded = -(-k // self.bucket) * self.bucket
        graph = self.graphs.get(padded)
        if graph is None or graph.W_address != self.W.data_ptr():
            try:
                graph = self.graphs[padded] = _SolveGraph(self.W, padded)
            except Exception as e:  # noqa: BLE001 - any capture failure means: solve eagerly
                self.fallback_reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                return solve(self.W, U, Up, V, Vp, apply=True)
        graph.load(U, Up, V, Vp)
        graph.graph.replay()
        spectrum, values = _to_host(graph.flat, graph.system.G.shape)
        update, report = _conclude(self.W, graph.system, graph.coef, graph.A, spectrum, values, 0.0, True, t0, rows=k)
        return Update(update.A.clone(), update.B.clone()), report


class _SolveGraph:
    """One captured exact solve of `rows` (padded) rows into W; its inputs and outputs are static tensors."""

    def __init__(self, W: torch.Tensor, rows: int):
        f64 = dict(dtype=torch.float64, device=W.device)
        d_model, d_mlp = W.shape
        self.W, self.W_address = W, W.data_ptr()
        self.inputs = [torch.zeros(rows, n, **f64) for n in (d_mlp, d_mlp, d_model, d_model)]  # U, U', V, V'
        self.pad = torch.ones(rows, **f64)
        self.k = 0  # real rows loaded; all padding solves to a zero update, so warming up leaves W as it is
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._queue()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._queue()

    def _queue(self) -> None:
        self.system = _system(self.W, *self.inputs, pad=self.pad)
        self.coef, info, gate = _exact_coefficients(self.system)
        self.A, numbers = _finish(self.W, self.system, self.coef, gate, apply=True)
        self.flat = _flatten(self.system.G, numbers, self.system.finite, info, gate)

    def load(self, U, Up, V, Vp) -> None:
        """Copy in k rows; the rows after them are (made) zero and marked as padding."""
        k = U.shape[0]
        for buffer, rows in zip(self.inputs, (U, Up, V, Vp)):
            buffer[:k].copy_(rows)
            if k < self.k:
                buffer[k:self.k].zero_()
        if k != self.k:
            self.pad[:k].zero_()
            self.pad[k:].fill_(1.0)
        self.k = k


def _spectrum_source(G: torch.Tensor) -> torch.Tensor:
    """What the host needs for G's eigenvalues: G itself when small or on the CPU, else its eigenvalues."""
    if G.device.type == "cpu" or len(G) <= HOST_EIGEN_ROWS:
        return G
    return torch.linalg.eigvalsh(torch.nan_to_num(G))  # non-finite rows are refused by the caller


def _eigenvalues(spectrum: torch.Tensor) -> torch.Tensor:
    """Ascending eigenvalues from what `_spectrum_source` gave, on the host."""
    return torch.linalg.eigvalsh(spectrum) if spectrum.dim() == 2 else spectrum


def _condition(eig: torch.Tensor) -> float:
    return float(eig[-1]) / float(eig[0]) if eig[0] > 0 else float("inf")


def _flatten(spectrum: torch.Tensor, *numbers: torch.Tensor) -> torch.Tensor:
    """G (or its eigenvalues) and some numbers as one float64 vector, to cross to the host in one copy."""
    return torch.cat([spectrum.reshape(-1)] + [n.reshape(-1).to(torch.float64) for n in numbers])


def _to_host(flat: torch.Tensor, shape: torch.Size) -> tuple[torch.Tensor, list[float]]:
    """Undo `_flatten` on the host (one sync): the spectrum source of `shape`, and the numbers."""
    flat = flat.cpu()
    n = shape.numel()
    return flat[:n].view(shape), flat[n:].tolist()


def _max_rel(out: torch.Tensor, target: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
    """max_t |out_t - target_t| / |target_t| over the rows that are not padding."""
    ratio = torch.linalg.norm(out - target, dim=1) / torch.linalg.norm(target, dim=1)
    return (ratio if pad is None else ratio.masked_fill(pad > 0, 0.0)).max()


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
        source = _spectrum_source(S)
        spectrum, (finite, bad) = _to_host(_flatten(source, torch.isfinite(r).all() & torch.isfinite(S).all(), info),
                                           source.shape)
        cond = _condition(_eigenvalues(spectrum)) if finite else float("nan")
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
