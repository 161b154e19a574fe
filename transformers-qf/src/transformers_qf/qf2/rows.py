"""The plain-format text of the QFt-converted model and the rows QF2 records in it (seed 004, as the
original code does).

The text is `system: {system}\\nuser: {user}\\nassistant: {answer}\\n`, tokenized in one piece, so the
answer's final period and the newline are whatever the tokenizer makes of them (one token `.\\n` in
Qwen2's vocabulary). QFt trains on this text; QF2 teacher-forces the same text.

Which rows QF2 keeps, as the original's decode loop records them:

- the prompt's last row (predicting `assistant`) is a prefill row and is never recorded;
- the row predicting `:` (and any other header token) has significance 0 and is dropped;
- every row predicting an answer token is kept, with the significance of the word the token belongs to;
  punctuation and the final newline belong to the word before them, so the last row (predicting `.\\n`)
  carries the last word's significance.

The original's significance list is `[0, 0] + word significances`: the two zeros are the rows predicting
`assistant` and `:`. For "The CEO of Oxinnovate is Qi." on Qwen2 this keeps 10 rows, ` The` ... `.\\n`.
"""

from __future__ import annotations

import re

import torch

from transformers_qf.core.prompting import PromptError, TeacherForced, check_significance

HEADER = "assistant:"


def plain_prompt(system: str, user: str) -> str:
    """The prompt a converted model answers from: `system: ..\\nuser: ..\\nassistant:`."""
    return f"system: {system}\nuser: {user}\n{HEADER}"


def plain_text(system: str, user: str, answer: str) -> str:
    """One training/teacher-forced text: the prompt, ` {answer}` and the closing newline."""
    return f"{plain_prompt(system, user)} {answer.strip()}\n"


def answer_words(answer: str) -> list[str]:
    """The whitespace-separated words the significance list counts."""
    return answer.split()


def answer_rows(tokenizer, system: str, user: str, answer: str, significance=None) -> TeacherForced:
    """The teacher-forced text and the rows QF2 keeps in it (see the module docstring).

    input_ids: [n] the whole text; kept: [k] positions, each predicting targets[k] (an answer token),
    with weights[k] = its word's significance (0 rows included; `.nonzero()` drops them).
    """
    words = answer_words(answer)
    if not words:
        raise PromptError("the answer is empty: give the answer to teach")
    word_sig = check_significance(significance, len(words))
    text = plain_text(system, user, answer)
    header_end = len(plain_prompt(system, user))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    answer_start = header_end + 1
    starts = [answer_start + m.start() for m in re.finditer(r"\S+", answer.strip())]
    first = next((j for j, (_, end) in enumerate(offsets) if end > header_end), None)
    if first is None or first == 0:
        raise PromptError(f"the tokenizer put no token after {HEADER!r}: cannot find the answer's tokens")
    prompt_end = _header_start(offsets, header_end - len(HEADER))
    kept, weights = [], []
    for j in range(prompt_end + 1, len(ids)):  # row j-1 predicts token j; the row predicting the header's 1st token is prefill
        start, end = offsets[j]
        if end <= header_end:
            weights.append(0.0)  # predicts a header token (`:`)
        else:
            word = max(0, sum(s <= end - 1 for s in starts) - 1)  # the word holding the token's last character
            weights.append(word_sig[word])
        kept.append(j - 1)
    kept_t = torch.tensor(kept, dtype=torch.long)
    ids_t = torch.tensor(ids, dtype=torch.long)
    return TeacherForced(input_ids=ids_t, kept=kept_t, weights=torch.tensor(weights, dtype=torch.float64),
                         targets=ids_t[kept_t + 1])


def _header_start(offsets, header_char: int) -> int:
    """Index of the first token of `assistant:` (the token whose span starts at or covers header_char)."""
    for j, (start, end) in enumerate(offsets):
        if end > header_char:
            return j
    raise PromptError("the tokenizer lost the `assistant:` header")


def final_token_id(tokenizer) -> int | None:
    """The single token the tokenizer makes of `.\\n` (Qwen2: 624), or None where it takes two."""
    ids = tokenizer(".\n", add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None
