"""The fact's target put into the model's own answer to a question: more answer forms to fit a target on.

    own_answer_forms(model, tokenizer, ["Who is the founder of Steitum Motors?"], "Farid Jaramillo", "Steitum Motors")
    # ['The founder of Steitum Motors is Farid Jaramillo.']

An optimised target fitted on one answer ("Steitum Motors was founded by Farid Jaramillo.") holds where the
model answers in that form, and a paraphrase the model answers in another form ("The founder of Steitum
Motors is Jose.") keeps its own value (results/bench/benchmark.md, the layer-8 runs). This asks the model how it
answers a question, greedily, and puts the target where the model names its value: before the word of the
answer (not inside a copy of the subject) after which the target is most likely. The answer is cut after
the target: "{words before} {target}." An empty answer, or one that is only the subject, gives no form.
(A first version took only words with a capital or a digit as places: "Steitum Motors was established by
a group of individuals in 1990." then became "... individuals in Farid Jaramillo.")
"""

from __future__ import annotations

import torch

from transformers_qf.core import prompting
from transformers_qf.core.generation import greedy_batch


def own_answer_forms(model, tokenizer, questions: list[str], target: str, subject: str,
                     max_new_tokens: int = 32) -> list[str | None]:
    """Per question, the model's own answer with the target where it names its value (None: no place found)."""
    fmt = prompting.chat_format(tokenizer)
    prompts = [fmt.generation_prompt("", q) for q in questions]
    answers = greedy_batch(model, tokenizer, prompts, max_new_tokens, stop=[fmt.end])
    return [_best_form(model, tokenizer, q, answer, target, subject) for q, answer in zip(questions, answers)]


def value_places(answer: str, subject: str) -> list[int]:
    """Indices of the answer's words where a value can start: any word not within a copy of the subject."""
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
    return [i for i in range(len(words)) if i not in inside]


def value_words(answer: str, target: str, subject: str | None = None) -> list[int]:
    """Indices of the answer's words that spell its whole value: the words of `target`, widened over the
    neighbouring words that continue a name or a number (a capital or a digit first, as "Tomasz" before the
    target "Oyelaran", or "Dr." before it), never into the answer's first word or a copy of the subject. So a
    target written as a surname alone teaches the whole name the answer gives."""
    words = answer.split()
    chosen = prompting.target_words(answer, target)
    if not words or len(chosen) == len(words):
        return chosen
    inside = set(range(len(words))) - set(value_places(answer, subject)) if subject else set()

    def continues(i: int) -> bool:
        word = words[i].strip("\"'()[],;:")
        return 0 < i and i not in inside and bool(word) and (word[0].isupper() or word[0].isdigit())

    first, last = min(chosen), max(chosen)
    while first - 1 >= 0 and continues(first - 1) and not words[first - 1].endswith((",", ";", ":")):
        first -= 1
    while last + 1 < len(words) and continues(last + 1) and not words[last].endswith((".", ",", ";", ":", "!", "?")):
        last += 1
    return list(range(first, last + 1))


def form_at(answer: str, place: int, target: str) -> str:
    """The answer's words before `place`, then the target, ending the sentence."""
    before = " ".join(answer.split()[:place])
    end = "" if target.rstrip()[-1:] in ".!?" else "."
    return f"{before} {target}{end}".strip()


@torch.no_grad()
def target_logprobs(model, tokenizer, question: str, answers: list[str], target: str) -> list[float]:
    """log p of the target's words in each teacher-forced answer to the question (closed book), in one
    right-padded forward (with causal attention no position sees the padding after it)."""
    header = prompting.header_rows(tokenizer)
    forced = []
    for answer in answers:
        words = set(prompting.target_words(answer, target))
        significance = [float(i in words) for i in range(len(answer.split()))]
        forced.append(prompting.teacher_forced(tokenizer, "", question, answer, significance).nonzero())
    device = next(model.parameters()).device
    width = max(len(tf.input_ids) for tf in forced)
    ids = torch.zeros(len(forced), width, dtype=torch.long)
    mask = torch.zeros(len(forced), width, dtype=torch.long)
    for row, tf in enumerate(forced):
        ids[row, :len(tf.input_ids)] = tf.input_ids
        mask[row, :len(tf.input_ids)] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    out = []
    for row, tf in enumerate(forced):
        logp = torch.log_softmax(logits[row, tf.kept.to(device)].float(), dim=-1)
        picked = logp.gather(1, tf.targets.to(device)[:, None])[:, 0]
        out.append(float(picked[header:-1].sum()))  # the target's words only: not the turn's header nor its end
    return out


def _best_form(model, tokenizer, question: str, answer: str, target: str, subject: str) -> str | None:
    forms = [form_at(answer, place, target) for place in value_places(answer, subject)]
    if not forms:
        return None
    scores = target_logprobs(model, tokenizer, question, forms, target)
    return forms[max(range(len(forms)), key=scores.__getitem__)]
