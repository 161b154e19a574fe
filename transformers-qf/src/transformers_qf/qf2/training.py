"""QFt: convert layer L of a model to the QF2 firing block by training (seed 004, section 2.3).

    conversion = Conversion(model, tokenizer, PRESETS["cpu"])
    conversion.prepare(samples)        # tokenize; cache the hidden states entering the first trainable layer
    conversion.fit_down_proj()         # optional closed-form start: the firing block's least-squares down_proj
    conversion.train()                 # Adam on the trainable layers through accelerate, alpha = c ** step
    conversion.save(out_dir)           # save_pretrained, with config.qf2 = {layer, beta}

Why it is cheap enough for a CPU. Every layer below the first trainable one is frozen, so its output
for a sample is the same at every step: it is computed once (`prepare`) and training runs only the
layers from there up. The loss needs logits only where it is taken (the answer's tokens by default),
so the LM head runs on those positions alone. And the firing block can start close to the original
layer: with up_proj fixed, down_proj has a closed form, the least-squares map from the firing pattern
sigmoid(beta up(x)) to the original layer's output v + FF(x) over cached tokens (backprop-free, in the
spirit of the paper). After that fit there is no shock to anneal, so the blend starts at alpha = 0.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import torch

from transformers_qf.core import prompting
from transformers_qf.core.architectures import locate, num_layers
from transformers_qf.core.capture import layer_slice, record_from_hidden
from transformers_qf.qf2.block import QF2MLP, alpha_at, convert
from transformers_qf.qf2.data import Sample


@dataclass
class QFtConfig:
    """How a conversion runs. `trainable`: absolute layer indices (None: L-1, L, L+1)."""

    layer: int = 23
    beta: float = 10.0
    c: float = 0.99
    trainable: tuple[int, ...] | None = None
    samples: int = 3000
    steps: int = 12000
    batch_size: int = 1
    lr: float = 5e-5
    loss: str = "full"  # "full": every next token of the sample's text; "answer": the answer's tokens only
    init: str = "none"  # "lstsq": closed-form down_proj of the firing block first, then alpha = 0 throughout
    init_tokens: int = 24000
    init_ridge: float = 1e-2
    distill: float = 0.0  # weight of keeping the last trainable layer's output equal to the original model's
    max_minutes: float | None = None  # training stops early once the run's clock passes this
    seed: int = 0

    def trainable_layers(self) -> tuple[int, ...]:
        return self.trainable if self.trainable is not None else (self.layer - 1, self.layer, self.layer + 1)

    def check(self, n_layers: int) -> None:
        if not 0 <= self.layer < n_layers:
            raise ValueError(f"layer {self.layer} is out of range: this model has {n_layers} layers (0..{n_layers - 1})")
        bad = [i for i in self.trainable_layers() if not 0 <= i < n_layers]
        if bad:
            raise ValueError(f"trainable layers {bad} are out of range: this model has layers 0..{n_layers - 1}")
        if self.loss not in ("full", "answer") or self.init not in ("none", "lstsq"):
            raise ValueError(f"loss must be full|answer and init none|lstsq, got {self.loss!r} / {self.init!r}")
        if not 0 <= self.c < 1 or self.beta <= 0 or self.lr <= 0 or self.steps < 1 or self.batch_size < 1:
            raise ValueError("need 0 <= c < 1, beta > 0, lr > 0, steps >= 1 and batch size >= 1")


PRESETS = {
    # seed 004: 3,000 facts cloned 4 times = 12,000 steps, batch 1, constant lr 5e-5, full-text loss,
    # the blend annealed from the original layer (alpha = 0.99 ** step), layers L-1..L+1 trainable.
    "paper": QFtConfig(),
    # 2 CPU cores, at most an hour with everything (see README: what it gives up).
    "cpu": QFtConfig(samples=2000, steps=700, batch_size=8, lr=1e-4, loss="answer", init="lstsq", max_minutes=52),
}


@dataclass
class Encoded:
    """One tokenized sample: ids [n]; positions [m] whose next token is in the loss; targets [m]."""

    ids: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor


def encode_sample(tokenizer, sample: Sample, loss: str = "answer") -> Encoded:
    """The plain-format text `system: ..\\nuser: ..\\nassistant: answer\\n` and where its loss is taken."""
    tf = prompting.plain_teacher_forced(tokenizer, sample.system, sample.user, sample.answer, end=True)
    if loss == "full":
        n = len(tf.input_ids)
        return Encoded(tf.input_ids, torch.arange(n - 1), tf.input_ids[1:].clone())
    header = len(tokenizer(prompting.PLAIN_HEADER, add_special_tokens=False)["input_ids"])
    return Encoded(tf.input_ids, tf.kept[header:], tf.targets[header:])


@dataclass
class TrainLog:
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    alpha: list[float] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    fit: dict = field(default_factory=dict)
    stopped_early: bool = False


class Conversion:
    """One QFt run on a loaded model (changed in place)."""

    def __init__(self, model, tokenizer, config: QFtConfig, clock_start: float | None = None, accelerator=None):
        config.check(num_layers(model))
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.start = min(min(config.trainable_layers()), config.layer)  # first layer that ever runs in training
        self.encoded: list[Encoded] = []
        self.cached: list[torch.Tensor] = []  # hidden states entering layer `start`, one [n_i, d] per sample
        self.teacher: list[torch.Tensor] = []  # the original model's output of the last trainable layer (distill)
        self.block: QF2MLP | None = None
        self.log = TrainLog()
        self.clock_start = time.perf_counter() if clock_start is None else clock_start
        self.accelerator = accelerator or make_accelerator(cpu=next(model.parameters()).device.type == "cpu")

    # -- 1. tokenize and cache the frozen bottom -----------------------------------------------------------
    @torch.no_grad()
    def prepare(self, samples: list[Sample], batch_size: int = 16, progress: bool = True) -> None:
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        self.encoded = [encode_sample(self.tokenizer, s, self.config.loss) for s in samples]
        order = sorted(range(len(self.encoded)), key=lambda i: len(self.encoded[i].ids))  # little padding
        self.cached = [None] * len(order)
        self.teacher = [None] * len(order) if self.config.distill > 0 else []
        device = self.accelerator.device
        bar = tqdm(total=len(order), desc="caching the frozen layers", unit="sample", disable=not progress)
        for b in range(0, len(order), batch_size):
            chunk = order[b:b + batch_size]
            hidden = self._bottom([self.encoded[i].ids for i in chunk], device)
            for i, h in zip(chunk, hidden):
                self.cached[i] = h
            if self.teacher:
                for i, h in zip(chunk, self._original_output(hidden)):
                    self.teacher[i] = h
            bar.update(len(chunk))
        bar.close()
        self.log.seconds["cache"] = time.perf_counter() - t0

    def _bottom(self, sequences: list[torch.Tensor], device) -> list[torch.Tensor]:
        """The hidden states entering layer `start` (the embeddings when start is 0), on the CPU."""
        from transformers_qf.core.capture import pad_batch

        batch = pad_batch(sequences).to(device)
        if self.start == 0:
            out = self.model.get_input_embeddings()(batch)
        else:
            seen = {}
            last = locate(self.model, self.start - 1).layer
            handle = last.register_forward_hook(lambda _m, _a, output: seen.__setitem__(
                "h", output[0] if isinstance(output, tuple) else output))
            try:
                with self._autocast(), layer_slice(self.model, 0, self.start) as base:
                    base(input_ids=batch, use_cache=False)
            finally:
                handle.remove()
            out = seen["h"]
        return [out[i, : len(s)].detach().to("cpu", torch.bfloat16 if self._bf16 else torch.float32).clone()
                for i, s in enumerate(sequences)]

    def _original_output(self, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """The output of the last trainable layer, original weights, from the hidden states entering `start`."""
        parts = locate(self.model, max(self.config.trainable_layers()))
        with self._autocast():
            recs = record_from_hidden(self.model, parts, hidden, self.start)
        return [(r.v + r.y).to(hidden[0].dtype) for r in recs]

    # -- 2. closed-form start ------------------------------------------------------------------------
    @torch.no_grad()
    def fit_down_proj(self, batch_size: int = 16) -> dict:
        """Set down_proj of layer L to the ridge least-squares map from sigmoid(beta up(x)) to the
        original layer's output v + FF(x), over up to `init_tokens` cached tokens (float64 solve).
        Returns the fit's median relative error on those tokens and on held-out ones."""
        cfg, t0 = self.config, time.perf_counter()
        parts = locate(self.model, cfg.layer)
        up = parts.up.weight.detach().float()
        d_mlp = up.shape[0]
        # float64 sums: in float32 the rounding of 24k-token sums was measured to exceed the ridge and
        # leave G indefinite (Cholesky failed at order 2086 on the 1.5B model)
        G = torch.zeros(d_mlp, d_mlp, dtype=torch.float64)
        B = torch.zeros(d_mlp, up.shape[1], dtype=torch.float64)
        fit_x, fit_t, held_x, held_t = [], [], [], []
        tokens = 0
        heldout_every = 10  # every 10th sample is held out of the fit, to measure it
        for b in range(0, len(self.cached), batch_size):
            if tokens >= cfg.init_tokens:
                break
            recs = record_from_hidden(self.model, parts, self.cached[b:b + batch_size], self.start)
            for j, rec in enumerate(recs):
                x, t = rec.x.float().cpu(), (rec.v + rec.y).float().cpu()
                if (b + j) % heldout_every == 0:
                    held_x.append(x), held_t.append(t)
                    continue
                y = torch.sigmoid(cfg.beta * (x @ up.T)).double()
                G.addmm_(y.T, y)
                B.addmm_(y.T, t.double())
                tokens += len(x)
                if len(fit_x) < 64:
                    fit_x.append(x), fit_t.append(t)
        G.diagonal().add_(cfg.init_ridge * tokens / d_mlp)  # ridge scaled to the number of tokens
        L, info = torch.linalg.cholesky_ex(G)
        solver = "lstsq" if info else "cholesky"
        if info:  # cannot happen for a positive ridge in exact arithmetic; solve anyway, slower but sure
            D = torch.linalg.lstsq(G, B, driver="gelsd").solution.T
        else:
            D = torch.cholesky_solve(B, L).T  # [d_model, d_mlp]
        parts.down.weight.data.copy_(D.to(parts.down.weight.dtype))

        def rel(xs, ts):
            x, t = torch.cat(xs), torch.cat(ts)
            err = torch.linalg.norm(torch.sigmoid(cfg.beta * (x @ up.T)) @ D.T.float() - t, dim=1)
            return float((err / torch.linalg.norm(t, dim=1)).median())

        self.log.fit = {"tokens": tokens, "ridge": cfg.init_ridge, "solver": solver, "median_rel_error_fit": rel(fit_x, fit_t),
                        "median_rel_error_heldout": rel(held_x, held_t)}
        self.log.seconds["fit"] = time.perf_counter() - t0
        return self.log.fit

    # -- 3. training ----------------------------------------------------------------------------------
    def train(self, progress: bool = True) -> TrainLog:
        from tqdm.auto import tqdm

        cfg, acc, t0 = self.config, self.accelerator, time.perf_counter()
        fitted = cfg.init == "lstsq"
        self.block = convert(self.model, cfg.layer, beta=cfg.beta, alpha=0.0 if fitted else 1.0)
        params = self._trainable_params()
        top = _Top(self.model, self.start, max(cfg.trainable_layers()) - self.start, cfg.distill)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        generator = torch.Generator().manual_seed(cfg.seed)
        loader = torch.utils.data.DataLoader(range(len(self.encoded)), batch_size=cfg.batch_size, shuffle=True,
                                             generator=generator, collate_fn=self._collate)
        top, optimizer, loader = acc.prepare(top, optimizer, loader)
        self.model.train()
        bar = tqdm(total=cfg.steps, desc="QFt", unit="step", disable=not progress or not acc.is_local_main_process)
        step, smooth = 0, None
        while step < cfg.steps:
            for batch in loader:
                alpha = 0.0 if fitted else alpha_at(step, cfg.c)
                self.block.alpha = alpha
                loss = top(*batch)
                acc.backward(loss)
                acc.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                value = float(acc.gather(loss.detach()).mean())
                smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
                self.log.steps.append(step), self.log.loss.append(value), self.log.alpha.append(alpha)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{smooth:.3f}", alpha=f"{alpha:.3f}")
                if step >= cfg.steps or self._out_of_time():
                    break
            if self._out_of_time():
                self.log.stopped_early = step < cfg.steps
                break
        bar.close()
        self.block.alpha = 0.0
        self.model.eval()
        for p in params:
            p.requires_grad_(False)
        self.log.seconds["train"] = time.perf_counter() - t0
        return self.log

    def _trainable_params(self) -> list[torch.nn.Parameter]:
        for p in self.model.parameters():
            p.requires_grad_(False)
        params = []
        for i in self.config.trainable_layers():
            layer = locate(self.model, i).layer
            layer.float()  # float32 master weights; the frozen rest stays in the model's dtype
            for p in layer.parameters():
                p.requires_grad_(True)
                params.append(p)
        return params

    def _collate(self, indices: list[int]):
        """Right-padded cached hidden states [b, n, d], loss positions [m, 2] (row, position), targets [m],
        and with distillation the original outputs [b, n, d] and the real (unpadded) positions [b, n]."""
        batch = _pad([self.cached[i] for i in indices])
        rows, positions, targets = [], [], []
        for r, i in enumerate(indices):
            enc = self.encoded[i]
            rows.append(torch.full_like(enc.positions, r))
            positions.append(enc.positions)
            targets.append(enc.targets)
        out = (batch, torch.stack([torch.cat(rows), torch.cat(positions)], dim=1), torch.cat(targets))
        if not self.teacher:
            return out
        real = torch.zeros(batch.shape[:2], dtype=torch.bool)
        for r, i in enumerate(indices):
            real[r, : len(self.cached[i])] = True
        return (*out, _pad([self.teacher[i] for i in indices]), real)

    def _out_of_time(self) -> bool:
        limit = self.config.max_minutes
        return limit is not None and time.perf_counter() - self.clock_start > 60 * limit

    @property
    def _bf16(self) -> bool:
        return self.accelerator.mixed_precision == "bf16"

    def _autocast(self):
        return self.accelerator.autocast()

    # -- 4. save --------------------------------------------------------------------------------------
    def save(self, out_dir, dtype: torch.dtype | None = None) -> None:
        """save_pretrained (weights in `dtype`, default the model's) + tokenizer; config.qf2 names the block."""
        t0 = time.perf_counter()
        dtype = dtype or self.model.get_input_embeddings().weight.dtype
        self.model.to(dtype)
        if self.accelerator.is_main_process:
            self.model.save_pretrained(out_dir, safe_serialization=True)
            self.tokenizer.save_pretrained(out_dir)
        self.accelerator.wait_for_everyone()
        self.log.seconds["save"] = time.perf_counter() - t0

    def summary(self) -> dict:
        return {"config": asdict(self.config), "trainable": list(self.config.trainable_layers()),
                "start_layer": self.start, "samples": len(self.encoded),
                "steps_done": len(self.log.steps), **asdict(self.log)}


def _pad(rows: list[torch.Tensor]) -> torch.Tensor:
    """[n_i, d] tensors, right-padded with zeros into [b, max n_i, d]."""
    out = torch.zeros(len(rows), max(len(r) for r in rows), rows[0].shape[-1], dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


class _Top(torch.nn.Module):
    """Layers start.. of the model, its final norm and the LM head at the loss positions only.

    loss = cross-entropy at the loss positions + distill * mean over real positions of
    |h - h_orig|^2 / |h_orig|^2, h the output of the `distill_at`-th layer run (the last trainable one).
    """

    def __init__(self, model, start: int, distill_at: int = 0, distill: float = 0.0):
        super().__init__()
        self.model, self.start, self.distill_at, self.distill = model, start, distill_at, distill

    def forward(self, hidden, positions, targets, teacher=None, real=None) -> torch.Tensor:
        seen = {}
        with layer_slice(self.model, self.start) as base:
            handle = base.layers[self.distill_at].register_forward_hook(
                lambda _m, _a, output: seen.__setitem__("h", output[0] if isinstance(output, tuple) else output))
            try:
                out = base(inputs_embeds=hidden, use_cache=False).last_hidden_state
            finally:
                handle.remove()
        logits = self.model.get_output_embeddings()(out[positions[:, 0], positions[:, 1]])
        loss = torch.nn.functional.cross_entropy(logits.float(), targets)
        if teacher is None:
            return loss
        h, t = seen["h"][real].float(), teacher[real].float()
        return loss + self.distill * ((h - t).square().sum(-1) / t.square().sum(-1)).mean()


def make_accelerator(mixed_precision: str | None = None, cpu: bool = False):
    """accelerate's Accelerator: bf16 autocast where bf16 is fast (CUDA, or a CPU with native bf16).

    cpu: train on the CPU although a GPU is visible (for a model loaded on the CPU). One process holds one
    accelerate state: every Accelerator it makes must agree on this.
    """
    from accelerate import Accelerator

    from transformers_qf.core.models import cpu_has_native_bf16

    if mixed_precision is None:
        on_gpu = torch.cuda.is_available() and not cpu
        mixed_precision = "bf16" if on_gpu or cpu_has_native_bf16() else "no"
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


def with_overrides(config: QFtConfig, **overrides) -> QFtConfig:
    """A copy of `config` with the options that are not None replaced."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def steps_for_epochs(samples: int, epochs: float, batch_size: int) -> int:
    return max(1, math.ceil(samples * epochs / batch_size))
