"""The papers' step-by-step walkthroughs: questions asked, facts learned, verdicts.

A walkthrough is a list of `Ask` and `Learn` steps. `run_walkthrough` plays it on a QF session and
returns one row per question and one record per learned fact, which `report.py` turns into the
results tables. A `Learn` step teaches a `core.facts.Fact`; QF2's learning rate for that round
belongs to the step (QF has none).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from transformers_qf.core.facts import Fact


@dataclass
class Ask:
    step: int
    system: str
    user: str
    paper: str  # what the paper reports for this step
    expect: str | None = None  # a correct answer contains this (word match, case-insensitive)
    expect_absent: str | None = None  # ... or must not contain this (a fact not yet known)
    mode: str = "QF-infer-w"


@dataclass
class Learn:
    fact: Fact
    lr: float | None = None  # QF2's learning rate for this round (QF has none)


def mentions(answer: str, phrase: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", answer, flags=re.IGNORECASE) is not None


def verdict(answer: str, ask: Ask) -> str:
    if ask.expect is not None:
        return "holds" if mentions(answer, ask.expect) else "fails"
    if ask.expect_absent is not None:
        return "holds" if not mentions(answer, ask.expect_absent) else "fails"
    return "n/a"


@dataclass
class WalkthroughResult:
    layer: int
    rows: list[dict] = field(default_factory=list)
    rounds: list[dict] = field(default_factory=list)

    @property
    def held(self) -> int:
        return sum(r["verdict"] == "holds" for r in self.rows)


def validate_steps(steps: list) -> None:
    """Raise PromptError for a fact whose answer is empty or whose significance list does not fit it."""
    from transformers_qf.core.prompting import PromptError, check_significance

    for step in steps:
        if isinstance(step, Learn):
            words = step.fact.answer.split()
            if not words:
                raise PromptError(f"the fact {step.fact.system!r} has an empty answer: give the answer to teach")
            try:
                check_significance(step.fact.significance, len(words))
            except PromptError as e:
                raise PromptError(f"fact {step.fact.answer!r}: {e}") from None


def run_walkthrough(qf, steps: list, log=print) -> WalkthroughResult:
    result = WalkthroughResult(layer=qf.layer)
    for step in steps:
        if isinstance(step, Learn):
            result.rounds.append(learn(qf, step.fact, log, step.lr))
            continue
        t0 = time.perf_counter()
        answer = qf.respond(step.system, step.user, qfmode=step.mode)
        row = {
            "step": step.step,
            "weights": qf.weights_name,
            "mode": step.mode,
            "system": step.system,
            "user": step.user,
            "paper": step.paper,
            "answer": answer,
            "expect": step.expect or (f"not {step.expect_absent}" if step.expect_absent else None),
            "verdict": verdict(answer, step),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        log(f"  step {row['step']} [{row['weights']}] {step.user!r} -> {answer!r}  ({row['verdict']})")
        result.rows.append(row)
    return result


def learn(qf, fact: Fact, log=print, lr: float | None = None) -> dict:
    """One QF round: instruct, update, solve (QF2: at learning rate `lr`); with the answer's log-probability
    around it. The record's "fact" is the fact's text with the round's lr."""
    closed_before = qf.answer_logprob("", fact.user, fact.answer)
    open_book = qf.answer_logprob(fact.system, fact.user, fact.answer)
    t0 = time.perf_counter()
    qf.instruct(fact.system, fact.user, fact.answer, fact.significance)
    t1 = time.perf_counter()
    qf.update(fact.user, fact.answer, fact.significance)
    t2 = time.perf_counter()
    report = qf.solve() if lr is None else qf.solve(lr=lr)
    qf.apply()
    closed_after = qf.answer_logprob("", fact.user, fact.answer)
    record = {
        "fact": fact.as_dict() | {"lr": lr},
        "instruct_seconds": round(t1 - t0, 3),
        "update_seconds": round(t2 - t1, 3),
        "solve": report.as_dict(),
        "logprob_closed_before": closed_before,
        "logprob_open_book": open_book,
        "logprob_closed_after": closed_after,
    }
    log(f"  learned {fact.answer!r}: {report.summary()}, "
        f"log p(answer) {closed_before:.2f} -> {closed_after:.2f} (open book {open_book:.2f})")
    return record


def probe_answer_turn(qf, user: str) -> dict:
    """What the model puts after the user turn when the prompt ends there, as in the original.

    Returns p(token) for the two tokens that follow: the original's prompt expects the answer turn's header,
    in ChatML `<|im_start|>` then `assistant`; models may open their turn differently. `after_im_start` is
    after the header's first token (the key keeps its ChatML name).
    """
    import torch

    from transformers_qf.core import prompting

    tok = qf.tokenizer
    fmt = prompting.chat_format(tok)
    ids = prompting.encode(tok, fmt.prompt("", user))
    out = {}
    for label, extra in (("after_user_turn", []), ("after_im_start", prompting.encode(tok, fmt.header)[:1])):
        with torch.no_grad():
            logits = qf.model(input_ids=torch.tensor([ids + extra], device=qf._device), use_cache=False).logits
        p = torch.softmax(logits[0, -1].float(), -1)
        top = p.topk(2)
        out[label] = [{"token": tok.decode([int(i)]), "p": round(float(v), 4)} for v, i in zip(top.values, top.indices)]
    return out
