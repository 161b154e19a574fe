"""Oracle QF2: the closed-book pass with the firing pattern at the kept rows overwritten by y* (no weight
change). If the model then answers, the converted model can carry the fact through its firing pattern and
any shortfall is the rule's; if it does not, the converted model is the limit, whatever the rule does.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from transformers_qf.core.architectures import locate
from transformers_qf.core.capture import record
from transformers_qf.qf2.block import block_of
from transformers_qf.qf2.rows import answer_rows


@contextmanager
def firing_overridden(model, positions: torch.Tensor, firing: torch.Tensor):
    """Within the block, the QF2 block's firing at `positions` ([k]) is `firing` ([k, d_mlp])."""
    block = block_of(model)
    block.firing_override = (positions, firing)
    try:
        yield
    finally:
        block.firing_override = None


@torch.no_grad()
def open_book_firing(model, tokenizer, system: str, user: str, answer: str) -> torch.Tensor:
    """y* = sigmoid(beta up(x)) at the answer rows of the open-book pass. [k, d_mlp]"""
    block = block_of(model)
    parts = locate(model, model.config.qf2["layer"])
    tf = answer_rows(tokenizer, system, user, answer).nonzero()
    x = record(model, parts, tf.input_ids)[0].x[tf.kept.to(next(model.parameters()).device)]
    return block.firing(x).float()


@torch.no_grad()
def _teacher_forced(model, tf) -> tuple[float, list[bool]]:
    device = next(model.parameters()).device
    logits = model(input_ids=tf.input_ids.view(1, -1).to(device), use_cache=False).logits[0, tf.kept.to(device)].float()
    logp = torch.log_softmax(logits, -1)[torch.arange(len(tf.kept), device=device), tf.targets.to(device)]
    return float(logp.sum()), (logits.argmax(-1).cpu() == tf.targets).tolist()


@torch.no_grad()
def _greedy_no_cache(model, tokenizer, ids: torch.Tensor, max_new_tokens: int) -> str:
    """Greedy continuation, one full forward a token (so a position override keeps its absolute position)."""
    device = next(model.parameters()).device
    ids = ids.to(device)
    start = len(ids)
    for _ in range(max_new_tokens):
        nxt = model(input_ids=ids.view(1, -1), use_cache=False).logits[0, -1].argmax()
        ids = torch.cat([ids, nxt.view(1)])
        text = tokenizer.decode(ids[start:], skip_special_tokens=True)
        if "\n" in text or int(nxt) == tokenizer.eos_token_id:
            break
    return tokenizer.decode(ids[start:], skip_special_tokens=True).split("\n")[0].strip()


def oracle(model, tokenizer, system: str, user: str, answer: str, max_new_tokens: int = 24) -> dict:
    """The closed-book pass without and with the open-book firing pattern at the answer rows.

    Returns log p(answer) teacher-forced (closed, oracle, open book), the share of answer tokens that are
    the argmax, and the greedy answer with the oracle firing at those positions."""
    ystar = open_book_firing(model, tokenizer, system, user, answer)
    closed = answer_rows(tokenizer, "", user, answer).nonzero()
    opened = answer_rows(tokenizer, system, user, answer).nonzero()
    lp_closed, top_closed = _teacher_forced(model, closed)
    lp_open, top_open = _teacher_forced(model, opened)
    prompt = closed.input_ids[: int(closed.kept[0]) + 1]  # through `assistant:`
    with firing_overridden(model, closed.kept, ystar):
        lp_oracle, top_oracle = _teacher_forced(model, closed)
        greedy = _greedy_no_cache(model, tokenizer, prompt, max_new_tokens)
    plain = _greedy_no_cache(model, tokenizer, prompt, max_new_tokens)
    return {"system": system, "user": user, "answer": answer, "rows": len(closed.kept),
            "logprob_closed": lp_closed, "logprob_oracle": lp_oracle, "logprob_open": lp_open,
            "argmax_closed": sum(top_closed) / len(top_closed), "argmax_oracle": sum(top_oracle) / len(top_oracle),
            "argmax_open": sum(top_open) / len(top_open), "greedy_closed": plain, "greedy_oracle": greedy}
