"""QFt: convert layer L of a model to the QF2 firing block by training (seed 004, section 2.3).

    conversion = Conversion(model, tokenizer, PRESETS["paper"])
    conversion.prepare(data.train)     # tokenize; cache the hidden states entering the first trainable layer
    conversion.train()                 # AdamW on the trainable layers, alpha = c ** (samples seen)
    conversion.save_checkpoint(dir)    # trainable weights + optimizer state + log (resumable)

The paper's schedule (`paper`): 3,000 unique rows, each seen 4 times (12,000 samples, batch 1), the
blend annealed from the original layer (alpha = 0.99 ** step, 0 below 0.01), beta 10, layers L-1..L+1
trainable, constant lr 5e-5, loss on every token of the text. The `cpu` preset keeps the data, the
loss and the per-sample alpha and changes only what batching forces (see `deviations`).

Why it is cheap enough for a CPU. Every layer below the first trainable one is frozen, so its output
for a sample is the same at every step: it is computed once (`prepare`) and training runs only the
layers from there up. That is exact, not an approximation.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from transformers_qf.core.architectures import locate, num_layers
from transformers_qf.core.capture import layer_slice, pad_batch, record_from_hidden
from transformers_qf.core.store import ParametersError
from transformers_qf.qf2.block import QF2MLP, alpha_at, convert
from transformers_qf.qf2.data import COPIES, Sample, training_order
from transformers_qf.qf2.rows import answer_rows, plain_text
from transformers_qf.solve.weights import OriginalWeight


@dataclass
class QFtConfig:
    """How a conversion runs. `trainable`: absolute layer indices (None: L-1, L, L+1).

    samples: unique training rows; copies: how often each is seen; steps: optimizer steps (None:
    samples * copies / batch_size). alpha at a step = c ** (samples seen before it)."""

    layer: int = 23
    beta: float = 10.0
    c: float = 0.99
    trainable: tuple[int, ...] | None = None
    samples: int = 3000
    copies: int = COPIES
    steps: int | None = None
    batch_size: int = 1
    lr: float = 5e-5
    loss: str = "full"  # "full": every next token of the text (the paper); "answer": the answer's tokens only
    init: str = "none"  # "lstsq" (ablation): closed-form down_proj of the firing block first, then alpha = 0
    init_tokens: int = 24000
    init_ridge: float = 1e-2
    distill: float = 0.0  # ablation: weight of keeping the last trainable layer's output equal to the original's
    residual: float = 0.0  # ablation: share of the residual kept around the finished block (paper: 0)
    seed: int = 0

    def trainable_layers(self) -> tuple[int, ...]:
        return self.trainable if self.trainable is not None else (self.layer - 1, self.layer, self.layer + 1)

    def total_steps(self) -> int:
        return self.steps if self.steps is not None else math.ceil(self.samples * self.copies / self.batch_size)

    def alpha(self, step: int) -> float:
        """The blend at optimizer step `step`: c per sample seen, as at batch 1 (0 with the lstsq start)."""
        return 0.0 if self.init == "lstsq" else alpha_at(step * self.batch_size, self.c)

    def check(self, n_layers: int) -> None:
        if not 0 <= self.layer < n_layers:
            raise ValueError(f"layer {self.layer} is out of range: this model has {n_layers} layers (0..{n_layers - 1})")
        bad = [i for i in self.trainable_layers() if not 0 <= i < n_layers]
        if bad:
            raise ValueError(f"trainable layers {bad} are out of range: this model has layers 0..{n_layers - 1}")
        if self.loss not in ("full", "answer") or self.init not in ("none", "lstsq"):
            raise ValueError(f"loss must be full|answer and init none|lstsq, got {self.loss!r} / {self.init!r}")
        if not 0 <= self.c < 1 or self.beta <= 0 or self.lr <= 0 or self.total_steps() < 1 or self.batch_size < 1:
            raise ValueError("need 0 <= c < 1, beta > 0, lr > 0, steps >= 1 and batch size >= 1")

    def identity(self) -> dict:
        """What makes two runs the same conversion (a checkpoint of another one is refused)."""
        out = asdict(self)
        out["trainable"] = list(self.trainable_layers())
        out["steps"] = self.total_steps()
        return out


PAPER_LR = 5e-5
PRESETS = {
    # seed 004: 3,000 facts cloned 4 times = 12,000 steps of batch 1, constant lr 5e-5, full-text loss,
    # the blend annealed from the original layer (alpha = 0.99 ** step), layers L-1..L+1 trainable.
    "paper": QFtConfig(),
    # 2 CPU cores: batch 8 x 1,500 steps = the same 12,000 samples; alpha decays per sample (0.99 ** 8 a
    # step); lr scaled by sqrt(8) for the batch (Adam's usual square-root rule).
    "cpu": QFtConfig(batch_size=8, steps=1500, lr=PAPER_LR * math.sqrt(8)),
}


def deviations(config: dict) -> list[str]:
    """How a configuration differs from the paper's batch-1 schedule, in words (empty for the paper's)."""
    paper = PRESETS["paper"].identity()
    lines = []
    steps = config["steps"]
    if config["batch_size"] != 1:
        lines.append(f"batch {config['batch_size']} x {steps} optimizer steps (paper: batch 1 x {paper['steps']} steps); "
                     f"alpha still decays per sample, c^{config['batch_size']} a step; the gradient of a step "
                     "averages its samples' token losses (paper: one sample's)")
    elif steps != paper["steps"]:
        lines.append(f"{steps} steps (paper: {paper['steps']})")
    if steps * config["batch_size"] != paper["samples"] * paper["copies"]:
        lines.append(f"{steps * config['batch_size']} samples seen (paper: {paper['samples'] * paper['copies']})")
    if config["samples"] != paper["samples"] or config["copies"] != paper["copies"]:
        lines.append(f"{config['samples']} unique rows x {config['copies']} (paper: 3000 x 4)")
    if config["lr"] != paper["lr"]:
        scaled = config["batch_size"] > 1 and math.isclose(config["lr"], PAPER_LR * math.sqrt(config["batch_size"]))
        lines.append(f"lr {config['lr']:.3g} (paper: {paper['lr']})" + (
            f", the paper's scaled by sqrt({config['batch_size']}) for the batch" if scaled else ""))
    if config["loss"] != paper["loss"]:
        lines.append("loss on the answer's tokens only (paper: every token of the text)")
    if config["init"] == "lstsq":
        lines.append("down_proj starts from its closed-form least-squares fit and alpha is 0 from the first step "
                     "(paper: annealed from the original layer)")
    if config.get("residual", 0.0):
        lines.append(f"a partial residual: the converted layer keeps {config['residual']} x its input (paper: none)")
    if config.get("distill", 0.0) > 0:
        lines.append(f"an extra distillation term (weight {config['distill']}) on the last trainable layer's output")
    for key, word in (("beta", "beta"), ("c", "alpha decay c"), ("layer", "converted layer")):
        if config[key] != paper[key]:
            lines.append(f"{word} {config[key]} (paper: {paper[key]})")
    if config["trainable"] != [config["layer"] - 1, config["layer"], config["layer"] + 1]:
        lines.append(f"trainable layers {config['trainable']} (paper: L-1, L, L+1)")
    return lines


@dataclass
class Encoded:
    """One tokenized sample: ids [n]; positions [m] whose next token is in the loss; targets [m]."""

    ids: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor


def encode_sample(tokenizer, sample: Sample, loss: str = "full") -> Encoded:
    """The text `system: ..\\nuser: ..\\nassistant: answer\\n` (one tokenizer call) and where its loss is taken:
    every next token ("full"), or the answer's tokens and the final newline ("answer")."""
    if loss == "full":
        ids = torch.tensor(tokenizer(plain_text(sample.system, sample.user, sample.answer),
                                     add_special_tokens=False)["input_ids"], dtype=torch.long)
        return Encoded(ids, torch.arange(len(ids) - 1), ids[1:].clone())
    tf = answer_rows(tokenizer, sample.system, sample.user, sample.answer).nonzero()
    return Encoded(tf.input_ids, tf.kept, tf.targets)


@dataclass
class TrainLog:
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    alpha: list[float] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    fit: dict = field(default_factory=dict)


def precision_for(device: torch.device) -> str:
    """"bf16" autocast on CUDA and on CPUs with native bf16, else "no" (float32)."""
    from transformers_qf.core.models import cpu_has_native_bf16

    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return "bf16"
    return "no"


class Conversion:
    """One QFt run on a loaded model (changed in place). precision: "bf16" (autocast, float32 trainable
    weights and optimizer) or "no" (float32 compute)."""

    def __init__(self, model, tokenizer, config: QFtConfig, precision: str | None = None):
        config.check(num_layers(model))
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.device = next(model.parameters()).device
        self.precision = precision or precision_for(self.device)
        self.start = min(min(config.trainable_layers()), config.layer)  # first layer that ever runs in training
        self.encoded: list[Encoded] = []
        self.cached: list[torch.Tensor] = []  # hidden states entering layer `start`, one [n_i, d] per sample
        self.teacher: list[torch.Tensor] = []  # the original model's output of the last trainable layer (distill)
        self.block: QF2MLP | None = None
        self.params: list[torch.nn.Parameter] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.step = 0  # optimizer steps done
        self.log = TrainLog()
        self.stop_requested = False
        self.identity: dict = {}  # what a checkpoint must match to be resumed (set by the caller)

    # -- 1. tokenize and cache the frozen bottom -----------------------------------------------------------
    @torch.no_grad()
    def prepare(self, samples: list[Sample], batch_size: int = 16, progress: bool = True) -> None:
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        self.encoded = [encode_sample(self.tokenizer, s, self.config.loss) for s in samples]
        order = sorted(range(len(self.encoded)), key=lambda i: len(self.encoded[i].ids))  # little padding
        self.cached = [None] * len(order)
        self.teacher = [None] * len(order) if self.config.distill > 0 else []
        bar = tqdm(total=len(order), desc="caching the frozen layers", unit="sample", disable=not progress)
        for b in range(0, len(order), batch_size):
            chunk = order[b:b + batch_size]
            hidden = self._bottom([self.encoded[i].ids for i in chunk])
            for i, h in zip(chunk, hidden):
                self.cached[i] = h
            if self.teacher:
                for i, h in zip(chunk, self._original_output(hidden)):
                    self.teacher[i] = h
            bar.update(len(chunk))
        bar.close()
        self.log.seconds["cache"] = self.log.seconds.get("cache", 0.0) + time.perf_counter() - t0

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def _bottom(self, sequences: list[torch.Tensor]) -> list[torch.Tensor]:
        """The hidden states entering layer `start` (the embeddings when start is 0), kept on the device."""
        batch = pad_batch(sequences).to(self.device)
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
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        return [out[i, : len(s)].detach().to(dtype).clone() for i, s in enumerate(sequences)]

    def _original_output(self, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """The output of the last trainable layer, original weights, from the hidden states entering `start`."""
        parts = locate(self.model, max(self.config.trainable_layers()))
        with self._autocast():
            recs = record_from_hidden(self.model, parts, hidden, self.start)
        return [(r.v + r.y).to(hidden[0].dtype) for r in recs]

    # -- 2. closed-form start (ablation) -----------------------------------------------------------------
    @torch.no_grad()
    def fit_down_proj(self, batch_size: int = 16) -> dict:
        """Set down_proj of layer L to the ridge least-squares map from sigmoid(beta up(x)) to the
        original layer's output v + FF(x), over up to `init_tokens` cached tokens (float64 solve).
        Returns the fit's median relative error on those tokens and on held-out ones."""
        cfg, t0 = self.config, time.perf_counter()
        parts = locate(self.model, cfg.layer)
        up = parts.up.weight.detach().float().cpu()
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
        if info:
            D = torch.linalg.lstsq(G, B, driver="gelsd").solution.T
        else:
            D = torch.cholesky_solve(B, L).T  # [d_model, d_mlp]
        OriginalWeight(parts.down).load(D)

        def rel(xs, ts):
            x, t = torch.cat(xs), torch.cat(ts)
            err = torch.linalg.norm(torch.sigmoid(cfg.beta * (x @ up.T)) @ D.T.float() - t, dim=1)
            return float((err / torch.linalg.norm(t, dim=1)).median())

        self.log.fit = {"tokens": tokens, "ridge": cfg.init_ridge, "solver": solver,
                        "median_rel_error_fit": rel(fit_x, fit_t), "median_rel_error_heldout": rel(held_x, held_t)}
        self.log.seconds["fit"] = time.perf_counter() - t0
        return self.log.fit

    # -- 3. training ----------------------------------------------------------------------------------
    def setup(self) -> None:
        """Convert the layer (alpha = the first step's), make layers L-1..L+1 trainable in float32, build AdamW."""
        cfg = self.config
        if self.block is None:
            self.block = convert(self.model, cfg.layer, beta=cfg.beta, alpha=cfg.alpha(self.step), residual=cfg.residual)
        self.params = self._trainable_params()
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.0)

    def train(self, progress: bool = True, deadline: float | None = None,
              checkpoint: Path | None = None, checkpoint_minutes: float = 15.0, until: int | None = None) -> bool:
        """Run optimizer steps until the schedule ends (or step `until`), `deadline` (time.time()) passes, or SIGTERM.
        Checkpoints into `checkpoint` every `checkpoint_minutes`. Returns True when the schedule is done."""
        from tqdm.auto import tqdm

        cfg = self.config
        if self.optimizer is None:
            self.setup()
        steps, b = cfg.total_steps(), cfg.batch_size
        order = training_order(len(self.encoded), cfg.copies, cfg.seed)
        top = _Top(self.model, self.start, max(cfg.trainable_layers()) - self.start, cfg.distill)
        self.model.train()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if _main_thread() else None
        t0 = last_save = time.perf_counter()
        bar = tqdm(total=steps, initial=self.step, desc="QFt", unit="step", disable=not progress)
        smooth = None
        try:
            while self.step < min(steps, until if until is not None else steps):
                if self.stop_requested or (deadline is not None and time.time() > deadline):
                    break
                idx = [order[(self.step * b + i) % len(order)] for i in range(b)]
                alpha = cfg.alpha(self.step)
                self.block.alpha = alpha
                batch = [t.to(self.device) if t is not None else None for t in self._collate(idx)]
                with self._autocast():
                    loss = top(*batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.params, 1.0)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                value = float(loss.detach())
                smooth = value if smooth is None else 0.98 * smooth + 0.02 * value
                self.log.steps.append(self.step), self.log.loss.append(value), self.log.alpha.append(alpha)
                self.step += 1
                bar.update(1)
                if self.step % 20 == 0:
                    bar.set_postfix(loss=f"{smooth:.3f}", alpha=f"{alpha:.3f}")
                if checkpoint is not None and time.perf_counter() - last_save > 60 * checkpoint_minutes:
                    self.save_checkpoint(checkpoint)
                    last_save = time.perf_counter()
        finally:
            bar.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.log.seconds["train"] = self.log.seconds.get("train", 0.0) + time.perf_counter() - t0
            self.block.alpha = cfg.alpha(self.step) if self.step < steps else 0.0
            self.model.eval()
        return self.step >= steps

    def finish(self) -> None:
        """The converted model for inference: alpha = 0 and nothing trainable."""
        self.block.alpha = 0.0
        self.model.eval()
        for p in self.params:
            p.requires_grad_(False)

    def _on_sigterm(self, _signum, _frame) -> None:
        self.stop_requested = True

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

    def named_trainable(self) -> dict[str, torch.nn.Parameter]:
        """The trainable parameters by a stable name, `layers.{i}.{name}`."""
        out = {}
        for i in self.config.trainable_layers():
            for name, p in locate(self.model, i).layer.named_parameters():
                out[f"layers.{i}.{name}"] = p
        return out

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
        real = torch.zeros(batch.shape[:2], dtype=torch.bool, device=batch.device)
        for r, i in enumerate(indices):
            real[r, : len(self.cached[i])] = True
        return (*out, _pad([self.teacher[i] for i in indices]), real)

    # -- 4. checkpoints -----------------------------------------------------------------------------------
    def save_checkpoint(self, folder: Path, extra: dict | None = None) -> None:
        """Trainable weights, AdamW state and the log into `folder` (replaced atomically). safetensors + JSON."""
        from safetensors.torch import save_file

        folder = Path(folder)
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tensors = {k: p.detach().float().cpu().contiguous() for k, p in self.named_trainable().items()}
        state = self.optimizer.state_dict() if self.optimizer is not None else {"state": {}, "param_groups": []}
        for idx, st in state["state"].items():
            for key, value in st.items():
                tensors[f"adam.{idx}.{key}"] = torch.as_tensor(value).detach().float().cpu().contiguous()
        save_file(tensors, str(tmp / "state.safetensors"))
        meta = {"format": 1, "step": self.step, "config": self.config.identity(), "param_groups": state["param_groups"],
                "log": asdict(self.log), "done": self.step >= self.config.total_steps(), "identity": self.identity, **(extra or {})}
        (tmp / "state.json").write_text(json.dumps(meta))
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, folder: Path) -> dict:
        """Restore weights, optimizer and log from `folder` (its configuration already checked); returns its meta."""
        from safetensors.torch import load_file

        meta = read_checkpoint(folder)
        tensors = load_file(str(Path(folder) / "state.safetensors"))
        self.step = int(meta["step"])
        if self.block is None:
            self.block = convert(self.model, self.config.layer, beta=self.config.beta, alpha=self.config.alpha(self.step),
                                 residual=self.config.residual)
        self.setup()
        with torch.no_grad():
            for name, p in self.named_trainable().items():
                p.copy_(tensors[name].to(p.device, p.dtype))
        state: dict = {"state": {}, "param_groups": meta["param_groups"]}
        for key, value in tensors.items():
            if key.startswith("adam."):
                _, idx, name = key.split(".", 2)
                state["state"].setdefault(int(idx), {})[name] = value if name == "step" else value.to(self.device)
        if state["param_groups"]:
            self.optimizer.load_state_dict(state)
        log = meta["log"]
        self.log = TrainLog(**{k: log[k] for k in ("steps", "loss", "alpha", "seconds", "fit")})
        return meta

    def summary(self) -> dict:
        return {"config": self.config.identity(), "trainable": list(self.config.trainable_layers()),
                "start_layer": self.start, "samples": len(self.encoded), "precision": self.precision,
                "steps_done": self.step, **asdict(self.log)}


def read_checkpoint(folder: Path) -> dict:
    """The meta of a checkpoint folder, or a one-line error."""
    path = Path(folder) / "state.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ParametersError(f"no readable QFt checkpoint at {folder} ({e}): run without --resume to start over") from None


def check_checkpoint(meta: dict, identity: dict) -> None:
    """Refuse a checkpoint of another configuration (model, data or schedule), naming the first difference."""
    theirs = meta.get("identity", {})
    for key in sorted(set(theirs) | set(identity)):
        if theirs.get(key) != identity.get(key):
            raise ParametersError(
                f"the checkpoint is from another configuration ({key}: {theirs.get(key)!r} there, {identity.get(key)!r} "
                "here): resume with the same options, or run without --resume to start over")


def identity_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread() and os.name != "nt"


def _pad(rows: list[torch.Tensor]) -> torch.Tensor:
    """[n_i, d] tensors, right-padded with zeros into [b, max n_i, d]."""
    out = torch.zeros(len(rows), max(len(r) for r in rows), rows[0].shape[-1], dtype=rows[0].dtype, device=rows[0].device)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


class _Top(torch.nn.Module):
    """Layers start.. of the model, its final norm and the LM head at the loss positions only.

    loss = mean cross-entropy over the loss positions of the batch + distill * mean over real positions of
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


def with_overrides(config: QFtConfig, **overrides) -> QFtConfig:
    """A copy of `config` with the options that are not None replaced."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
