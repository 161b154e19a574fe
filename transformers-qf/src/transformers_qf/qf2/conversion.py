"""Where a QFt conversion and its checkpoint live, and how qf2_learn.py finds (and checks) one.

    <cache>/<model>-layer<L>/             the paper preset: save_pretrained + qft_conversion.json
    <cache>/<model>-layer<L>-<label>/     any other configuration (label: preset and a hash of the options)
    <same name>.ckpt/                     the training checkpoint (state.safetensors + state.json)

<cache> is --cache, else $QF_CACHE/qf2 (the default model's paper conversion is then exactly where
`load_model("qf2")` looks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from transformers_qf.core.models import ModelLoadError, cache_dir

MANIFEST = "qft_conversion.json"


@dataclass(frozen=True)
class ConversionPaths:
    converted: Path
    checkpoint: Path


def conversion_paths(model_name: str, config, preset: str, cache: str | Path | None = None,
                     name: str | None = None) -> ConversionPaths:
    """The folders of a conversion: `name` when given, else from the model, layer, preset and options."""
    from transformers_qf.qf2.training import PRESETS, identity_hash

    root = Path(cache) if cache else cache_dir() / "qf2"
    if name:
        converted = root / name
        return ConversionPaths(converted, converted.with_name(name + ".ckpt"))
    name = f"{Path(model_name).name}-layer{config.layer}"
    if not (preset == "paper" and config.identity() == PRESETS["paper"].identity()):
        name += f"-{preset}-{identity_hash(config.identity())}"
    converted = root / name
    return ConversionPaths(converted, converted.with_name(name + ".ckpt"))


def write_manifest(folder: Path, manifest: dict) -> None:
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=1))


def read_manifest(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        raise ModelLoadError(f"{folder} is not a finished QFt conversion (no readable {MANIFEST}): "
                             "run qft_train.py to the end") from None


def find_conversion(folder: str | Path | None, model_name: str, layer: int, cache: str | Path | None = None,
                    preset: str = "paper") -> tuple[Path, dict]:
    """The conversion folder to learn on and its manifest; a one-line error when it is missing, unfinished,
    or a conversion of another model or layer."""
    from transformers_qf.qf2.training import PRESETS, with_overrides

    if folder is None:
        config = with_overrides(PRESETS[preset], layer=layer)
        folder = conversion_paths(model_name, config, preset, cache).converted
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"no QFt conversion of {Path(model_name).name} at layer {layer} in {folder}: run "
                             f"`python qft_train.py --model {model_name} --layer {layer}{' --paper' if preset == 'paper' else ''}` "
                             "first (or pass --conversion DIR)")
    manifest = read_manifest(folder)
    if manifest.get("base_model") != Path(model_name).name:
        raise ModelLoadError(f"{folder} is a conversion of {manifest.get('base_model')!r}, not of "
                             f"{Path(model_name).name!r}: pass --model {manifest.get('base_model')} or convert this model")
    if manifest.get("layer") != layer:
        raise ModelLoadError(f"{folder} converted layer {manifest.get('layer')}, not layer {layer}: pass "
                             f"--layer {manifest.get('layer')} or convert layer {layer}")
    return folder, manifest
