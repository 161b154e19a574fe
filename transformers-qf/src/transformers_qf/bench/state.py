"""DIR/state.safetensors: a sequential run's method state after its first k edits.

A sequential run that stops (killed, interrupted, out of time) is resumed with the same command. Without
a state file the resumed run makes every edit again, unscored, to bring the model back to where it was:
as long as the run took so far. With one, it loads the edits' state and goes on after edit k.

The file is safetensors (no pickle), written to a temporary name and renamed, so a kill while writing
leaves the previous state. Its metadata holds k and the cases file's header row: a state is used only
by the run whose cases file it was written beside.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from transformers_qf.core.store import atomic_write

STATE_FILE = "state.safetensors"


def save_state(path: Path, tensors: dict[str, torch.Tensor], edits: int, header: dict) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {"edits": str(edits), "header": json.dumps(header, sort_keys=True)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_state(path: Path, header: dict) -> tuple[int, dict[str, torch.Tensor]] | None:
    """(edits, tensors) if `path` holds a state of the run with this header; None if there is none or it is
    another run's (a new state will replace it)."""
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("header") != json.dumps(header, sort_keys=True):
        return None
    return int(meta["edits"]), load_file(str(path))
