"""The question in other words, written by the model itself: more wordings to fit an optimised target on.

    rewordings(model, tokenizer, "Who founded Steitum Motors?", "Steitum Motors", 2)
    # ['Who started Steitum Motors?', 'Who established Steitum Motors?']

A target fitted on one question holds for that question only (benchmarks/paraphrase_transfer.py): the
rows after the subject read it one way. Fitting it on the model's own rewordings as well asks it to hold
across wordings, with no wording taken from a benchmark. Greedy answers to a few fixed instructions; a
rewording is kept only if it names the subject exactly and is new (not the question, not one kept before).
"""

from __future__ import annotations

from .generation import greedy_batch
from .prompting import generation_prompt

INSTRUCTIONS = (
    "Rewrite this question in different words. Reply with the rewritten question only.",
    "Ask the same thing as this question, phrased another way. Reply with one question only.",
    "Paraphrase this question, keeping every name exactly as written. Reply with the question only.",
    "Say this question differently, as a curious customer would. Reply with the question only.",
    "Reword this question using other verbs and nouns, keeping the names. Reply with the question only.",
    # asked only for more than FIRST rewordings, so that runs of up to FIRST repeat as they were made
    "Ask this question the way a journalist would, keeping every name. Reply with the question only.",
    "Turn this question into a short, polite request for the same information. Reply with the request only.",
    "Ask this question again with a different sentence structure, keeping the names. Reply with the question only.",
    "Rephrase this question formally, keeping every name exactly as written. Reply with the question only.",
    "Ask the same thing in the fewest words you can, keeping the names. Reply with the question only.",
)
FIRST = 5


def rewordings(model, tokenizer, question: str, subject: str, n: int, max_new_tokens: int = 40) -> list[str]:
    """Up to n rewordings of `question` by the model (fewer when its answers repeat or drop the subject), from
    the first FIRST instructions, or from all of them when n is larger."""
    asked = INSTRUCTIONS if n > FIRST else INSTRUCTIONS[:FIRST]
    prompts = [generation_prompt("", f"{instruction}\n\n{question}") for instruction in asked]
    answers = greedy_batch(model, tokenizer, prompts, max_new_tokens, stop=["<|im_end|>"])
    kept: list[str] = []
    seen = {question.strip().lower()}
    for answer in answers:
        lines = answer.strip().splitlines()
        text = lines[0].strip().strip('"').strip() if lines else ""
        if subject in text and text.lower() not in seen:
            kept.append(text)
            seen.add(text.lower())
    return kept[:n]
