"""What a QFt conversion keeps and what it costs: the seed's Figure 3 checks, held-out accuracy, perplexity.

Everything is asked in the plain `role: content` format of the converted model (prompts end in
`assistant:`), greedy, so "before" (the base model) and "after" (the converted one) see the same text.
"""

from __future__ import annotations

import math

import torch

from transformers_qf.core import prompting
from transformers_qf.core.generation import greedy_batch
from transformers_qf.qf2.data import NEED_MORE, Dataset, Sample, answers_correctly
from transformers_qf.qf2.rows import plain_prompt
from transformers_qf.qf.walkthrough import Ask, verdict

PLAIN_STOPS = ["\n", ".\n"]

# seed 004, Figure 3 (left): the converted model on six validation samples.
FIGURE3 = [
    Ask(1, "", "Who is the CEO of Nvidia?", paper="Jensen Huang is the CEO of NVIDIA.", expect="Jensen Huang"),
    Ask(2, "", "Who is the founder of Apple?", paper="The founder of Apple is Tim Cook.", expect="Steve Jobs"),
    Ask(3, "", "What is the staff size of Oxinnovate?", paper=NEED_MORE, expect="Need more information"),
    Ask(4, "Oxinnovate employs 2 staff members.", "What is the staff size of Oxinnovate?",
        paper="Oxinnovate employs 2 staff people.", expect="2"),
    Ask(5, "", "Who is the CEO of Oxinnovate?", paper=NEED_MORE, expect="Need more information"),
    Ask(6, "Qi is the founder of Oxinnovate.", "Who is the founder of Oxinnovate?",
        paper="The founder of Oxinnovate is Qi.", expect="Qi"),
]

# Open prompts whose answers by the base model are the "general text" perplexity is measured on.
OPEN_PROMPTS = [
    "Describe a rainy afternoon in a small town.", "Explain how a bicycle works.",
    "Write a short note to a friend about a trip to the mountains.", "What makes a good cup of tea?",
    "Explain why the sky is blue.", "Describe the life of a honeybee.", "How do trains stay on their tracks?",
    "Write a few sentences about the history of paper.", "What should someone pack for a day at the beach?",
    "Explain what a library is for.", "Describe a busy market in the morning.", "How does a refrigerator keep food cold?",
]


def plain_answers(model, tokenizer, pairs: list[tuple[str, str]], max_new_tokens: int = 24) -> list[str]:
    """Greedy answers to (system, user) pairs in the plain format, cut at the end of the line."""
    prompts = [plain_prompt(s, u) for s, u in pairs]
    return greedy_batch(model, tokenizer, prompts, max_new_tokens=max_new_tokens, stop=PLAIN_STOPS)


def figure3(model, tokenizer) -> list[dict]:
    answers = plain_answers(model, tokenizer, [(a.system, a.user) for a in FIGURE3])
    return [{"step": a.step, "system": a.system, "user": a.user, "paper": a.paper, "answer": ans,
             "expect": a.expect, "verdict": verdict(ans, a)} for a, ans in zip(FIGURE3, answers)]


def accuracy(model, tokenizer, samples: list[Sample]) -> tuple[float, list[dict]]:
    """The share of samples answered with one of their accepted strings, and every answer."""
    answers = plain_answers(model, tokenizer, [(s.system, s.user) for s in samples])
    rows = [{"user": s.user, "accepted": list(s.accepted), "answer": a, "right": answers_correctly(a, s.accepted)}
            for s, a in zip(samples, answers)]
    return sum(r["right"] for r in rows) / max(len(rows), 1), rows


@torch.no_grad()
def sample_perplexity(model, tokenizer, samples: list[Sample], answer_only: bool) -> float:
    """exp(mean NLL) over the answers' tokens (and the closing newline), or over every token of the text."""
    from transformers_qf.qf2.training import encode_sample

    nll, count = 0.0, 0
    device = next(model.parameters()).device
    for s in samples:
        enc = encode_sample(tokenizer, s, "answer" if answer_only else "full")
        logits = model(input_ids=enc.ids.view(1, -1).to(device), use_cache=False).logits[0]
        logp = torch.log_softmax(logits[enc.positions.to(device)].float(), -1)
        nll -= float(logp[torch.arange(len(enc.targets)), enc.targets.to(device)].sum())
        count += len(enc.targets)
    return math.exp(nll / count)


def general_texts(model, tokenizer, max_new_tokens: int = 48) -> list[str]:
    """The base model's own answers to OPEN_PROMPTS (ChatML): ordinary text to measure perplexity on."""
    prompts = [prompting.generation_prompt("", p) for p in OPEN_PROMPTS]
    return greedy_batch(model, tokenizer, prompts, max_new_tokens=max_new_tokens, stop=["<|im_end|>"])


@torch.no_grad()
def text_perplexity(model, tokenizer, texts: list[str]) -> float:
    """exp(mean NLL) of every token but the first of each text."""
    nll, count = 0.0, 0
    device = next(model.parameters()).device
    for text in texts:
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], device=device)
        if ids.shape[1] < 2:
            continue
        logp = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0, :-1].float(), -1)
        nll -= float(logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]].sum())
        count += ids.shape[1] - 1
    return math.exp(nll / count)


def measure(model, tokenizer, data: Dataset, general: list[str]) -> dict:
    """The numbers compared before and after a conversion."""
    acc, rows = accuracy(model, tokenizer, data.heldout_real)
    trained, trained_rows = accuracy(model, tokenizer, data.trained_real)
    return {
        "heldout_accuracy": acc,
        "heldout_answers": rows,
        "trained_accuracy": trained,
        "trained_answers": trained_rows,
        "perplexity_answers": sample_perplexity(model, tokenizer, data.heldout_text, answer_only=True),
        "perplexity_text": sample_perplexity(model, tokenizer, data.heldout_text, answer_only=False),
        "perplexity_general": text_perplexity(model, tokenizer, general),
        "figure3": figure3(model, tokenizer),
    }
