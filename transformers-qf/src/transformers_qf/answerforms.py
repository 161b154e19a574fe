"""The fact's target put into the model's own answer to a question: more answer forms to fit a target on.

    own_answer_forms(model, tokenizer, ["Who is the founder of Steitum Motors?"], "Farid Jaramillo", "Steitum Motors")
    # ['The founder of Steitum Motors is Farid Jaramillo.']

An optimised target fitted on one answer ("Steitum Motors was founded by Farid Jaramillo.") holds where the
model answers in that form, and a paraphrase the model answers in another form ("The founder of Steitum
Motors is Jose.") keeps its own value (results/benchmark.md, the layer-8 runs). This asks the model how it
answers a question, greedily, and puts the target where the model names its value: before one of the
answer's words that starts with a capital or a digit (not inside a copy of the subject), the one after
which the target is most likely. The answer is cut after the target: "{words before} {target}." A question
whose answer has no such word gives no form.
"""

from __future__ import annotations

import torch

from . import prompting
from .generation import greedy_batch


def own_answer_forms(model, tokenizer, questions: list[str], target: str, subject: str,
                     max_new_tokens: int = 32) -> list[str | None]:
    """Per question, the model's own answer with the target where it names its value (None: no place found)."""
    prompts = [prompting.generation_prompt("", q) for q in questions]
    answers = greedy_batch(model, tokenizer, prompts, max_new_tokens, stop=["<|im_end|>"])
    return [_best_form(model, tokenizer, q, answer, target, subject) for q, answer in zip(questions, answers)]


def value_places(answer: str, subject: str) -> list[int]:
    """Indices of the answer's words where a value can start: a capital or a digit, not within the subject."""
    words = answer.split()
    inside = set()
    at = answer.find(subject)
    while at >= 0:
        pos = 0
        for i, word in enumerate(words):
            pos = answer.index(word, pos)
            if pos < at + len(subject) and pos + len(word) > at:
                inside.add(i)
            pos += len(word)
        at = answer.find(subject, at + 1)
    return [i for i, word in enumerate(words) if (word[0].isupper() or word[0].isdigit()) and i not in inside]


def form_at(answer: str, place: int, target: str) -> str:
    """The answer's words before `place`, then the target, ending the sentence."""
    before = " ".join(answer.split()[:place])
    end = "" if target.rstrip()[-1:] in ".!?" else "."
    return f"{before} {target}{end}".strip()


@torch.no_grad()
def target_logprob(model, tokenizer, question: str, answer: str, target: str) -> float:
    """log p of the target's words in the teacher-forced answer (closed book)."""
    words = set(prompting.target_words(answer, target))
    significance = [float(i in words) for i in range(len(answer.split()))]
    tf = prompting.teacher_forced(tokenizer, "", question, answer, significance).nonzero()
    device = next(model.parameters()).device
    logits = model(input_ids=tf.input_ids[None].to(device)).logits[0].float()
    logp = torch.log_softmax(logits[tf.kept.to(device)], dim=-1)
    picked = logp.gather(1, tf.targets.to(device)[:, None])[:, 0]
    header = len(prompting.encode(tokenizer, prompting.ANSWER_HEADER)) - 1
    return float(picked[header:-1].sum())  # the target's words only: not the turn's header nor its end


def _best_form(model, tokenizer, question: str, answer: str, target: str, subject: str) -> str | None:
    forms = [form_at(answer, place, target) for place in value_places(answer, subject)]
    if not forms:
        return None
    scores = [target_logprob(model, tokenizer, question, form, target) for form in forms]
    return forms[max(range(len(forms)), key=scores.__getitem__)]
