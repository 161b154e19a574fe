"""The parameters folder: what the qfmode passes record, in safetensors, with a manifest.

Files follow the original's names, `layer{L}_{name}.safetensors`, each holding one tensor
"data". `manifest.json` records the model identity, the layer, the dtype and every round (tokens,
weights, row counts), and is written last: it is what says which rows are valid. Every file is
written to a temporary name and renamed, so an interrupted write leaves the previous state.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

MANIFEST = "manifest.json"
FORMAT = "transformers-qf/parameters/1"


class ParametersError(ValueError):
    """A folder that does not fit this model or layer, or holds inconsistent rows."""


def atomic_write(path: Path, write) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class ParametersFolder:
    """Rows accumulate across rounds; `fresh=True` wipes the folder first.

    `identity` is a dict describing the model (see LoadedModel.identity); a folder written for
    another identity or layer is refused.
    """

    def __init__(self, path: str | os.PathLike | None, layer: int, identity: dict, method: str = "QF",
                 fresh: bool = False):
        self.path = None if path is None else Path(path)
        self.layer = layer
        self.identity = identity
        self.method = method
        self._memory: dict[str, torch.Tensor] | None = None
        if self.path is None:  # in memory only: same bookkeeping, nothing written
            self._memory = {}
            self.manifest = self._new_manifest()
            return
        if fresh and self.path.exists():
            self._wipe()
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest = self._read_manifest()

    def _new_manifest(self) -> dict:
        return {"format": FORMAT, "method": self.method, "layer": self.layer, "identity": self.identity,
                "dtype": None, "rounds": [], "files": {}}

    # -- manifest -------------------------------------------------------------------------------
    def _wipe(self) -> None:
        for entry in self.path.iterdir():
            if entry.name == "README.md":
                continue
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def _read_manifest(self) -> dict:
        path = self.path / MANIFEST
        if not path.exists():
            stray = [p.name for p in self.path.glob("layer*_*.safetensors")]
            if stray:
                raise ParametersError(
                    f"{self.path} holds {stray[0]} but no {MANIFEST}: it was not written by transformers-qf; "
                    "start fresh (--fresh) or use another folder"
                )
            return self._new_manifest()
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ParametersError(f"{path} is not valid JSON ({e}): start fresh (--fresh)") from e
        if manifest.get("format") != FORMAT:
            raise ParametersError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}: start fresh (--fresh)")
        if manifest.get("method") != self.method or manifest.get("layer") != self.layer:
            raise ParametersError(
                f"{self.path} holds {manifest.get('method')} rows of layer {manifest.get('layer')}; this run is "
                f"{self.method} at layer {self.layer}: use another folder or start fresh (--fresh)"
            )
        theirs = {k: manifest.get("identity", {}).get(k) for k in self.identity}
        if theirs != self.identity:
            raise ParametersError(
                f"{self.path} was recorded with model {manifest.get('identity')}, not {self.identity}: "
                "use another folder or start fresh (--fresh)"
            )
        return manifest

    def _write_manifest(self) -> None:
        if self._memory is not None:
            return
        text = json.dumps(self.manifest, indent=1)
        atomic_write(self.path / MANIFEST, lambda tmp: Path(tmp).write_text(text))

    # -- tensors --------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        if self.path is None:
            raise ParametersError("this parameters folder lives in memory: it has no files")
        return self.path / f"layer{self.layer}_{name}.safetensors"

    def has(self, name: str) -> bool:
        if self._memory is not None:
            return name in self._memory
        return name in self.manifest["files"] and self.file(name).exists()

    def load(self, name: str) -> torch.Tensor:
        """The tensor `name` (a copy when the folder lives in memory, so callers may change it)."""
        if not self.has(name):
            raise ParametersError(f"layer{self.layer}_{name} has not been written yet: run the qfmode that records it first")
        if self._memory is not None:
            return self._memory[name].clone()
        tensor = load_file(str(self.file(name)))["data"]
        expected = self.manifest["files"][name]
        if list(tensor.shape) != expected:
            raise ParametersError(
                f"{self.file(name)} has shape {list(tensor.shape)} but the manifest says {expected} "
                "(interrupted write?): start fresh (--fresh)"
            )
        return tensor

    def rows(self, name: str) -> int:
        return self.manifest["files"].get(name, [0])[0]

    def _save(self, name: str, tensor: torch.Tensor) -> None:
        self.manifest["files"][name] = list(tensor.shape)
        if self._memory is not None:
            self._memory[name] = tensor.detach().clone()
            return
        tensor = tensor.detach().to("cpu").contiguous()
        atomic_write(self.file(name), lambda tmp: save_file({"data": tensor}, tmp))

    def save(self, name: str, tensor: torch.Tensor) -> None:
        """Write one tensor and the manifest."""
        self._save(name, tensor)
        self._write_manifest()

    def append(self, rows: dict[str, torch.Tensor], round_update: dict) -> None:
        """Append rows to several files, then record `round_update` in the manifest (written last)."""
        for name, new in rows.items():
            new = new.detach().to(torch.float32)
            old = self.load(name).to(new.device) if self.has(name) else new[:0]
            self._save(name, torch.cat([old, new]))
        rounds = self.manifest["rounds"]
        if round_update.pop("new_round", False):
            rounds.append(round_update)
        else:
            rounds[-1].update(round_update)
        self._write_manifest()

    @property
    def rounds(self) -> list[dict]:
        return self.manifest["rounds"]

    def set_dtype(self, dtype: torch.dtype) -> None:
        self.manifest["dtype"] = str(dtype).replace("torch.", "")
