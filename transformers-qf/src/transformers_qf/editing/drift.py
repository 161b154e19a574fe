"""How far an edited layer's output has moved at the rows an edit did not constrain.

An optimised target (gradtarget.py) is fitted with every other row of its sequence held at its output
of the moment. A weight edit moves those rows too (this fact's edit, and every later one), so what
the target was fitted for can stop holding. `DriftWatch` keeps, per edit, the keys u and the residual
entering the MLP v of those rows, and their layer output y = W u + v under the weight W of the moment
the edit was fitted (in float32, so that an unchanged weight measures 0, not bf16's rounding; the keys
are kept in the model's own dtype, which holds them exactly: half the memory under bf16); after each solve
it measures |W' u + v - y| / |y| at them:

    watch = DriftWatch()
    watch.add(u, v, W)            # the unconstrained rows of the fact about to be edited, the weight now
    ... solve ...
    watch.measure(W)              # {"drift_own": ..., "drift_earlier": ..., "drift_earlier_max": ...}

Past `max_rows` earlier rows the earlier edits are measured at an evenly strided subset of each edit's rows
(every s-th row, s = ceil(earlier rows / max_rows); "drift_earlier_rows" says how many): the watch keeps a
constant cost an edit instead of one that grows with the facts (at 170 facts of 5 layers every row took 4.9 s
of a 36 s edit on 2 CPU cores).

The keys of a single edited layer do not depend on its own down_proj, so the stored keys stay exact;
with several layers edited in turn, a later layer's keys move with the earlier edits and the measure
is the drift at the keys as recorded.
"""

from __future__ import annotations

import math

import torch

CHUNK_ROWS = 4096
MAX_ROWS = 2048  # earlier rows measured after an edit, at most


class DriftWatch:
    def __init__(self, max_rows: int = MAX_ROWS):
        self.max_rows = max_rows
        self.keys: list[torch.Tensor] = []  # per edit, [r, d_mlp] in the model's dtype
        self.base: list[torch.Tensor] = []  # per edit, [r, d_model] float32: v
        self.fitted: list[torch.Tensor] = []  # per edit, [r, d_model] float32: y as fitted

    @torch.no_grad()
    def add(self, u: torch.Tensor, v: torch.Tensor, W: torch.Tensor) -> None:
        """The rows of the edit about to be solved: keys [r, d_mlp], v [r, d_model], and the weight before it."""
        keys, base = u.detach(), v.detach().float()  # on the model's device: no transfer an edit
        self.keys.append(keys)
        self.base.append(base)
        self.fitted.append(base + keys.float() @ W.detach().float().to(keys.device).T)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Each edit's rows as they are kept ("keys.3": edit 3's keys), not copied into one tensor: at a hundred
        edits of several layers the copies would take gigabytes while the state is written."""
        out = {}
        for i, tensors in enumerate(zip(self.keys, self.base, self.fitted)):
            out.update({f"{name}.{i}": t for name, t in zip(("keys", "base", "fitted"), tensors)})
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Either form: per edit, or (states saved before 2026-11-25) concatenated with the edits' "sizes"."""
        if "sizes" in state:
            sizes = state["sizes"].tolist()
            self.keys, self.base, self.fitted = (list(state[name].split(sizes)) for name in ("keys", "base", "fitted"))
        else:
            edits = len([k for k in state if k.startswith("keys.")])
            self.keys, self.base, self.fitted = ([state[f"{name}.{i}"] for i in range(edits)]
                                                 for name in ("keys", "base", "fitted"))
        self.base, self.fitted = [t.float() for t in self.base], [t.float() for t in self.fitted]

    @torch.no_grad()
    def measure(self, W: torch.Tensor) -> dict:
        """Mean relative drift at the last edit's rows, and mean and max at the earlier edits' rows (all of them, or
        a strided subset past `max_rows`)."""
        if not self.keys:
            return {}
        weight = W.detach().float()
        own = self._drift(weight, len(self.keys) - 1)
        stride = max(1, math.ceil(sum(len(k) for k in self.keys[:-1]) / self.max_rows))
        earlier = torch.cat([self._drift(weight, i, stride) for i in range(len(self.keys) - 1)]
                            or [torch.zeros(0, device=weight.device)])
        out = {"drift_own": _mean(own)}
        if len(earlier):
            out.update(drift_earlier=_mean(earlier), drift_earlier_max=float(earlier.max()),
                       drift_earlier_rows=len(earlier))
        return out

    def _drift(self, weight: torch.Tensor, i: int, stride: int = 1) -> torch.Tensor:
        keys, base, fitted = (t[::stride].to(weight.device)  # loaded: on the CPU
                              for t in (self.keys[i], self.base[i], self.fitted[i]))
        out = []
        for c in range(0, len(keys), CHUNK_ROWS):
            y = base[c:c + CHUNK_ROWS] + keys[c:c + CHUNK_ROWS].float() @ weight.T
            ref = fitted[c:c + CHUNK_ROWS]
            out.append(torch.linalg.norm(y - ref, dim=1) / torch.linalg.norm(ref, dim=1).clamp_min(1e-12))
        return torch.cat(out) if out else torch.zeros(0, device=weight.device)


def _mean(values: torch.Tensor) -> float:
    return float(values.mean()) if len(values) else 0.0
