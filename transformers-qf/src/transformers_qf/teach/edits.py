"""Portable, reversible QF edits: the facts learned at one layer of one model, in one safetensors file.

Why rows and not a weight. QF's continual learning re-solves every fact from the original W (see
README), so W' is not a sum of per-fact updates and forgetting a fact means solving the others
again. A file therefore keeps, per fact, the rows its two passes recorded at layer L (what a solve
needs) and that fact's share of the factors of the combined update (what applying needs):

    fact{i}.u   [k_i, d_mlp]    float32  open-book input of down_proj
    fact{i}.v   [k_i, d_model]  float32  open-book residual entering the MLP
    fact{i}.up  [k_i, d_mlp]    float32  closed-book u'
    fact{i}.vp  [k_i, d_model]  float32  closed-book v'
    fact{i}.a   [d_model, k_i]  float64  its columns of A in  W' = W + A B,  B = [up_1; up_2; ...]
    fact{i}.b   [k_i, d_mlp]    float64  only in a covariance metric: its rows of B = U' C^-1 (format 2)

so a fact costs k_i (2 d_mlp + 2 d_model) floats plus k_i d_model doubles (about 1.5 MB for 15 rows
of the 1.5B model's layer, against 55 MB for the weight; k_i d_mlp doubles more, about 1 MB, in a
covariance metric). The rows of a layer do not depend on that
layer's down_proj, so they stay valid whatever was learned before. The header's metadata holds the
manifest as JSON under "qf_edits": format, model identity, layer, shape and sha256 of the original
W, the metric of the solve (null: QF's plain one; else the key covariance's corpus and shrink), and
per fact its text (the fields of core.facts.Fact), tokens, weights and the report (residuals) of the
solve that kept it. Files in the plain metric are format 1, those in a covariance metric format 2 (an
older reader refuses them).
The manifest also names the preset (editing/presets.py) and the positions the rows were kept at
("answer", or "target": the rows that predict the fact's value); files without them are "answer".

Presets that keep no rows a fact (intact: several layers and a fitted target; ft; in-context) are
format 3: the facts' text in the manifest, with the preset's config and edited layers, and the state of
the method that made them (`state.*` tensors: the method's state_dict, e.g. each layer's weight and
solver rows). Such a file is applied as it is; its facts cannot be forgotten one by one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from transformers_qf.core.facts import Fact
from transformers_qf.core.store import atomic_write
from transformers_qf.solve.exact import Update

FORMAT = "transformers-qf/edits/1"  # QF's plain metric
FORMAT_METRIC = "transformers-qf/edits/2"  # a covariance metric: the facts' rows of B are stored too
FORMAT_STATE = "transformers-qf/edits/3"  # a method's state, no rows a fact (intact, ft, in-context presets)
STATE = "state."
META_KEY = "qf_edits"
ROWS = ("u", "v", "up", "vp")


class EditsError(ValueError):
    """An edits file that cannot be read, or that belongs to another model or layer."""


def weight_digest(weight: torch.Tensor) -> str:
    """sha256 of a weight's shape and values as float32 on the CPU (bf16 and float32 loads of a bf16
    checkpoint hash the same)."""
    data = weight.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.sha256(json.dumps(list(data.shape)).encode())
    digest.update(data.numpy().tobytes())
    return digest.hexdigest()


@dataclass
class LearnedFact:
    """One consolidated fact: what was said (`fact`), and the rows its passes recorded.

    u, up: [k, d_mlp]; v, vp: [k, d_model] (float32, CPU); targets, weights: k token ids and
    significances of the kept positions; a: [d_model, k] float64, this fact's columns of the
    combined update (None until solved); solve: the report of the solve that kept it.
    `fact.target` is set where the rows are the target's (positions "target").
    """

    fact: Fact
    targets: list[int]
    weights: list[float]
    u: torch.Tensor
    v: torch.Tensor
    up: torch.Tensor
    vp: torch.Tensor
    a: torch.Tensor | None = None
    solve: dict = field(default_factory=dict)
    b: torch.Tensor | None = None  # [k, d_mlp] float64, U' C^-1: its rows of B in a covariance metric

    @classmethod
    def text_only(cls, fact: Fact, solve: dict | None = None) -> "LearnedFact":
        """A fact of a format-3 file: what was said, no rows (the method's state holds what it changed)."""
        empty = torch.zeros(0, 0)
        return cls(fact, [], [], empty, empty, empty, empty, solve=solve or {})

    @property
    def rows(self) -> int:
        return int(self.u.shape[0])

    def entry(self) -> dict:
        """The fact's part of the manifest (everything but the tensors)."""
        return self.fact.as_dict() | {"targets": self.targets, "weights": self.weights, "rows": self.rows,
                                      "solve": self.solve}


@dataclass
class Edits:
    """The facts learned at `layer` of the model named by `identity`, whose original down_proj
    weight there has shape `weight_shape` ([d_model, d_mlp]) and sha256 `weight_sha256`."""

    identity: dict
    layer: int
    weight_shape: list[int]
    weight_sha256: str
    facts: list[LearnedFact] = field(default_factory=list)
    solve: dict | None = None  # report of the latest solve over all facts
    metric: dict | None = None  # None: QF's plain metric; else the key covariance's {"corpus", "shrink", ...}
    source: str | None = field(default=None, compare=False)  # the file it was read from (not saved)
    preset: str | None = None  # editing/presets.py name (None: a file written before presets)
    positions: str = "answer"  # where the rows were kept: "answer" or "target"
    state: dict[str, torch.Tensor] | None = None  # format 3: the method's state_dict
    config: dict | None = None  # format 3: the preset's config as made for this model (its layers)

    @property
    def keeps_rows(self) -> bool:
        """Whether the file keeps each fact's rows (formats 1 and 2), so that facts can be forgotten."""
        return self.state is None

    # -- what the facts add up to -----------------------------------------------------------------
    def stacked(self, facts: list[LearnedFact] | None = None):
        """Rows of `facts` (default: all) stacked: U, U': [K, d_mlp], V, V': [K, d_model], weights: [K]."""
        facts = self.facts if facts is None else facts
        U, V, Up, Vp = (torch.cat([getattr(f, name) for f in facts]) for name in ROWS)
        weights = torch.tensor([w for f in facts for w in f.weights], dtype=torch.float64)
        return U, Up, V, Vp, weights

    def basis(self, facts: list[LearnedFact] | None = None) -> torch.Tensor | None:
        """The rows of B of `facts` (default: all) in a covariance metric, [K, d_mlp]; None in the plain one."""
        if self.metric is None:
            return None
        return torch.cat([f.b for f in (self.facts if facts is None else facts)])

    def update(self) -> Update | None:
        """The combined update W' - W = A B (A: [d_model, K], B = U' or U' C^-1: [K, d_mlp]), None with no facts."""
        if not self.facts:
            return None
        basis = self.basis()
        return Update(A=torch.cat([f.a for f in self.facts], dim=1),
                      B=torch.cat([f.up for f in self.facts]).to(torch.float64) if basis is None else basis)

    # -- checks ------------------------------------------------------------------------------------
    def check_fits(self, identity: dict, layer: int | None = None, weight_sha256: str | None = None) -> None:
        """Refuse to apply the edits to another model, layer or weight (each checked when given)."""
        where = f"{self.source} holds edits" if self.source else "these edits were"
        if identity != self.identity:
            raise EditsError(
                f"{where} made on model {_describe(self.identity)}, not on {_describe(identity)}: "
                f"load that model (--model {self.identity.get('name', '?')}) or learn the facts again on this one"
            )
        if layer is not None and layer != self.layer:
            raise EditsError(f"{where} made at layer {self.layer}, not layer {layer}: leave out --layer "
                             "or use another file")
        if weight_sha256 is not None and weight_sha256 != self.weight_sha256:
            raise EditsError(
                f"{where} made on a layer-{self.layer} down_proj with sha256 {self.weight_sha256[:12]}..., "
                f"this model's is {weight_sha256[:12]}... (other weights, or a float16 load?): load the same "
                "checkpoint, or learn the facts again on this one"
            )

    # -- file ----------------------------------------------------------------------------------------
    @property
    def format(self) -> str:
        return FORMAT_STATE if not self.keeps_rows else FORMAT if self.metric is None else FORMAT_METRIC

    def manifest(self) -> dict:
        out = {"format": self.format, "method": "QF", "identity": self.identity,
               "layer": self.layer, "weight_shape": self.weight_shape, "weight_sha256": self.weight_sha256,
               "metric": self.metric, "solve": self.solve, "preset": self.preset, "positions": self.positions,
               "facts": [f.entry() for f in self.facts]}
        return out if self.keeps_rows else out | {"config": self.config}

    def save(self, path: str | os.PathLike) -> None:
        """Write the file atomically (a temporary file, then a rename)."""
        tensors = {} if self.keeps_rows else {STATE + k: v.detach().cpu().contiguous() for k, v in self.state.items()}
        for i, f in enumerate(self.facts if self.keeps_rows else ()):
            if f.a is None:
                raise EditsError(f"fact {i + 1} has not been solved yet: learn it before saving")
            for name in ROWS:
                tensors[f"fact{i}.{name}"] = getattr(f, name).detach().to("cpu", torch.float32).contiguous()
            tensors[f"fact{i}.a"] = f.a.detach().to("cpu", torch.float64).contiguous()
            if self.metric is not None:
                tensors[f"fact{i}.b"] = f.b.detach().to("cpu", torch.float64).contiguous()
        metadata = {META_KEY: json.dumps(self.manifest())}
        atomic_write(Path(path), lambda tmp: _save_readable(tensors, tmp, metadata))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Edits":
        """Read a file written by `save` (safetensors only: nothing is unpickled)."""
        path = Path(path)
        if not path.is_file():
            raise EditsError(f"no edits file {path}: check the path (qf learn --edits FILE creates one)")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except (SafetensorError, OSError) as e:
            raise EditsError(f"{path} is not a safetensors file ({str(e).splitlines()[0]}): give an edits file "
                             "written by qf learn or /save") from e
        if META_KEY not in meta:
            raise EditsError(f"{path} has no {META_KEY!r} manifest: it was not written by qf learn or /save")
        try:
            manifest = json.loads(meta[META_KEY])
            if manifest.get("format") not in (FORMAT, FORMAT_METRIC, FORMAT_STATE):
                raise EditsError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}, "
                                 f"{FORMAT_METRIC!r} or {FORMAT_STATE!r}: write it again with this version of qf")
            metric = manifest.get("metric")
            if manifest["format"] != FORMAT_STATE and (metric is None) != (manifest["format"] == FORMAT):
                raise ValueError(f"format {manifest['format']!r} with metric {metric!r}")
            edits = cls(manifest["identity"], int(manifest["layer"]), list(manifest["weight_shape"]),
                        manifest["weight_sha256"], solve=manifest.get("solve"), metric=metric, source=str(path),
                        preset=manifest.get("preset"), positions=manifest.get("positions") or "answer")
            if manifest["format"] == FORMAT_STATE:
                edits.state = {k[len(STATE):]: v for k, v in tensors.items() if k.startswith(STATE)}
                edits.config = manifest.get("config")
                edits.facts = [LearnedFact.text_only(Fact.from_dict(e), e.get("solve")) for e in manifest["facts"]]
            else:
                edits.facts = [_fact_from(entry, i, tensors, edits.weight_shape, metric is not None)
                               for i, entry in enumerate(manifest["facts"])]
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, EditsError):
                raise
            raise EditsError(f"{path} has a damaged manifest ({type(e).__name__}: {e}): write it again") from e
        return edits


def _save_readable(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    """save_file, then the permissions of a new file (the temporary file is created private)."""
    save_file(tensors, path, metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _fact_from(entry: dict, i: int, tensors: dict[str, torch.Tensor], weight_shape: list[int],
               with_basis: bool = False) -> LearnedFact:
    """Fact i of a manifest, its tensors checked against the weight's shape [d_model, d_mlp]."""
    d_model, d_mlp = weight_shape
    k = int(entry["rows"])
    expected = {"u": [k, d_mlp], "v": [k, d_model], "up": [k, d_mlp], "vp": [k, d_model], "a": [d_model, k]}
    if with_basis:
        expected["b"] = [k, d_mlp]
    got = {}
    for name, shape in expected.items():
        key = f"fact{i}.{name}"
        if key not in tensors or list(tensors[key].shape) != shape:
            found = list(tensors[key].shape) if key in tensors else "nothing"
            raise ValueError(f"{key} should have shape {shape}, found {found}")
        got[name] = tensors[key]
    if len(entry["targets"]) != k or len(entry["weights"]) != k:
        raise ValueError(f"fact {i + 1} lists {len(entry['targets'])} targets for {k} rows")
    return LearnedFact(Fact.from_dict(entry), list(entry["targets"]), [float(w) for w in entry["weights"]],
                       got["u"].float(), got["v"].float(), got["up"].float(), got["vp"].float(), a=got["a"].double(),
                       solve=entry.get("solve") or {}, b=got["b"].double() if with_basis else None)


def _describe(identity: dict) -> str:
    shape = ", ".join(f"{k} {v}" for k, v in identity.items() if k != "name")
    return f"{identity.get('name', '?')} ({shape})"
