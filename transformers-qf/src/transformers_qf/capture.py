"""Record the activations of one MLP layer in a single forward, and stop the forward there.

    with capture(parts) as rec:
        model(input_ids)          # stops after layer L's MLP; nothing above it runs
    rec.u, rec.v                  # [n, d_mlp], [n, d_model]

Hooks are always removed on exit, also when the forward raises.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .architectures import LayerParts


class StopForward(Exception):
    """Raised by the capture hook to end the forward after the recorded layer."""


@dataclass
class Recording:
    """Activations at every position of one sequence (batch dimension removed).

    v: [n, d_model] residual entering the MLP; x: [n, d_model] MLP input (after the norm);
    u: [n, d_mlp] input of down_proj; y: [n, d_model] MLP output.
    """

    v: torch.Tensor | None = None
    x: torch.Tensor | None = None
    u: torch.Tensor | None = None
    y: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)


def _first(t):
    return t[0] if isinstance(t, tuple) else t


@contextmanager
def capture(parts: LayerParts, stop: bool = True):
    rec = Recording()

    def on_norm(_module, args):
        rec.v = _first(args)[0].detach()

    def on_mlp_in(_module, args):
        rec.x = _first(args)[0].detach()

    def on_down(_module, args):
        rec.u = _first(args)[0].detach()

    def on_mlp_out(_module, _args, output):
        rec.y = _first(output)[0].detach()
        if stop:
            raise StopForward

    handles = [
        parts.mlp_norm.register_forward_pre_hook(on_norm),
        parts.mlp.register_forward_pre_hook(on_mlp_in),
        parts.down.register_forward_pre_hook(on_down),
        parts.mlp.register_forward_hook(on_mlp_out),
    ]
    try:
        yield rec
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def record(model: torch.nn.Module, parts: LayerParts, input_ids: torch.Tensor, stop: bool = True) -> Recording:
    """One teacher-forced forward of `input_ids` ([n]); returns the activations at layer `parts`."""
    device = next(model.parameters()).device
    with capture(parts, stop=stop) as rec:
        model(input_ids=input_ids.view(1, -1).to(device), use_cache=False)
    for name in ("v", "x", "u", "y"):
        t = getattr(rec, name)
        if t is not None and not torch.isfinite(t).all():
            raise FloatingPointError(
                f"non-finite values in the recorded {name} at layer {parts.index}: "
                "try float32 (--dtype float32) or another layer"
            )
    return rec
