"""The methods compared on the benchmark, behind one small interface.

    method.edit(fact) -> dict          put the fact into the model (or not); what it cost and changed
    method.system_for(fact) -> str     the system turn to answer the fact's questions with ("" but in-context)
    method.reset()                     the model as loaded again
    method.state_dict() -> {name: tensor}   what the edits so far left ({} when nothing: no edit)
    method.load_state_dict(state)      go on from there (a resumed sequential run)
    method.hold(turns) -> dict         qf only: put (system, user, answer) conversations back as the original
                                       weights have them, through every later edit (a drift guard's re-solve)

- `none`: no edit (the floor).
- `in-context`: the fact in the system turn when its questions are asked (the ceiling QF aims at).
- `qf`: QF and its variants (`editor.Editor`).
- `ft`: fine-tuning the same down_proj on the answer with Adam (FT-L of the ROME paper).
"""

from __future__ import annotations

import time
import torch

from transformers_qf.core import prompting
from transformers_qf.core.architectures import locate
from transformers_qf.core.capture import layer_slice
from transformers_qf.editing.editor import EditConfig, Editor
from transformers_qf.solve.keyed import KeyMetric
from transformers_qf.solve.weights import OriginalWeight
from transformers_qf.core.facts import Fact


class NoEdit:
    name = "none"
    layers: tuple[int, ...] = ()

    def edit(self, fact: Fact) -> dict:
        return {"seconds": 0.0}

    def system_for(self, fact: Fact) -> str:
        return ""

    def reset(self) -> None:
        pass

    def config(self) -> dict:
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def hold(self, turns: list[tuple[str, str, str]]) -> dict:
        raise NotImplementedError(f"method {self.name} cannot hold rows: a re-solving guard needs --method qf")


class InContext(NoEdit):
    name = "in-context"

    def system_for(self, fact: Fact) -> str:
        return fact.system


class QFEdit(NoEdit):
    """QF as configured by an EditConfig: re-solves every learned fact from the original weights."""

    name = "qf"

    def __init__(self, model, tokenizer, config: EditConfig, metrics: dict[int, KeyMetric] | None = None,
                 label: str = "qf"):
        self.editor = Editor(model, tokenizer, config, metrics)
        self.layers = tuple(self.editor.layers)
        self.edit_config = config
        self.name = label

    def edit(self, fact: Fact) -> dict:
        report = self.editor.learn(fact.system, fact.user, fact.answer, fact.significance, fact.subject, fact.target)
        fitted = self.edit_config.target_wordings or self.edit_config.target_templates
        extra = {"rewordings": self.editor.last_rewordings} if fitted else {}
        if self.edit_config.target_forms:
            extra["forms"] = self.editor.last_forms
        if self.editor.last_target_losses:
            extra["target_loss"] = self.editor.last_target_losses[-1]
            extra["target_steps"] = len(self.editor.last_target_losses)
            extra["target_losses"] = [round(x, 4) for x in self.editor.last_target_losses]
        return {"seconds": report.seconds, "rows": report.rows, "residual": report.residual,
                "delta_rel": report.delta_rel, "solves": report.layers, "timings": report.timings, **extra}

    def reset(self) -> None:
        self.editor.reset()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.editor.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.editor.load_state_dict(state)

    def hold(self, turns: list[tuple[str, str, str]]) -> dict:
        return self.editor.hold(turns)

    def config(self) -> dict:
        return self.edit_config.as_dict()


class FineTune(NoEdit):
    """FT-L: Adam on one layer's down_proj, maximising log p(answer) closed-book (teacher-forced).

    The change is kept in float32 beside the weight during the steps (a bf16 weight would round small
    steps away) and added once at the end. With `norm_constraint` every entry of the accumulated change
    stays within +-norm_constraint, as in ROME's FT-L. Layers below L are run once per edit (no grad).
    """

    name = "ft"

    def __init__(self, model, tokenizer, layer: int, steps: int = 25, lr: float = 5e-4,
                 norm_constraint: float | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.parts = locate(model, layer)
        self.layers = (self.parts.index,)
        self.steps, self.lr, self.norm_constraint = steps, lr, norm_constraint
        self.weight = OriginalWeight(self.parts.down)
        self.original = self.weight.original
        self.total = torch.zeros(self.original.shape, dtype=torch.float32, device=self.original.device)

    def config(self) -> dict:
        return {"layers": list(self.layers), "steps": self.steps, "lr": self.lr, "norm_constraint": self.norm_constraint}

    def reset(self) -> None:
        self.weight.restore()
        self.total.zero_()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"total": self.total, "weight": self.parts.down.weight.detach()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.total.copy_(state["total"])
        self.weight.load(state["weight"])

    def edit(self, fact: Fact) -> dict:
        t0 = time.perf_counter()
        tf = prompting.teacher_forced(self.tokenizer, "", fact.user, fact.answer, fact.significance).nonzero()
        device = self.original.device
        ids = tf.input_ids.view(1, -1).to(device)
        hidden = self._input_of_layer(ids)
        positions = (tf.kept).to(device)
        targets = tf.targets.to(device)
        delta = torch.zeros_like(self.total, requires_grad=True)
        optimiser = torch.optim.Adam([delta], lr=self.lr)
        down = self.parts.down
        handle = down.register_forward_hook(lambda _m, args, out: out + (args[0].float() @ delta.T).to(out.dtype))
        losses = []
        try:
            with layer_slice(self.model, self.parts.index) as base:
                for _ in range(self.steps):
                    optimiser.zero_grad()
                    states = base(inputs_embeds=hidden, use_cache=False).last_hidden_state[0, positions]
                    logits = self.model.lm_head(states).float()
                    loss = torch.nn.functional.cross_entropy(logits, targets)
                    loss.backward()
                    optimiser.step()
                    if self.norm_constraint is not None:
                        with torch.no_grad():
                            delta.copy_((self.total + delta).clamp(-self.norm_constraint, self.norm_constraint)
                                        - self.total)
                    losses.append(float(loss.detach()))
        finally:
            handle.remove()
        with torch.no_grad():
            self.total += delta.detach()
            self.weight.load(self.original.float() + self.total)
            delta_rel = float(torch.linalg.norm(self.total) / torch.linalg.norm(self.original.float()))
        return {"seconds": time.perf_counter() - t0, "rows": int(len(positions)), "loss_first": losses[0],
                "loss_last": losses[-1], "delta_rel": delta_rel}

    @torch.no_grad()
    def _input_of_layer(self, ids: torch.Tensor) -> torch.Tensor:
        """The hidden states entering layer L ([1, n, d_model]), from a forward stopped there."""
        seen = {}

        class _Stop(Exception):
            pass

        def grab(_module, args, kwargs):
            seen["h"] = args[0] if args else kwargs["hidden_states"]
            raise _Stop

        handle = self.parts.layer.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            self.model.model(input_ids=ids, use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        return seen["h"].detach()
