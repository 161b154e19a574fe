"""Record the activations of one MLP layer, running the model only up to that layer.

    recs = record(model, parts, [ids_open, ids_closed])   # one forward for both sequences
    recs[0].u, recs[0].v                                   # [n, d_mlp], [n, d_model]

The forward is cut after layer L by running the base model with its layer list truncated to
layers 0..L (nothing above L runs, nor the LM head). Several sequences go through as one forward,
packed end to end into a single row with per-sequence positions (0, 1, ... for each): stock
transformers reads the position restarts as a packed batch and masks attention per sequence, so
each position gets the activations of its own unpadded run and no padding is computed. Hooks and
the truncation are always undone on exit. On CUDA, `GraphedRecorder` replays a right-padded batch
of the same forward from a captured CUDA graph (with causal attention a position never sees the
padding after it).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from transformers_qf.core.architectures import LayerParts, UnsupportedModelError, architecture_of


@dataclass
class Recording:
    """Activations at every position of one sequence.

    v: [n, d_model] residual entering the MLP; x: [n, d_model] MLP input (after the norm);
    u: [n, d_mlp] input of down_proj; y: [n, d_model] MLP output.
    """

    v: torch.Tensor
    x: torch.Tensor
    u: torch.Tensor
    y: torch.Tensor


class _Hooks:
    """Forward hooks that keep the latest v, x, u, y of a layer (batched, not copied)."""

    def __init__(self, parts: LayerParts):
        self.v = self.x = self.u = self.y = None

        def keep(name):
            def hook(_module, args, output=None):
                value = output if output is not None else args[0]
                setattr(self, name, value[0] if isinstance(value, tuple) else value)
            return hook

        self.handles = [
            parts.mlp_norm.register_forward_pre_hook(keep("v")),
            parts.mlp.register_forward_pre_hook(keep("x")),
            parts.down.register_forward_pre_hook(keep("u")),
            parts.mlp.register_forward_hook(keep("y")),
        ]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def split(self, lengths: list[int]) -> list[Recording]:
        """One Recording per row of a right-padded batch."""
        return [Recording(*(t[i, :n].detach() for t in (self.v, self.x, self.u, self.y))) for i, n in enumerate(lengths)]

    def split_packed(self, lengths: list[int]) -> list[Recording]:
        """One Recording per sequence of a packed row, in order."""
        parts = (t[0].detach().split(lengths) for t in (self.v, self.x, self.u, self.y))
        return [Recording(*fields) for fields in zip(*parts)]


def _split_path(dotted: str) -> tuple[str, str]:
    parent, _, attr = dotted.rpartition(".")
    return parent, attr


def _get(module, dotted: str):
    for name in filter(None, dotted.split(".")):
        module = getattr(module, name)
    return module


@contextmanager
def layer_slice(model: torch.nn.Module, start: int = 0, stop: int | None = None):
    """Yield the base model (no LM head) running only decoder layers start..stop-1.

    With start > 0 the base model is called with `inputs_embeds` = the hidden states entering layer
    `start` (its embedding is skipped, its rotary positions and causal mask are built as usual).
    """
    parent_path, attr = _split_path(architecture_of(model).layers)
    base = _get(model, parent_path)
    layers = getattr(base, attr)
    kinds = set(getattr(model.config, "layer_types", None) or ["one"])
    if start > 0 and len(kinds) > 1:  # the base model picks each layer's mask by its index in the list
        raise UnsupportedModelError(f"layers of several attention kinds ({sorted(kinds)}): cannot start at layer {start}")
    setattr(base, attr, layers[start:stop])
    try:
        yield base
    finally:
        setattr(base, attr, layers)


@contextmanager
def patched_output(layer: torch.nn.Module, positions: torch.Tensor, values: torch.Tensor):
    """Within the block, the decoder `layer`'s output (the residual stream after it) at `positions` of a batch of
    one is replaced by `values` ([len(positions), d_model]); later layers read the patched stream (activation
    patching). The hook is removed on exit; the model's weights are untouched."""
    positions = torch.as_tensor(positions, dtype=torch.long)

    def overwrite(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[0, positions.to(hidden.device)] = values.to(hidden.device, hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = layer.register_forward_hook(overwrite)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def hidden_keys(layers: list[torch.nn.Module], positions: torch.Tensor, length: int):
    """Within the block, the attention of these decoder `layers` cannot read the tokens at `positions` (each still
    reads itself) in a forward of `length` tokens: their causal mask is replaced by one that also blocks those
    keys. Lower layers, which wrote into the other positions' residual stream, are unaffected."""
    allowed = torch.ones(length, length, dtype=torch.bool).tril()
    allowed[:, torch.as_tensor(positions, dtype=torch.long)] = False
    allowed |= torch.eye(length, dtype=torch.bool)

    def mask(_module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        blocked = torch.finfo(hidden.dtype).min
        kwargs["attention_mask"] = torch.where(allowed, 0.0, blocked).to(hidden.device, hidden.dtype)[None, None]
        return args, kwargs

    handles = [layer.register_forward_pre_hook(mask, with_kwargs=True) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def truncated(model: torch.nn.Module, parts: LayerParts):
    """Yield the base model (no LM head) with its decoder layers cut to 0..L."""
    return layer_slice(model, 0, parts.index + 1)


def pad_batch(sequences: list[torch.Tensor], length: int | None = None, pad_id: int = 0) -> torch.Tensor:
    """Right-pad 1-D token tensors into [b, length]."""
    length = length or max(len(s) for s in sequences)
    batch = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    for i, s in enumerate(sequences):
        batch[i, : len(s)] = s
    return batch


def pack(sequences: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D token tensors end to end: input_ids [1, total] and position_ids [1, total] restarting at 0 per sequence."""
    ids = torch.cat(list(sequences)).view(1, -1)
    positions = torch.cat([torch.arange(len(s)) for s in sequences]).view(1, -1)
    return ids, positions


def finite_flags(recs: list[Recording]) -> torch.Tensor:
    """Whether each recording's v and u are all finite: [2 * len(recs)] booleans on the device (no sync)."""
    return torch.stack([torch.isfinite(getattr(rec, name)).all() for rec in recs for name in ("v", "u")])


def check_finite(recs: list[Recording], layer: int, flags: torch.Tensor | None = None) -> None:
    """Raise FloatingPointError if a recorded v or u holds a non-finite value (one sync)."""
    flags = finite_flags(recs) if flags is None else flags
    if not bool(flags.all()):
        name = ("v", "u")[int((~flags).nonzero()[0]) % 2]
        raise FloatingPointError(
            f"non-finite values in the recorded {name} at layer {layer}: try --dtype float32 or another layer"
        )


@torch.no_grad()
def record(model: torch.nn.Module, parts: LayerParts, sequences, stop: bool = True, check: bool = True
           ) -> list[Recording]:
    """One forward of the sequences (1-D token tensors, or one of them), packed; their activations at layer L.

    With stop=False the whole model runs (for checks against an uncut forward). With check, non-finite
    values raise FloatingPointError here; without, the caller checks (`check_finite`).
    """
    if isinstance(sequences, torch.Tensor):
        sequences = [sequences]
    return record_layers(model, [parts], sequences, stop, check)[parts.index]


@torch.no_grad()
def record_from_hidden(model: torch.nn.Module, parts: LayerParts, hidden: list[torch.Tensor], start: int) -> list[Recording]:
    """`record`, starting from the hidden states entering layer `start` ([n_i, d_model] each) instead of
    token ids: layers start..L run, the ones below are skipped (their output is `hidden`)."""
    width = max(len(h) for h in hidden)
    weight = model.get_input_embeddings().weight
    batch = torch.zeros(len(hidden), width, hidden[0].shape[-1], dtype=weight.dtype, device=weight.device)
    for i, h in enumerate(hidden):
        batch[i, : len(h)] = h  # right padding: causal attention keeps it out of the real positions
    hooks = _Hooks(parts)
    try:
        with layer_slice(model, start, parts.index + 1) as base:
            base(inputs_embeds=batch, use_cache=False)
        recs = hooks.split([len(h) for h in hidden])
    finally:
        hooks.remove()
    check_finite(recs, parts.index)
    return recs


class GraphedRecorder:
    """`record` for two sequences on CUDA, replayed from a CUDA graph per padded length.

    Lengths are rounded up to a multiple of `bucket`; each new length captures one graph (once).
    Falls back to eager `record` when capture fails, and says so in `self.fallback_reason`.
    """

    def __init__(self, model: torch.nn.Module, parts: LayerParts, bucket: int = 32, compile: bool = False):
        self.model, self.parts, self.bucket, self.compile = model, parts, bucket, compile
        self.graphs: dict[int, tuple] = {}
        self.fallback_reason: str | None = None
        self.compile_fallback_reason: str | None = None

    @torch.no_grad()
    def __call__(self, sequences: list[torch.Tensor], check: bool = True, copy: bool = True) -> list[Recording]:
        """check: as in `record`; copy: recordings that outlive the next replay (else views of its buffers)."""
        if self.fallback_reason is not None:
            return record(self.model, self.parts, sequences, check=check)
        length = -(-max(len(s) for s in sequences) // self.bucket) * self.bucket
        key = (len(sequences), length)
        if key not in self.graphs:
            try:
                try:
                    self.graphs[key] = self._capture(len(sequences), length, self.compile)
                except Exception as e:  # noqa: BLE001 - a failed compile still leaves the plain graph
                    if not self.compile:
                        raise
                    self.compile_fallback_reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                    self.compile = False
                    self.graphs[key] = self._capture(len(sequences), length, False)
            except Exception as e:  # noqa: BLE001 - any capture failure means: run eagerly
                self.fallback_reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                return record(self.model, self.parts, sequences, check=check)
        graph, static_ids, hooks = self.graphs[key]
        static_ids.copy_(pad_batch(sequences, length), non_blocking=True)
        graph.replay()
        recs = hooks.split([len(s) for s in sequences])
        if copy:
            recs = [Recording(*(t.clone() for t in (r.v, r.x, r.u, r.y))) for r in recs]
        if check:
            check_finite(recs, self.parts.index)
        return recs

    def _capture(self, batch: int, length: int, compile: bool):
        device = next(self.model.parameters()).device
        static_ids = torch.zeros(batch, length, dtype=torch.long, device=device)
        hooks = _Hooks(self.parts)
        try:
            with truncated(self.model, self.parts) as base:
                if compile:  # fuses the small kernels; the compiled wrapper is only ever replayed
                    base = torch.compile(base, dynamic=False)
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(2):
                        base(input_ids=static_ids, use_cache=False)
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    base(input_ids=static_ids, use_cache=False)
        finally:
            hooks.remove()  # the graph keeps the tensors the hooks last saw; replays refill them
        return graph, static_ids, hooks


@torch.no_grad()
def record_layers(model: torch.nn.Module, layers: list[LayerParts], sequences: list[torch.Tensor], stop: bool = True,
                  check: bool = True) -> dict[int, list[Recording]]:
    """`record` at several layers in one packed forward cut after the deepest of them (stop=False: the whole
    model runs); {layer index: the sequences' recordings there}."""
    device = next(model.parameters()).device
    ids, positions = (t.to(device) for t in pack(sequences))
    hooks = {parts.index: _Hooks(parts) for parts in layers}
    try:
        if stop:
            with truncated(model, max(layers, key=lambda p: p.index)) as base:
                base(input_ids=ids, position_ids=positions, use_cache=False)
        else:
            model(input_ids=ids, position_ids=positions, use_cache=False)
        recs = {index: h.split_packed([len(s) for s in sequences]) for index, h in hooks.items()}
    finally:
        for h in hooks.values():
            h.remove()
    if check:
        for index, r in recs.items():
            check_finite(r, index)
    return recs
