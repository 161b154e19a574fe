"""One sentence is enough: the question it answers, its value (the target) and its subject, derived.

    derive("The capital of Zubrovia is Pelmora.")
    # Derived(question='What is the capital of Zubrovia?', target='Pelmora', subject='Zubrovia', how='template')

A sentence of the form "The R of S is O." (or "O is the R of S.") is turned into "What/Who is the R of S?"
by a template: the same sentence always gives the same question. Any other sentence is rewritten into a
question by the model itself, greedily, as editing/rewording.py asks it for rewordings; its reply is kept
only if it is a question. The taught answer is the sentence itself (the open book is the sentence, the
closed book is nothing). The target is the longest run of the sentence's words that the question does
not contain (less leading links such as "by"); the subject the longest run of capitalised words the two share.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transformers_qf.core.generation import greedy_batch
from transformers_qf.core.prompting import FactError, chat_format, check_fact_text
from transformers_qf.editing.rewording import first_line

# relations whose value is a person: asked with "Who"
PERSON = {"ceo", "founder", "co-founder", "president", "director", "author", "chairman", "chair", "head", "leader",
          "mayor", "king", "queen", "inventor", "creator", "owner", "wife", "husband", "mother", "father", "manager",
          "coach", "captain", "chief executive", "designer", "architect", "composer", "painter", "writer"}
OF_FORM = re.compile(r"^the (?P<relation>[\w' -]+?) of (?P<subject>.+?) (?P<verb>is|was|are|were) (?P<value>.+?)[.!]?$",
                     re.IGNORECASE)
IS_THE_FORM = re.compile(r"^(?P<value>.+?) (?P<verb>is|was|are|were) the (?P<relation>[\w' -]+?) of (?P<subject>.+?)[.!]?$",
                         re.IGNORECASE)
LINKS = {"by", "in", "at", "on", "of", "to", "from", "is", "was", "are", "were", "the", "a", "an", "as"}  # not a value's
SYSTEM = "You turn a statement into the question it answers. You never answer: reply with the question only."
INSTRUCTION = "Write the question that this statement answers, keeping every name exactly as written. Reply with the question only."


@dataclass(frozen=True)
class Derived:
    question: str
    target: str
    subject: str | None
    how: str  # "template" or "model"


def derive(sentence: str, model=None, tokenizer=None, max_new_tokens: int = 40) -> Derived:
    """The question `sentence` answers, its target and subject (see the module doc). Without a model only the
    template's sentences can be derived; FactError otherwise."""
    check_fact_text(sentence)
    sentence = " ".join(sentence.split())
    templated = _template(sentence)
    if templated is not None:
        return templated
    if model is None:
        raise FactError(f"cannot tell the question {sentence!r} answers: give --user QUESTION (and --assistant ANSWER)")
    fmt = chat_format(tokenizer)
    prompt = fmt.generation_prompt(SYSTEM, f"{INSTRUCTION}\n\n{sentence}")
    question = first_line(greedy_batch(model, tokenizer, [prompt], max_new_tokens, stop=[fmt.end])[0])
    if not question.endswith("?") or question.rstrip("?").strip().lower() == sentence.rstrip(".!").lower():
        raise FactError(f"the model did not turn {sentence!r} into a question (it said {question!r}): "
                        "give --user QUESTION and --assistant ANSWER")
    return Derived(question, value_of(sentence, question), subject_of(sentence, question), "model")


def _template(sentence: str) -> Derived | None:
    m = OF_FORM.match(sentence) or IS_THE_FORM.match(sentence)
    if m is None:
        return None
    relation, subject, verb, value = m["relation"], m["subject"], m["verb"].lower(), m["value"]
    ask = "Who" if relation.lower() in PERSON or relation.lower().split()[-1] in PERSON else "What"
    return Derived(f"{ask} {verb} the {relation} of {subject}?", value, subject, "template")


def _words(text: str) -> list[str]:
    return re.findall(r"[\w'-]+", text)


def value_of(sentence: str, question: str) -> str:
    """The longest run of the sentence's words that the question does not contain (the sentence when none)."""
    asked = {w.lower() for w in _words(question)}
    best: list[str] = []
    run: list[str] = []
    for word in _words(sentence) + [""]:
        if word and word.lower() not in asked:
            run.append(word)
            continue
        if len(run) > len(best):
            best = run
        run = []
    while len(best) > 1 and best[0].lower() in LINKS:
        best = best[1:]
    return " ".join(best) if best else sentence


def subject_of(sentence: str, question: str) -> str | None:
    """The longest run of capitalised words of the sentence that the question spells too (None when none)."""
    best: list[str] = []
    run: list[str] = []
    for word in _words(sentence) + [""]:
        if word[:1].isupper() and word in question:
            run.append(word)
            continue
        if len(run) > len(best):
            best = run
        run = []
    if best and best[0] == "The" and len(best) > 1:
        best = best[1:]
    return " ".join(best) if best and " ".join(best) in question else None
