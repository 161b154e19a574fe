"""QF2 (seed 004): the Hebbian firing update of up_proj, on a layer converted by QFt to the firing block.

    y*_t = sigmoid(beta up(x_t))      at the kept positions of the open-book pass (the fact as system)
    x'_t = the MLP input               at the same kept positions of the closed-book pass
    dW   = lr * sum_t s_t (y*_t - 0.5) x'_t^T          [d_mlp, d_model], added to up_proj.weight

Rounds are sequential, as in the original: each round's dW comes from its own rows and is added to
the weight as it is now (no re-solve). The modes mirror QF's: QF-instruct records y*, QF-update
records x', `solve(lr)` computes W' = W_now + dW (saved as `w_prime`), QF-infer-wp loads it.
Files: `layer{L}_ystar`, `_xp`, `_w` (up_proj before the first round) and `_w_prime`.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import torch

from transformers_qf.core.architectures import locate
from transformers_qf.core.capture import record
from transformers_qf.core.generation import greedy_batch
from transformers_qf.core.models import model_identity
from transformers_qf.qf.session import Respond
from transformers_qf.qf2.block import block_of
from transformers_qf.qf2.rows import answer_rows, plain_prompt
from transformers_qf.core.store import ParametersError, ParametersFolder
from transformers_qf.solve.weights import OriginalWeight

PLAIN_STOPS = ["\n", ".\n"]


@dataclass
class FiringReport:
    """One QF2 round: how close the closed-book firing sigmoid(beta W x'_t) is to the open-book y*_t over
    the round's kept positions, with W before and after the update. The rule drives each neuron to y*'s
    side of 0.5 (firing or silent), so the agreement is its aim; the gap also counts how far past or
    short of y* a neuron lands."""

    rows: int
    lr: float
    delta_rel: float  # ||dW||_F / ||W||_F
    firing_gap_before: float
    firing_gap_after: float
    agreement_before: float  # share of (position, neuron) whose closed-book firing is on y*'s side of 0.5
    agreement_after: float
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.rows} rows, lr {self.lr:g}, firing on y*'s side {self.agreement_before:.3f} -> "
                f"{self.agreement_after:.3f}, ||dW||/||W|| {self.delta_rel:.4f}")


# The faithful rule and the labelled variants reported beside it (never instead of it):
#   faithful   dW = lr sum_t s_t (y*_t - 0.5) x'_t^T                       (seed 004, eq. 3)
#   centred    x'_t minus the layer's mean MLP input over generic text: the part every row shares is
#              what pushes all other rows along (see calibration.py), so it is taken out
#   wrong-side only the neurons whose closed-book firing is on the wrong side of 0.5 are updated
VARIANTS = ("faithful", "centred", "wrong-side")


def firing_update(ystar: torch.Tensor, xp: torch.Tensor, weights: torch.Tensor, lr: float,
                  centre: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """dW = lr * sum_t s_t m_t (y*_t - 0.5) (x'_t - c)^T in float64, [d_mlp, d_model].

    ystar: [k, d_mlp]; xp: [k, d_model]; weights: [k]; centre c: [d_model] (default 0); mask m: [k, d_mlp]
    (default all ones)."""
    if not (ystar.shape[0] == xp.shape[0] == weights.shape[0]):
        raise ParametersError(f"{ystar.shape[0]} y* rows, {xp.shape[0]} x' rows and {weights.shape[0]} weights: "
                              "QF-instruct and QF-update need the same answer")
    f64 = torch.float64
    x = xp.to(f64) if centre is None else xp.to(f64) - centre.to(f64)
    target = ystar.to(f64) - 0.5
    if mask is not None:
        target = target * mask.to(f64)
    return lr * (target * weights.to(f64)[:, None]).T @ x


def wrong_side(ystar: torch.Tensor, xp: torch.Tensor, W: torch.Tensor, beta: float) -> torch.Tensor:
    """[k, d_mlp] bool: where sigmoid(beta W x'_t) is on the other side of 0.5 from y*_t."""
    firing = torch.sigmoid(beta * (xp.double() @ W.double().T))
    return (firing > 0.5) != (ystar.double() > 0.5)


def _closeness(ystar: torch.Tensor, firing: torch.Tensor) -> tuple[float, float]:
    """Mean |firing - y*| and the share of entries on the same side of 0.5."""
    ystar = ystar.double()
    return float((firing - ystar).abs().mean()), float(((firing > 0.5) == (ystar > 0.5)).double().mean())


class QF2(Respond):
    """qfmode on the firing block of a QFt-converted model (see qft.py); sequential Hebbian rounds."""

    def __init__(self, model, tokenizer, folder: str | os.PathLike | None = "parameters", identity: dict | None = None,
                 fresh: bool = False, lr: float = 4e-4, max_new_tokens: int = 32, variant: str = "faithful",
                 centre: torch.Tensor | None = None):
        if variant not in VARIANTS:
            raise ParametersError(f"unknown QF2 variant {variant!r}: use one of {', '.join(VARIANTS)}")
        if variant == "centred" and centre is None:
            raise ParametersError("the centred variant needs the layer's mean input (calibration.mean_input)")
        self.variant, self.centre = variant, centre
        self.model, self.tokenizer = model, tokenizer
        self.block = block_of(model)  # one-line error if the model was not converted
        self.beta = self.block.beta
        self.parts = locate(model, model.config.qf2["layer"])
        self.layer = self.parts.index
        self.lr = lr
        self.max_new_tokens = max_new_tokens
        self.folder = ParametersFolder(folder, self.layer, identity or model_identity(model), method="QF2", fresh=fresh)
        self._original: OriginalWeight | None = None  # up_proj as it was before the first round
        self.applied_rounds = 0
        self.last_report: FiringReport | None = None

    # -- the modes ----------------------------------------------------------------------------------
    def instruct(self, system: str, user: str, answer: str, significance=None) -> torch.Tensor:
        """Open-book pass: record y* at the kept positions; save up_proj's W at the first round."""
        rounds = self.folder.rounds
        if rounds and rounds[-1].get("update_rows") is None:
            raise ParametersError("the last QF-instruct has no QF-update yet: run QF-update for it first")
        tf, x = self._capture(system, user, answer, significance)
        ystar = torch.sigmoid(self.beta * (x.double() @ self._weight().double().T)).float()
        if not self.folder.has("w"):
            self.folder.set_dtype(self.parts.up.weight.dtype)
            self.folder.save("w", self._original_up().original)
        self.folder.append({"ystar": ystar}, {
            "new_round": True, "system": system, "user": user, "answer": answer,
            "significance": None if significance is None else [float(s) for s in significance],
            "targets": tf.targets.tolist(), "weights": tf.weights.tolist(), "instruct_rows": len(ystar),
            "update_rows": None,
        })
        return ystar

    def update(self, user: str, answer: str, significance=None, system: str = "") -> torch.Tensor:
        """Closed-book pass: record x' for the pending round."""
        rounds = self.folder.rounds
        if not rounds or rounds[-1].get("update_rows") is not None:
            raise ParametersError("QF-update has no matching QF-instruct rows: run QF-instruct with the fact first")
        tf, x = self._capture(system, user, answer, significance)
        if tf.targets.tolist() != rounds[-1]["targets"] or tf.weights.tolist() != rounds[-1]["weights"]:
            raise ParametersError("QF-update's answer tokens or significances differ from its QF-instruct's: "
                                  "give the same answer and significance to both")
        self.folder.append({"xp": x.float()}, {"update_rows": len(x), "update_system": system})
        return x

    @torch.no_grad()
    def solve(self, lr: float | None = None) -> FiringReport:
        """W' = the weight now + dW of the last round (its rows only); saved as w_prime, not yet applied."""
        t0 = time.perf_counter()
        lr = self.lr if lr is None else lr
        rounds = self.folder.rounds
        if not rounds or rounds[-1].get("update_rows") is None:
            raise ParametersError("no finished round: run QF-instruct and QF-update before solving")
        k = rounds[-1]["instruct_rows"]
        ystar, xp = self.folder.load("ystar")[-k:], self.folder.load("xp")[-k:]
        weights = torch.tensor(rounds[-1]["weights"], dtype=torch.float64)
        W = self._weight().double().cpu()
        mask = wrong_side(ystar, xp, W, self.beta) if self.variant == "wrong-side" else None
        dW = firing_update(ystar, xp, weights, lr, centre=self.centre if self.variant == "centred" else None,
                           mask=mask)
        W_new = W + dW
        stored = W_new.to(self.parts.up.weight.dtype)
        before, after = (_closeness(ystar, torch.sigmoid(self.beta * (xp.double() @ w.T))) for w in (W, stored.double()))
        report = FiringReport(rows=k, lr=lr, delta_rel=float(dW.norm() / W.norm()), firing_gap_before=before[0],
                              firing_gap_after=after[0], agreement_before=before[1], agreement_after=after[1],
                              seconds=time.perf_counter() - t0)
        rounds[-1].update({"lr": lr, "solve": report.as_dict()})
        self.folder.manifest["w_prime_rounds"] = len(rounds)
        self.folder.save("w_prime", stored)
        self.last_report = report
        return report

    def apply(self) -> None:
        """Put the latest W' into up_proj (once per solve); revert() puts the original back."""
        solved = self.folder.manifest.get("w_prime_rounds", 0)
        if not solved:
            raise ParametersError("no W' yet: run QF-instruct, QF-update and solve() before QF-infer-wp")
        if self.applied_rounds == solved:
            return
        self._original_up().load(self.folder.load("w_prime"))
        self.applied_rounds = solved

    def revert(self) -> None:
        if self._original is not None:
            self._original.restore()
        self.applied_rounds = 0

    @property
    def weights_name(self) -> str:
        return "W" + "'" * self.applied_rounds

    # -- generation and scoring -----------------------------------------------------------------------
    def generate(self, system: str, user: str, max_new_tokens: int | None = None) -> str:
        """Greedy answer in the plain format, up to the end of the line."""
        prompt = plain_prompt(system, user)
        return greedy_batch(self.model, self.tokenizer, [prompt], max_new_tokens or self.max_new_tokens,
                            stop=PLAIN_STOPS)[0]

    @torch.no_grad()
    def answer_logprob(self, system: str, user: str, answer: str) -> float:
        """Sum of log p of the answer's tokens after `assistant:`, its final `.\\n` included (plain format)."""
        return float(answer_token_logprobs(self.model, self.tokenizer, system, user, answer).sum())

    # -- internals ------------------------------------------------------------------------------------
    def _capture(self, system, user, answer, significance):
        """The teacher-forced sequence (positions with significance 0 dropped) and x at its kept positions."""
        tf = answer_rows(self.tokenizer, system, user, answer, significance).nonzero()
        rec = record(self.model, self.parts, tf.input_ids)[0]
        return tf, rec.x[tf.kept.to(rec.x.device)].detach().cpu()

    def _weight(self) -> torch.Tensor:
        return self.parts.up.weight.detach()

    def _original_up(self) -> OriginalWeight:
        if self._original is None:
            self._original = OriginalWeight(self.parts.up)
        return self._original


@torch.no_grad()
def answer_token_logprobs(model, tokenizer, system: str, user: str, answer: str) -> torch.Tensor:
    """log p of each answer token (the rows QF2 keeps with all significances 1), teacher-forced. [k]"""
    tf = answer_rows(tokenizer, system, user, answer).nonzero()
    device = next(model.parameters()).device
    logits = model(input_ids=tf.input_ids.view(1, -1).to(device), use_cache=False).logits[0]
    logp = torch.log_softmax(logits[tf.kept.to(device)].float(), -1)
    return logp[torch.arange(len(tf.kept), device=device), tf.targets.to(device)].cpu()
