"""QF's update of down_proj in a key metric: covariance-weighted (EMMET / MEMIT form) and ridge.

Rows are positions. Each row t has a key u'_t (the closed-book input of down_proj) and a residual
r_t = (W0 u'_t + v'_t) - target_t, what the closed-book layer output is off by under the original
weight W0. With C = L L^T a key covariance (the identity for QF's plain metric) the update solves

    minimise   sum_t s_t |dW u'_t + r_t|^2  +  lambda |dW L|_F^2

    lambda > 0:  dW = -R^T S^1/2 (lambda I + S^1/2 K S^1/2)^-1 S^1/2 B
    lambda = 0:  dW = -R^T (K + eps I)^-1 B   (every row met, smallest |dW L|_F)

with B = U' C^-1 ([k, d_mlp], "what the keys look like to the metric") and K = U' C^-1 U'^T ([k, k]).
With C = I and lambda = 0 this is eq. 3 of the QF paper (`qf.solve`). A covariance estimated on
generic text makes the change smallest where generic keys live, so unrelated inputs move least.

Both are solved by one Cholesky factorisation, O(k^3 / 3), with no eigendecomposition. The jitter eps
(`JITTER` times K's mean diagonal, raised tenfold while the factorisation fails) stands in for the
pseudo-inverse when rows repeat or nearly do, as they do once earlier facts' rows are held: directions of
K far above eps are inverted as they are, directions near or below it are damped instead of amplified.
Where no row is that close to the others' span the jitter changes nothing that matters (method "exact");
otherwise the method is "jittered", and the residual says how well the rows are met.

`KeySolver` keeps the rows of every round and re-solves from W0 over all of them (QF's accumulated
re-solve), growing K by the new rows only. When the rows outnumber what the dual form can hold
(`dual_rows`, by default d_mlp: beyond it K is singular and exact constraints no longer exist), it
switches once to the primal form and from then on adds each round by recursive least squares:

    P  = (lambda C + U'^T S U')^-1                         [d_mlp, d_mlp], from every row so far, once
    G  = S_m^-1 + U_m P U_m^T,  E = dW U_m^T + R_m^T      per round of m rows (Woodbury)
    dW <- dW - E G^-1 U_m P,    P <- P - P U_m^T G^-1 U_m P

which is the same minimiser as solving all rows at once. With lambda = 0 the primal form is the
least-squares solution (what the pseudo-inverse gives), with a jitter of `PRIMAL_JITTER` trace/d
added to lambda C to keep P finite.

`incremental=True` (dual form) keeps the Cholesky factor L of A = K + D and dW itself, and
extends both by each round's m rows instead of re-factorising k rows (O(k^2 m + k m d_mlp + d_mlp^2 m)
a round, against O(k^3 + k d_mlp d_model)): with Z = L^-1 A_om and the new rows' residual under the
current change E = dW U_m^T + R_m^T,

    L <- [[L, 0], [Z^T, chol(A_mm - Z^T Z)]],   dW <- dW - (S^-1 E^T)^T (U_m - Z'^T U_o) C^-1,  Z' = L^-T Z

(S = A_mm - Z^T Z), the same minimiser as factorising A whole. D is each round's jitter, JITTER times
K's mean diagonal on the new rows (raised tenfold while S does not factorise), plus lambda / s_t with a
ridge (K + lambda S^-1 is the ridge solve's system: the ridge is one more diagonal), kept per row so that
the factor can be rebuilt. Only the keys (float32), residuals, |targets| and jitters are state: L, dW
and B = U C^-1 (held in memory, so that a round applies C^-1 to its own rows only) are rebuilt from them on
load (one factorisation), so the state grows by 4 d_mlp + 8 d_model + 24
bytes a row (48,152 on Qwen2.5-Coder-1.5B) up to `dual_rows`; past them the primal form's state is a fixed
8 d_mlp^2 + 8 d_model d_mlp bytes. Its residual is that of the last round's rows (an earlier row moves
only by its jitter's share); its cond, that of the round's new block (its Schur complement).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from transformers_qf.solve.exact import CHUNK, SolveError

PRIMAL_JITTER = 1e-8
SYMMETRIZE_EVERY = 32  # primal rounds between re-symmetrising P against rounding
JITTER = 1e-10  # of K's mean diagonal, added before the dual form's Cholesky factorisation
JITTER_TRIES = 6  # tenfold rises of the jitter before the dual solve gives up


@dataclass
class KeySolveReport:
    rows: int
    method: str  # "exact", "jittered" or "ridge" (or a primal form's name)
    cond: float  # of the system factorised, estimated as (largest / smallest Cholesky pivot)^2: a lower bound
    residual: float  # max_t |W' u'_t + v'_t - target_t| / |target_t|, W' in float64
    delta_rel: float  # ||W' - W0||_F / ||W0||_F
    seconds: float
    ridge: float
    covariance: bool
    jitter: float = 0.0  # added to the factorised system's diagonal, relative to its mean diagonal

    @classmethod
    def empty(cls, ridge: float, covariance: bool) -> "KeySolveReport":
        return cls(0, "none", 1.0, 0.0, 0.0, 0.0, ridge, covariance)

    def as_dict(self) -> dict:
        return asdict(self)


class KeyMetric:
    """C^-1 applied to keys, from a key covariance C [d_mlp, d_mlp] shrunk towards its mean variance.

    C_s = (1 - shrink) C + shrink (trace C / d) I keeps C_s invertible when C was estimated from fewer
    samples than d_mlp; shrink = 1 is QF's plain metric up to a scale.

    null_space > 0 replaces C_s^-1 by P = V V^T, the projector onto the eigenvectors of C whose variance is
    below null_space times C's mean variance (AlphaEdit's null space of the preserved keys; shrink is not
    used). The dual solve then gives dW = dW P: the change reads keys only through the directions generic
    keys barely use, so dW u ~ 0 for those keys, while every edited row is still met (as far as its key
    reaches into those directions; the residual says how far). P is singular, so this metric has no primal
    form (at most d_mlp rows).
    """

    def __init__(self, covariance: torch.Tensor, shrink: float = 0.1, null_space: float = 0.0):
        if not 0.0 < shrink <= 1.0:
            raise SolveError(f"covariance shrink must be in (0, 1], got {shrink}")
        if null_space < 0:
            raise SolveError(f"null-space threshold must be >= 0 (0: none), got {null_space:g}")
        C = covariance.to(torch.float64)
        d = C.shape[0]
        scale = torch.trace(C) / d
        self.scale, self.shrink, self.null_space = float(scale), shrink, null_space
        self.factor: torch.Tensor | None = None
        self.basis: torch.Tensor | None = None  # null_space: V [d_mlp, r], orthonormal
        if null_space:
            variances, vectors = torch.linalg.eigh(C / scale)
            self.basis = vectors[:, variances < null_space].contiguous()
            if self.basis.shape[1] == 0:
                raise SolveError(f"no direction of the key covariance has a variance below {null_space:g} times "
                                 f"its mean (the smallest is {float(variances[0]):.2e}): raise the null-space threshold")
            return
        C = (1.0 - shrink) * C + shrink * scale * torch.eye(d, dtype=torch.float64, device=C.device)
        self.factor = torch.linalg.cholesky(C / scale)  # unit mean variance: lambda is on the scale of |u|^2 / d

    @property
    def null_rank(self) -> int:
        """The dimension of the null space the change is confined to (0: no projection)."""
        return 0 if self.basis is None else self.basis.shape[1]

    def apply(self, keys: torch.Tensor) -> torch.Tensor:
        """keys C_s^-1 (rows), [k, d_mlp] float64 on the keys' device, with C_s at unit mean variance; with a
        null space, keys P."""
        if self.basis is not None:
            k = keys.to(self.basis)
            return ((k @ self.basis) @ self.basis.T).to(keys.device)
        return torch.cholesky_solve(keys.to(self.factor).T, self.factor).T.to(keys.device)

    def to(self, device: torch.device | str) -> "KeyMetric":
        """This metric with its factor (or basis) on `device` (itself when it is there already; copies are kept,
        one a device, so that the solvers of several layers or a reset do not copy it again)."""
        device = torch.device(device)
        held = self.basis if self.basis is not None else self.factor
        if held.device == device:
            return self
        copies = self.__dict__.setdefault("_copies", {})
        if str(device) not in copies:
            moved = KeyMetric.__new__(KeyMetric)
            moved.scale, moved.shrink, moved.null_space = self.scale, self.shrink, self.null_space
            moved.factor = self.factor.to(device) if self.factor is not None else None
            moved.basis = self.basis.to(device) if self.basis is not None else None
            copies[str(device)] = moved
        return copies[str(device)]


class KeySolver:
    """The update above over rows that arrive in rounds; every solve starts from W0.

    W0: [d_model, d_mlp] the original weight (kept as given, never changed); metric: None for QF's
    plain metric (C = I) or a KeyMetric; ridge: lambda (0: exact); dual_rows: the most rows solved in
    the dual form (default d_mlp) before switching to the primal one.

    ridge_relative: `ridge` is a multiple of the first round's mean s_t |u_t|^2 in the metric (the mean
    diagonal of the dual system S^1/2 K S^1/2), fixed at that round: one number then weighs the change alike
    at layers whose keys differ in scale (on Qwen2.5-Coder-1.5B layer 4's mean is ~16 times layer 8's).
    `self.ridge` is lambda itself once resolved (0 before the first round); `ridge_given` is what was given.
    """

    def __init__(self, W0: torch.Tensor, metric: KeyMetric | None = None, ridge: float = 0.0,
                 dual_rows: int | None = None, incremental: bool = False, ridge_relative: bool = False):
        if ridge < 0:
            raise SolveError(f"ridge must be >= 0, got {ridge}")
        self.incremental = incremental
        self.W0 = W0
        self.metric = metric.to(W0.device) if metric is not None else None  # every product on the weight's device
        self.ridge_given, self.ridge_relative = ridge, ridge_relative
        self.ridge = 0.0 if ridge_relative else ridge
        self.dual_rows = W0.shape[1] if dual_rows is None else dual_rows
        self.count = 0
        self.primal: _Primal | None = None
        f64 = dict(dtype=torch.float64, device=W0.device)
        # With a metric, B holds what the solve needs in float64 and U' is only read to check the rows as met by
        # the stored weight: float32 holds it exactly (the model's activations are bf16 or float32) in half the memory
        self.key_dtype = torch.float64 if metric is None else torch.float32
        self.keys = torch.zeros(0, W0.shape[1], dtype=self.key_dtype, device=W0.device)  # U'
        self.B = torch.zeros(0, W0.shape[1], **f64)  # U' C^-1
        self.R = torch.zeros(0, W0.shape[0], **f64)
        self.target_norm = torch.zeros(0, **f64)
        self.weights = torch.zeros(0, **f64)
        self.K = torch.zeros(0, 0, **f64)
        self.coef: torch.Tensor | None = None  # the last dual solve's coefficients: dW = -coef^T B
        self._inc: _Incremental | None = _Incremental(self) if incremental else None

    @property
    def rows(self) -> int:
        return self.count

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor the solver goes on from (not W0, which is the model's weight as loaded)."""
        out = {"count": torch.tensor(self.count)}
        if self.ridge_relative:  # resolved at the first round: the rows that set it may no longer be kept
            out["ridge"] = torch.tensor(self.ridge, dtype=torch.float64)
        if self._inc is not None and self.primal is None:
            return {**out, "keys": self.keys, "R": self.R, "target_norm": self.target_norm, "weights": self.weights,
                    "jitter": self._inc.jitters}
        if self.primal is not None:
            p = self.primal
            keys, residuals, target_norm = p.last
            return {**out, "P": p.P, "dW": p.dW, "lam": torch.tensor(p.lam, dtype=torch.float64),
                    "last_keys": keys, "last_R": residuals, "last_target_norm": target_norm}
        out.update(keys=self.keys, R=self.R, target_norm=self.target_norm, weights=self.weights, K=self.K)
        if self.metric is not None:
            out["B"] = self.B
        if self.coef is not None:
            out["coef"] = self.coef
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Go on from a `state_dict` of a solver made with the same W0, metric and ridge.

        States saved before the Cholesky solve also hold BB (B B^T), which is no longer needed.
        """
        f64 = dict(dtype=torch.float64, device=self.W0.device)
        get = {k: v.to(**f64) for k, v in state.items() if k not in ("count", "BB", "keys", "ridge")}
        self.count = int(state["count"])
        if self.ridge_relative and self.count:
            if "ridge" not in state:
                raise SolveError("this state was saved by a solver with an absolute ridge: load it into one made "
                                 "without ridge_relative, or start over")
            self.ridge = float(state["ridge"])
        if "P" in get:
            self.primal = _Primal.restored(self, get)
            self.keys = self.B = self.R = self.K = None
            return
        self.primal = None
        self.keys = state["keys"].to(dtype=self.key_dtype, device=self.W0.device)
        if self._inc is not None:
            if "jitter" not in state:
                raise SolveError("this state was saved by a full re-solve: load it into a solver made without "
                                 "incremental, or start over")
            self.R, self.target_norm, self.weights = (get[k] for k in ("R", "target_norm", "weights"))
            self._inc.rebuild(get["jitter"])
            return
        self.R, self.target_norm, self.weights, self.K = (get[k] for k in ("R", "target_norm", "weights", "K"))
        self.B = get["B"] if self.metric is not None else self.keys
        self.coef = get.get("coef")

    def outputs_w0(self, keys: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """W0 u'_t + v'_t in float64, [k, d_model]."""
        out = v.to(torch.float64).clone()
        for c in range(0, self.W0.shape[1], CHUNK):
            out.addmm_(keys[:, c:c + CHUNK].to(torch.float64), self.W0[:, c:c + CHUNK].to(torch.float64).T)
        return out

    @torch.no_grad()
    def change(self, keys: torch.Tensor) -> torch.Tensor:
        """dW u'_t under the last solve, exactly (float64, not the weight's rounding), [m, d_model]."""
        keys = keys.to(dtype=torch.float64, device=self.W0.device)
        if self.primal is not None:
            return keys @ self.primal.dW.T
        if self._inc is not None:
            return keys @ self._inc.dW.T
        if self.coef is None:
            return torch.zeros(len(keys), self.W0.shape[0], dtype=torch.float64, device=self.W0.device)
        return -(keys @ self.B.T) @ self.coef

    @torch.no_grad()
    def add(self, keys: torch.Tensor, residuals: torch.Tensor, targets_norm: torch.Tensor,
            weights: torch.Tensor | None = None) -> None:
        """Append rows: keys u' [m, d_mlp], residuals r [m, d_model], |target_t| [m], significances [m] (> 0).

        The keys are a layer's activations, exact in float32; with a metric they are kept in float32.
        """
        f64 = dict(dtype=torch.float64, device=self.W0.device)
        keys, residuals = keys.to(**f64), residuals.to(**f64)
        m = keys.shape[0]
        if m == 0:
            raise SolveError("no rows to add: every position was dropped (significance 0?)")
        if not (torch.isfinite(keys).all() and torch.isfinite(residuals).all()):
            raise SolveError("the recorded rows hold non-finite values: record again in float32 (--dtype float32)")
        weights = torch.ones(m, **f64) if weights is None else weights.to(**f64)
        if self.ridge_relative and self.count == 0:
            self.ridge = self.ridge_given * float((weights * self._metric_norms(keys)).mean())
        if self.primal is None and self.count + m > self.dual_rows and self.metric is not None \
                and self.metric.factor is None:  # checked before any state changes: the solver stays usable
            raise SolveError(f"{self.count + m} rows: a null-space metric solves at most {self.dual_rows} rows (it "
                             "has no primal form); edit fewer facts a layer or drop the null-space projection")
        self.count += m
        if self.primal is None and self.count > self.dual_rows:
            self.B = self.K = self.coef = None  # the primal form is built without them: their memory first
            self._inc = None
            self.primal = _Primal(self)
            self.keys = self.R = None  # the dual form's rows are folded into P and dW
        if self.primal is not None:
            self.primal.add(keys, residuals, targets_norm.to(**f64), weights)
            return
        if self._inc is not None:
            self._inc.add(keys, residuals, weights)
            self.keys = torch.cat([self.keys, keys.to(self.key_dtype)])
            self.R = torch.cat([self.R, residuals])
            self.target_norm = torch.cat([self.target_norm, targets_norm.to(**f64)])
            self.weights = torch.cat([self.weights, weights])
            return
        B = keys if self.metric is None else self.metric.apply(keys)
        cross = keys @ self.B.T  # [m, k]: new keys against old metric keys (K is symmetric)
        new = B @ keys.T
        self.K = torch.cat([torch.cat([self.K, cross.T], 1), torch.cat([cross, (new + new.T) / 2], 1)])
        self.keys = torch.cat([self.keys, keys.to(self.key_dtype)])
        self.B = torch.cat([self.B, B])
        self.R = torch.cat([self.R, residuals])
        self.target_norm = torch.cat([self.target_norm, targets_norm.to(**f64)])
        self.weights = torch.cat([self.weights, weights])

    def _metric_norms(self, keys: torch.Tensor) -> torch.Tensor:
        """|u_t|^2 in the metric, u^T C^-1 u [m] (K's diagonal for these rows)."""
        metric_keys = keys if self.metric is None else self.metric.apply(keys)
        return (metric_keys * keys).sum(dim=1)

    @torch.no_grad()
    def solve_into(self, W: torch.Tensor) -> KeySolveReport:
        """W <- W0 + dW over every row so far (W: the weight in the model, any dtype)."""
        t0 = time.perf_counter()
        if self.rows == 0:
            W.copy_(self.W0)
            return KeySolveReport.empty(self.ridge, self.metric is not None)
        if self.primal is not None:
            return self.primal.solve_into(W, t0)
        if self._inc is not None:
            return self._inc.solve_into(W, t0)
        coef, method, cond, jitter = self._coefficients()  # [k, d_model]
        self.coef = coef
        seen = torch.zeros_like(self.R)  # (W' - W0) u'_t as stored
        w0_sq = torch.zeros((), dtype=torch.float64, device=W.device)
        delta_sq = torch.zeros((), dtype=torch.float64, device=W.device)
        for c in range(0, W.shape[1], CHUNK):
            block0 = self.W0[:, c:c + CHUNK].to(torch.float64)
            delta = coef.T @ self.B[:, c:c + CHUNK]
            W[:, c:c + CHUNK].copy_(block0 - delta)
            seen.addmm_(self.keys[:, c:c + CHUNK].to(torch.float64), (W[:, c:c + CHUNK].to(torch.float64) - block0).T)
            w0_sq += block0.square().sum()
            delta_sq += delta.square().sum()
        residual = (torch.linalg.norm(seen + self.R, dim=1) / self.target_norm).max()
        residual, delta_sq, w0_sq = torch.stack([residual, delta_sq, w0_sq]).tolist()
        return KeySolveReport(self.rows, method, cond, residual, (delta_sq / w0_sq) ** 0.5,
                              time.perf_counter() - t0, self.ridge, self.metric is not None, jitter)

    def _coefficients(self) -> tuple[torch.Tensor, str, float, float]:
        """coef [k, d_model] with dW = -coef^T B; the method, the factorised system's cond and its jitter."""
        if self.ridge > 0:
            s = self.weights.sqrt()
            M = s[:, None] * self.K * s[None, :]
            M.diagonal().add_(self.ridge)
            L, jitter = _jittered_cholesky(M, 0.0)
            coef = s[:, None] * torch.cholesky_solve(s[:, None] * self.R, L)
            return coef, "ridge", _pivot_cond(L), jitter
        L, jitter = _jittered_cholesky(self.K.clone(), JITTER)
        added = jitter * float(self.K.diagonal().mean())
        # each pivot is a row's squared distance (in the metric) from the earlier rows' span, plus the jitter
        method = "exact" if float(L.diagonal().min()) ** 2 > 1e4 * added else "jittered"
        return torch.cholesky_solve(self.R, L), method, _pivot_cond(L), jitter


def _jittered_cholesky(M: torch.Tensor, jitter: float, scale: float | None = None) -> tuple[torch.Tensor, float]:
    """The Cholesky factor of M + j scale I for the first j of jitter, 10 jitter, ... that factorises
    (scale: M's mean diagonal unless given).

    M (symmetric, float64) is changed in place. Returns the factor and j.
    """
    scale = float(M.diagonal().mean()) if scale is None else scale
    tries = [jitter] + [max(jitter, JITTER) * 10 ** i for i in range(1, JITTER_TRIES + 1)]
    added = 0.0
    for j in tries:
        M.diagonal().add_((j - added) * scale)
        added = j
        L, info = torch.linalg.cholesky_ex(M)
        if int(info) == 0:
            return L, j
    raise SolveError(f"the rows' key system does not factorise even with a jitter of {added:.0e} of its mean "
                     "diagonal: the recorded keys are not finite or wildly scaled; record in float32 (--dtype float32) "
                     "or solve with a ridge (--ridge)")


def _pivot_cond(L: torch.Tensor) -> float:
    pivots = L.diagonal()
    return float((pivots.max() / pivots.min()) ** 2)


class _Incremental:
    """The dual form's Cholesky factor L of K + D and the change dW, extended a round at a time (module doc)."""

    def __init__(self, solver: KeySolver):
        self.solver = solver
        f64 = dict(dtype=torch.float64, device=solver.W0.device)
        self.L = torch.zeros(0, 0, **f64)
        self.B = torch.zeros(0, solver.W0.shape[1], **f64)  # U C^-1 of every row: memory only, rebuilt on load
        self.dW = torch.zeros(solver.W0.shape, **f64)
        self.jitters = torch.zeros(0, **f64)  # D's diagonal, one a row
        self.diag_sum = 0.0  # of K, for the jitter's scale
        self.last = 0  # rows added by the last round
        self.method, self.cond, self.jitter = "none", 1.0, 0.0

    def _apply(self, keys: torch.Tensor) -> torch.Tensor:
        metric = self.solver.metric
        return keys if metric is None else metric.apply(keys)

    def _cross(self, B_new: torch.Tensor) -> torch.Tensor:
        """K_om = U_o C^-1 U_m^T = U_o B_m^T, [k, m], a block of stored (float32) keys at a time in float64."""
        keys = self.solver.keys
        out = torch.empty(len(keys), len(B_new), dtype=torch.float64, device=B_new.device)
        for c in range(0, len(keys), CHUNK):
            torch.mm(keys[c:c + CHUNK].to(torch.float64), B_new.T, out=out[c:c + CHUNK])
        return out

    def add(self, keys: torch.Tensor, residuals: torch.Tensor, weights: torch.Tensor) -> None:
        """keys [m, d_mlp] float64 (rounded as they will be stored), residuals [m, d_model], significances [m]."""
        keys = keys.to(self.solver.key_dtype).to(torch.float64)  # the rows as stored: a rebuild gives the same L
        B = self._apply(keys)
        new = B @ keys.T
        new = (new + new.T) / 2
        self.diag_sum += float(new.diagonal().sum())
        ridge = self.solver.ridge / weights  # the ridge solve's (K + lambda S^-1): one more diagonal, as the jitter
        new.diagonal().add_(ridge)
        k = len(self.L)
        scale = self.diag_sum / (k + len(keys))
        if k:
            cross = self._cross(B)  # [k, m]
            Z = torch.linalg.solve_triangular(self.L, cross, upper=False)  # L^-1 A_om
            S = new - Z.T @ Z
        else:
            Z, S = None, new
        L_new, j = _jittered_cholesky(S, JITTER, scale)
        self.jitter = j
        if self.solver.ridge > 0:
            self.method = "ridge"
        else:
            self.method = "exact" if float(L_new.diagonal().min()) ** 2 > 1e4 * j * scale else "jittered"
        self.cond = _pivot_cond(L_new)
        E = self.dW @ keys.T + residuals.T  # [d_model, m]: the new rows' residuals under the change so far
        coef = torch.cholesky_solve(E.T, L_new)  # S^-1 E^T, [m, d_model]
        if Z is None:
            projected = B
            self.L = L_new
        else:  # (U_m - Z'^T U_o) C^-1 = B_m - Z'^T B_o, Z' = A_oo^-1 A_om
            Zp = torch.linalg.solve_triangular(self.L.T, Z, upper=True)
            projected = B - Zp.T @ self.B
            self.L = torch.cat([torch.cat([self.L, torch.zeros(k, len(keys), dtype=self.L.dtype, device=self.L.device)],
                                          1), torch.cat([Z.T, L_new], 1)])
        self.dW -= coef.T @ projected
        self.B = torch.cat([self.B, B])
        self.jitters = torch.cat([self.jitters, j * scale + ridge])
        self.last = len(keys)

    def rebuild(self, jitters: torch.Tensor) -> None:
        """L and dW from the stored rows (a loaded state): one factorisation of K + D."""
        s = self.solver
        keys = s.keys
        B = torch.cat([self._apply(keys[c:c + CHUNK].to(torch.float64)) for c in range(0, len(keys), CHUNK)])
        K = self._cross(B)
        K = (K + K.T) / 2
        self.diag_sum = float(K.diagonal().sum())
        K.diagonal().add_(jitters)
        self.L = torch.linalg.cholesky(K)
        del K
        self.dW = -(torch.cholesky_solve(s.R, self.L).T @ B)
        self.B = B
        self.jitters = jitters.clone()
        self.last = 0
        self.method = "rebuilt"

    def solve_into(self, W: torch.Tensor, t0: float) -> KeySolveReport:
        s = self.solver
        seen_keys, residuals = s.keys[len(s.keys) - self.last:].to(torch.float64), s.R[len(s.R) - self.last:]
        w0_sq = torch.zeros((), dtype=torch.float64, device=W.device)
        seen = torch.zeros_like(residuals)
        for c in range(0, W.shape[1], CHUNK):
            block0 = s.W0[:, c:c + CHUNK].to(torch.float64)
            W[:, c:c + CHUNK].copy_(block0 + self.dW[:, c:c + CHUNK])
            seen.addmm_(seen_keys[:, c:c + CHUNK], (W[:, c:c + CHUNK].to(torch.float64) - block0).T)
            w0_sq += block0.square().sum()
        norms = s.target_norm[len(s.target_norm) - self.last:]
        residual = (torch.linalg.norm(seen + residuals, dim=1) / norms).max() if self.last else torch.zeros(())
        residual, delta_sq, w0_sq = torch.stack([residual.to(w0_sq), self.dW.square().sum(), w0_sq]).tolist()
        return KeySolveReport(s.rows, f"incremental, {self.method}", self.cond, residual, (delta_sq / w0_sq) ** 0.5,
                              time.perf_counter() - t0, s.ridge, s.metric is not None, self.jitter)


class _Primal:
    """The primal form of a KeySolver's problem, built once from its dual rows, then extended per round."""

    @classmethod
    def restored(cls, solver: KeySolver, state: dict[str, torch.Tensor]) -> "_Primal":
        primal = cls.__new__(cls)
        primal.solver, primal.P, primal.dW, primal.lam = solver, state["P"], state["dW"], float(state["lam"])
        primal.rounds = 0
        primal.method = primal._method_name()
        primal.last = (state["last_keys"], state["last_R"], state["last_target_norm"])
        return primal

    def _method_name(self) -> str:
        return "ridge (primal)" if self.solver.ridge > 0 else f"least squares (primal, jitter {self.lam:.1e})"

    def __init__(self, solver: KeySolver):
        self.solver = solver
        f64 = dict(dtype=torch.float64, device=solver.W0.device)
        d = solver.W0.shape[1]
        keys, w, R = solver.keys, solver.weights, solver.R
        # U'^T S U' and R^T S U', a block of rows at a time: no float64 copy of every key at once
        M = torch.zeros(d, d, **f64)
        RSU = torch.zeros(R.shape[1], d, **f64)
        for c in range(0, len(keys), CHUNK):
            block = keys[c:c + CHUNK].to(torch.float64)
            M.addmm_(block.T * w[c:c + CHUNK], block)
            RSU.addmm_(R[c:c + CHUNK].T * w[c:c + CHUNK], block)
        lam = solver.ridge if solver.ridge > 0 else PRIMAL_JITTER * float(torch.trace(M)) / d
        self.lam = lam
        if solver.metric is None:
            M.diagonal().add_(lam)
        else:
            M.addmm_(solver.metric.factor, solver.metric.factor.T, alpha=lam)
        self.P = torch.cholesky_inverse(torch.linalg.cholesky(M))
        del M
        self.dW = -RSU @ self.P  # -R^T S U' P
        self.rounds = 0
        self.method = self._method_name()
        self.last = (keys[-1:].to(torch.float64), R[-1:], solver.target_norm[-1:])

    def add(self, keys, residuals, target_norm, weights) -> None:
        PU = self.P @ keys.T  # [d, m]
        G = torch.diag(1.0 / weights) + keys @ PU
        E = self.dW @ keys.T + residuals.T  # [d_model, m]: the new rows' residuals under dW
        gain = torch.linalg.solve(G, PU.T)  # G^-1 U_m P, [m, d]
        self.dW.addmm_(E, gain, alpha=-1.0)
        self.P.addmm_(PU, gain, alpha=-1.0)  # P U^T G^-1 U P: symmetric but for rounding
        self.rounds += 1
        if self.rounds % SYMMETRIZE_EVERY == 0:  # a transposed copy costs more than the update itself on a CPU
            self.P.add_(self.P.T.clone()).mul_(0.5)
        self.last = (keys, residuals, target_norm)

    def solve_into(self, W: torch.Tensor, t0: float) -> KeySolveReport:
        s = self.solver
        keys, residuals, target_norm = self.last
        seen = torch.zeros_like(residuals)
        w0_sq = torch.zeros((), dtype=torch.float64, device=W.device)
        for c in range(0, W.shape[1], CHUNK):
            block0 = s.W0[:, c:c + CHUNK].to(torch.float64)
            W[:, c:c + CHUNK].copy_(block0 + self.dW[:, c:c + CHUNK])
            seen.addmm_(keys[:, c:c + CHUNK], (W[:, c:c + CHUNK].to(torch.float64) - block0).T)
            w0_sq += block0.square().sum()
        residual = (torch.linalg.norm(seen + residuals, dim=1) / target_norm).max()
        residual, delta_sq, w0_sq = torch.stack([residual, self.dW.square().sum(), w0_sq]).tolist()
        # residual: over the last round's rows only (the earlier rows are no longer kept)
        return KeySolveReport(s.rows, self.method, float("nan"), residual, (delta_sq / w0_sq) ** 0.5,
                              time.perf_counter() - t0, s.ridge, s.metric is not None)
