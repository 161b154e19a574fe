"""Where each model family keeps its decoder layers, MLP and the norm in front of the MLP.

QF needs, at layer L: the residual stream entering the MLP (`v`, the input of the norm that feeds
the MLP), the MLP input (`x`, that norm's output), the input of down_proj (`u`) and down_proj
itself. The layer's output at a position is `v + down_proj(u)` for every family listed here.
Families with a norm *after* the MLP (Gemma 2/3) break that identity and are left out on purpose.

An entry here is all a family needs: prompts follow the tokenizer's own chat template
(`prompting.chat_format`), whose system, user and answer turns QF finds by itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Architecture:
    layers: str = "model.layers"  # dotted path from the *ForCausalLM module to the decoder layers
    mlp: str = "mlp"
    mlp_norm: str = "post_attention_layernorm"
    up: str = "up_proj"
    gate: str | None = "gate_proj"
    down: str = "down_proj"


_LLAMA_LIKE = Architecture()

ARCHITECTURES: dict[str, Architecture] = {
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
}


class UnsupportedModelError(ValueError):
    """The model has no entry in ARCHITECTURES or lacks the modules its entry names."""


@dataclass
class LayerParts:
    """The modules of one decoder layer that QF hooks or edits."""

    index: int
    layer: torch.nn.Module
    mlp: torch.nn.Module
    mlp_norm: torch.nn.Module
    up: torch.nn.Linear
    down: torch.nn.Linear
    gate: torch.nn.Linear | None


def _get(module: torch.nn.Module, dotted: str):
    for name in dotted.split("."):
        module = getattr(module, name)
    return module


def num_layers(model: torch.nn.Module) -> int:
    return len(_get(model, architecture_of(model).layers))


def architecture_of(model: torch.nn.Module) -> Architecture:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"model type {model_type!r} has no recognised MLP layout: add an entry to "
            f"transformers_qf.core.architectures.ARCHITECTURES (known: {', '.join(sorted(ARCHITECTURES))})"
        )
    return ARCHITECTURES[model_type]


def locate(model: torch.nn.Module, layer: int) -> LayerParts:
    """The parts of decoder layer `layer` (0-based; negative counts from the top)."""
    arch = architecture_of(model)
    try:
        layers = _get(model, arch.layers)
    except AttributeError as e:
        raise UnsupportedModelError(f"model has no {arch.layers!r}: its architecture entry does not fit it") from e
    n = len(layers)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
        raise UnsupportedModelError(f"layer {layer} is out of range: this model has {n} layers (0..{n - 1})")
    index = layer % n
    block = layers[index]
    try:
        mlp = _get(block, arch.mlp)
        parts = LayerParts(
            index=index,
            layer=block,
            mlp=mlp,
            mlp_norm=_get(block, arch.mlp_norm),
            up=_get(mlp, arch.up),
            down=_get(mlp, arch.down),
            gate=_get(mlp, arch.gate) if arch.gate else None,
        )
    except AttributeError as e:
        raise UnsupportedModelError(f"layer {index} has no recognised MLP ({e}): check its architecture entry") from e
    if not isinstance(parts.down, torch.nn.Linear) or parts.down.bias is not None:
        raise UnsupportedModelError(f"layer {index}: down_proj must be a bias-free Linear for QF's closed form")
    return parts
