"""lr calibration of QF2 from model-free quantities (no generation).

After dW = lr sum_t s_t (y*_t - 0.5) x'_t^T, the pre-activation of neuron i at a row u moves by

    beta * lr * sum_t s_t (y*_ti - 0.5) (x'_t . x'_u)      logits (times beta inside the sigmoid),

so a row's own push is lr * s_t * |x'_t|^2 * beta / 2 (|y* - 0.5| ~ 1/2), and row t pushes row u by
the same times x'_t.x'_u / |x'_t|^2. Where the rows' inputs share a large common part (high cosine), a
heavy row moves every other row, and rows of other prompts, as much as its own: the rule then writes
one firing pattern over all of them. This module measures |x'|^2 and the cosines, and the lr at
which a row of significance 1 gets a given push.
"""

from __future__ import annotations

import torch

from transformers_qf.core.architectures import locate
from transformers_qf.core.capture import record
from transformers_qf.qf2.rows import answer_rows


@torch.no_grad()
def kept_inputs(model, tokenizer, system: str, user: str, answer: str, significance=None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """x (the MLP input of the QF2 layer) at the kept rows, float64 [k, d_model], and their significances [k]."""
    parts = locate(model, model.config.qf2["layer"])
    tf = answer_rows(tokenizer, system, user, answer, significance).nonzero()
    x = record(model, parts, tf.input_ids)[0].x[tf.kept.to(next(model.parameters()).device)]
    return x.double().cpu(), tf.weights


@torch.no_grad()
def mean_input(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """The layer's mean MLP input over every token of `texts` (generic text), float64 [d_model]."""
    parts = locate(model, model.config.qf2["layer"])
    seqs = [torch.tensor(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts if t.strip()]
    xs = torch.cat([r.x.double().cpu() for r in record(model, parts, seqs)])
    return xs.mean(0)


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[len(a), len(b)] cosine similarities of rows."""
    a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    return a @ b.T


def pushes(x: torch.Tensor, s: torch.Tensor, lr: float, beta: float, onto: torch.Tensor | None = None) -> torch.Tensor:
    """push[u, t] = lr * s_t * (x_t . x_u) * beta / 2 logits: how far row t's update moves row u. [len(onto), k]"""
    onto = x if onto is None else onto
    return lr * beta / 2 * (onto @ x.T) * s.double()[None, :]


def lr_for_push(norm2: float, beta: float, logits: float = 4.0) -> float:
    """The lr at which a row with |x'|^2 = norm2 and significance 1 gets its own push of `logits`."""
    return 2 * logits / (beta * norm2)


def _r(t: torch.Tensor, digits: int = 3) -> list:
    return torch.round(t, decimals=digits).tolist()


def calibrate(model, tokenizer, rounds: list, probe: tuple[str, str], beta: float, texts: list[str]) -> dict:
    """For each round (a walkthrough Learn step: a fact with its significance, and the round's lr) and the probe
    (user, answer) of another prompt: |x'|^2 of the kept rows, their cosine matrix, the cosines to the probe's
    rows, the pushes at the round's lr, and the same after centring (x' minus the mean input over `texts`)."""
    centre = mean_input(model, tokenizer, texts)
    px, _ = kept_inputs(model, tokenizer, "", *probe)
    out = {"beta": beta, "probe": {"user": probe[0], "answer": probe[1], "rows": len(px),
                                   "norm2": _r(px.square().sum(1), 1)},
           "mean_input_norm2": float(centre.square().sum()), "facts": []}
    for fact, lr in ((r.fact, r.lr) for r in rounds):
        x, s = kept_inputs(model, tokenizer, "", fact.user, fact.answer, fact.significance)
        toks = answer_rows(tokenizer, "", fact.user, fact.answer, fact.significance).nonzero().targets
        norm2 = x.square().sum(1)
        push = pushes(x, s, lr, beta)
        own = push.diagonal()
        cross = push - torch.diag(own)
        probe_push = pushes(x, s, lr, beta, onto=px)
        xc, pc = x - centre, px - centre
        push_c = pushes(xc, s, lr, beta)
        out["facts"].append({
            "answer": fact.answer, "lr": lr, "significance": s.tolist(),
            "tokens": [tokenizer.decode([int(t)]) for t in toks],
            "norm2": _r(norm2, 1), "cosine": _r(cosines(x, x)), "cosine_to_probe": _r(cosines(x, px)),
            "own_push": _r(own, 2), "max_cross_push": _r(cross.abs().max(1).values, 2),
            "total_push_on_row": _r(push.sum(1), 2), "total_push_on_probe_rows": _r(probe_push.sum(1), 2),
            "centred": {"norm2": _r(xc.square().sum(1), 1), "cosine": _r(cosines(xc, xc)),
                        "cosine_to_probe": _r(cosines(xc, pc)), "own_push": _r(push_c.diagonal(), 2),
                        "total_push_on_row": _r(push_c.sum(1), 2)},
            "lr_for_4_logits": lr_for_push(float(norm2.median()), beta, 4.0),
        })
    return out
