"""The QF2 block (seed 004, section 2.3) and its blending with the original MLP during QFt.

At layer L the MLP becomes a *firing* block with no residual around it:

    out = down_proj(sigmoid(beta * up_proj(x)))              x = post_attention_layernorm(v)

While a model is being converted, the layer's output blends the original and the firing block, both
reading the same up_proj and down_proj:

    out = alpha * (v + down(act(gate(x)) * up(x))) + (1 - alpha) * down(sigmoid(beta * up(x)))
        = alpha * v + down(alpha * act(gate(x)) * up(x) + (1 - alpha) * sigmoid(beta * up(x)))

(one down_proj product, by linearity). alpha = c ** step, and 0 once it falls below 0.01.

How it patches a stock model: the layer's `mlp` is swapped for `QF2MLP`, which keeps the original
gate/up/down modules under their own names (the state dict is the stock one), and a forward hook on
the decoder layer replaces its output `v + mlp(x)` by `alpha * v + mlp(x)`, computed from the stashed
v and MLP output rather than by subtracting v back out (which would cancel badly in bf16). The layer
and beta go into `config.qf2`, so a saved model comes back with its block (see `restore`).
"""

from __future__ import annotations

import torch
from torch import nn

from transformers_qf.core.architectures import LayerParts, UnsupportedModelError, locate
from transformers_qf.core.models import register_load_hook

ALPHA_FLOOR = 0.01  # below this alpha is set to 0: the block is fully the firing one
CONFIG_KEY = "qf2"
FORMAT = 1


def alpha_at(step: int, c: float = 0.99) -> float:
    """The blend of the original layer at training step `step` (0-based): c ** step, 0 below 0.01."""
    alpha = c ** step
    return alpha if alpha >= ALPHA_FLOOR else 0.0


def steps_to_zero(c: float = 0.99) -> int:
    """The first step at which alpha_at(step, c) is 0 (459 for c = 0.99)."""
    step = 0
    while alpha_at(step, c) > 0:
        step += 1
    return step


class QF2MLP(nn.Module):
    """The original MLP's projections, run as the blend of the original MLP and the firing block.

    alpha = 1: the original MLP; alpha = 0: down(sigmoid(beta * up(x))). The residual's share
    (alpha * v) is added by the layer hook that `convert` installs, not here.
    """

    def __init__(self, mlp: nn.Module, parts: LayerParts, beta: float, alpha: float = 0.0, residual: float = 0.0):
        super().__init__()
        if parts.gate is None:
            raise UnsupportedModelError("the QF2 blend needs a gated MLP (gate_proj, up_proj, down_proj)")
        self.gate_proj, self.up_proj, self.down_proj = parts.gate, parts.up, parts.down
        self.act_fn = getattr(mlp, "act_fn")
        self.beta = float(beta)
        self.alpha = float(alpha)
        self.residual = float(residual)  # ablation: the share of v kept around the finished block (paper: 0)
        self.last_output: torch.Tensor | None = None  # read (and cleared) by the layer hook
        self.hooks: _ResidualBlend | None = None  # set by convert()
        # (positions [k], firing [k, d_mlp]): replaces the firing pattern at those positions of every
        # sequence in the batch, full-sequence passes only (the oracle of qf2/oracle.py)
        self.firing_override: tuple[torch.Tensor, torch.Tensor] | None = None

    def firing(self, x: torch.Tensor) -> torch.Tensor:
        """sigmoid(beta * up(x)): the block's near-binary activations, [..., d_mlp]."""
        return torch.sigmoid(self.beta * self.up_proj(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = self.up_proj(x)
        hidden = torch.sigmoid(self.beta * up)
        if self.firing_override is not None:
            positions, firing = self.firing_override
            positions = positions.to(hidden.device)
            inside = positions < hidden.shape[-2]
            hidden = hidden.clone()
            hidden[..., positions[inside], :] = firing.to(hidden.device, hidden.dtype)[inside]
        if self.alpha > 0:
            hidden = self.alpha * (self.act_fn(self.gate_proj(x)) * up) + (1 - self.alpha) * hidden
        out = self.down_proj(hidden)
        self.last_output = out
        return out

    def extra_repr(self) -> str:
        return f"beta={self.beta}, alpha={self.alpha}, residual={self.residual}"


class _ResidualBlend:
    """Hooks that make the decoder layer return alpha * v + mlp(x) instead of v + mlp(x)."""

    def __init__(self, parts: LayerParts, block: QF2MLP):
        self.block = block
        self.v: torch.Tensor | None = None
        self.handles = [
            parts.mlp_norm.register_forward_pre_hook(self._keep_v),
            parts.layer.register_forward_hook(self._blend, prepend=True),  # before any output-capturing hook
        ]

    def _keep_v(self, _module, args):
        self.v = args[0]

    def _blend(self, _module, _args, output):
        v, mlp_out = self.v, self.block.last_output
        self.v = self.block.last_output = None
        if v is None or mlp_out is None:
            raise RuntimeError("the QF2 layer hook saw no MLP pass: is the block still installed?")
        alpha, r = self.block.alpha, self.block.residual
        share = alpha + (1 - alpha) * r  # alpha * v of the original layer + the block's own residual share
        out = mlp_out if share == 0 else share * v + mlp_out
        return (out, *output[1:]) if isinstance(output, tuple) else out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def convert(model: nn.Module, layer: int, beta: float = 10.0, alpha: float = 0.0, residual: float = 0.0) -> QF2MLP:
    """Swap layer `layer`'s MLP for the QF2 block (in place) and record it in `model.config.qf2`.
    residual (an ablation, paper 0): the finished layer returns residual * v + block(x).

    Returns the block; set `block.alpha` to blend (1 = the original layer, 0 = the firing block).
    """
    parts = locate(model, layer)
    if isinstance(parts.mlp, QF2MLP):
        raise UnsupportedModelError(f"layer {parts.index} is a QF2 block already")
    block = QF2MLP(parts.mlp, parts, beta=beta, alpha=alpha, residual=residual)
    _set_mlp(parts, block)
    block.hooks = _ResidualBlend(parts, block)
    spec = {"format": FORMAT, "layer": parts.index, "beta": float(beta)}
    if residual:
        spec["residual"] = float(residual)
    setattr(model.config, CONFIG_KEY, spec)
    return block


def qf2_config(model: nn.Module) -> dict | None:
    """The model's QF2 spec ({"format", "layer", "beta"}) or None for a stock model."""
    spec = getattr(model.config, CONFIG_KEY, None)
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT or "layer" not in spec or "beta" not in spec:
        raise UnsupportedModelError(
            f"config.{CONFIG_KEY} = {spec!r} is not a QF2 spec this version reads: reconvert with qft_train.py"
        )
    return spec


def restore(model: nn.Module) -> QF2MLP | None:
    """Rebuild the QF2 block of a model loaded from a checkpoint whose config has `qf2` (alpha = 0)."""
    spec = qf2_config(model)
    if spec is None:
        return None
    parts = locate(model, spec["layer"])
    if isinstance(parts.mlp, QF2MLP):
        return parts.mlp
    return convert(model, spec["layer"], beta=spec["beta"], alpha=0.0, residual=spec.get("residual", 0.0))


def block_of(model: nn.Module) -> QF2MLP:
    """The model's QF2 block, or a one-line error saying how to get a converted model."""
    spec = qf2_config(model)
    if spec is None:
        raise UnsupportedModelError(
            "this model has no QF2 block: convert one first with `python qft_train.py` (see README)"
        )
    mlp = locate(model, spec["layer"]).mlp
    if not isinstance(mlp, QF2MLP):
        mlp = restore(model)
    return mlp


def _set_mlp(parts: LayerParts, mlp: nn.Module) -> None:
    """Put `mlp` where the layer keeps its MLP (the attribute that held the original)."""
    name = next((n for n, child in parts.layer.named_children() if child is parts.mlp), None)
    if name is None:
        raise UnsupportedModelError(f"layer {parts.index}: its MLP is not a direct child of the layer")
    setattr(parts.layer, name, mlp)
    parts.mlp = mlp


register_load_hook(CONFIG_KEY, restore)  # load_model gives a QFt checkpoint its block once this module is imported
