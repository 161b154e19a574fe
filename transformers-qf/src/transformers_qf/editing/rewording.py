"""The question in other words, written by the model itself: more wordings to fit an optimised target on.

    rewordings(model, tokenizer, "Who founded Steitum Motors?", "Steitum Motors", 2)
    # ['Who started Steitum Motors?', 'Who established Steitum Motors?']

A target fitted on one question holds for that question only (benchmarks/probes/paraphrase_transfer.py): the
rows after the subject read it one way. Fitting it on the model's own rewordings as well asks it to hold
across wordings, with no wording taken from a benchmark. Greedy answers to a few fixed instructions, asked
with a system turn that says to reword and never answer (`SYSTEM`: with it the model answers 1 of 200 times
instead of 35, and 3.75 rewordings a fact are kept instead of 2.70, results/bench/rewording_yield.md); a
rewording is kept only if it is a question (ends with "?"), names the subject exactly and is new (not the question,
not one kept before). The question test matters: asked to reword, the model sometimes answers instead ("Droram's
CEO is John Doe."), and fitting the fact after a user turn that states another value works against it.
"""

from __future__ import annotations

from transformers_qf.core.generation import greedy_batch
from transformers_qf.core import prompting

INSTRUCTIONS = (
    "Rewrite this question in different words. Reply with the rewritten question only.",
    "Ask the same thing as this question, phrased another way. Reply with one question only.",
    "Paraphrase this question, keeping every name exactly as written. Reply with the question only.",
    "Say this question differently, as a curious customer would. Reply with the question only.",
    "Reword this question using other verbs and nouns, keeping the names. Reply with the question only.",
    # asked only for more than FIRST rewordings (added 2026-11-25, after runs of up to FIRST were made)
    "Ask this question the way a journalist would, keeping every name. Reply with the question only.",
    "Turn this question into a short, polite request for the same information. Reply with the request only.",
    "Ask this question again with a different sentence structure, keeping the names. Reply with the question only.",
    "Rephrase this question formally, keeping every name exactly as written. Reply with the question only.",
    "Ask the same thing in the fewest words you can, keeping the names. Reply with the question only.",
)
FIRST = 5
SYSTEM = "You rewrite questions in other words. You never answer them: reply with the rewritten question only."


def prompts(question: str, n: int, system: str = SYSTEM, fmt: prompting.ChatFormat = prompting.CHATML) -> list[str]:
    """The generation prompts (in chat format `fmt`) that ask for rewordings of `question`: the first FIRST
    instructions, or all of them when n is larger. Since 2026-11-25 they carry `system` (before, the system turn
    was empty)."""
    asked = INSTRUCTIONS if n > FIRST else INSTRUCTIONS[:FIRST]
    return [fmt.generation_prompt(system, f"{instruction}\n\n{question}") for instruction in asked]


def first_line(answer: str) -> str:
    lines = answer.strip().splitlines()
    return lines[0].strip().strip('"').strip() if lines else ""


def verdict(text: str, subject: str, seen: set[str]) -> str:
    """"kept", or why a candidate rewording is not: "not a question", "subject dropped" or "repeat" (of the
    question or of one kept before: `seen` holds them lower-cased)."""
    if not text.endswith("?"):
        return "not a question"
    if subject not in text:
        return "subject dropped"
    return "repeat" if text.lower() in seen else "kept"


def rewordings(model, tokenizer, question: str, subject: str, n: int, max_new_tokens: int = 40,
               system: str = SYSTEM) -> list[str]:
    """Up to n rewordings of `question` by the model (fewer when its answers are not questions, drop the
    subject or repeat), one a prompt of `prompts`."""
    fmt = prompting.chat_format(tokenizer)
    answers = greedy_batch(model, tokenizer, prompts(question, n, system, fmt), max_new_tokens, stop=[fmt.end])
    kept: list[str] = []
    seen = {question.strip().lower()}
    for text in map(first_line, answers):
        if verdict(text, subject, seen) == "kept":
            kept.append(text)
            seen.add(text.lower())
    return kept[:n]
