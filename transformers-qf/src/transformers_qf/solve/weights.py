"""The one object that writes an MLP projection's weight and keeps its original for revert.

    w = OriginalWeight(parts.down)          # takes a copy of the weight as it is now: W0
    w.load(w_prime)                          # the weight := a given matrix (cast to its dtype and device)
    update.apply_(w.restore())               # the weight := W0, then += A B in place (solve.exact.Update)
    w.restore()                              # the weight := W0 again
    w.is_original()                          # bit for bit

Every flow that changes a down_proj (the QF session, the learner behind `qf learn`, the solves, FT-L, QF2,
the QFt conversion's closed-form start) goes through one of these, so that W0 is copied once a layer and
every revert is the same copy. `Update` is the one in-place write of a rank-k change, W += A B, in float64 a block of columns at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHUNK = 2048  # columns of W handled at a time in float64


class OriginalWeight:
    """The weight of `module` (an nn.Linear, e.g. down_proj: [d_model, d_mlp]) and W0, its value at construction.

    W0 stays where the weight lives (one extra copy of one matrix); `original` is that copy (never written)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.original = module.weight.detach().clone()

    @property
    def weight(self) -> torch.Tensor:
        """The weight's storage, to write in place (what the solves' `apply_` take)."""
        return self.module.weight.data

    @torch.no_grad()
    def restore(self) -> torch.Tensor:
        """The weight := W0; returns the weight's storage."""
        self.weight.copy_(self.original)
        return self.weight

    @torch.no_grad()
    def load(self, value: torch.Tensor) -> torch.Tensor:
        """The weight := `value` (same shape; cast to the weight's dtype and device); returns its storage."""
        if tuple(value.shape) != tuple(self.weight.shape):
            raise ValueError(f"a weight of shape {tuple(value.shape)} cannot replace one of {tuple(self.weight.shape)}")
        self.weight.copy_(value.to(self.weight.device, self.weight.dtype))
        return self.weight

    def is_original(self) -> bool:
        """Whether the weight is W0, bit for bit."""
        return bool(torch.equal(self.weight, self.original))


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
