"""Whether a greedy answer has collapsed: it repeats a phrase, or it is no longer a sentence.

The failure QF2 shows at a too large lr is output like "The CEO The CEO The CEO ..." or "the one '":
a phrase repeated back to back, or text that never ends its sentence. One detector, used by every
QF2 report (`collapsed` in results/qf2/*.json).
"""

from __future__ import annotations

import re

SENTENCE_END = (".", "!", "?")


def collapse_reason(answer: str) -> str | None:
    """Why `answer` counts as collapsed, or None for an intact answer.

    - "repeats": a phrase of 1-4 words directly repeated ("The The", "The CEO The CEO"), or a phrase of 3+
      words occurring twice anywhere;
    - "no sentence": empty, not starting with a letter or digit, or not ending in . ! or ? (cut off).
    """
    text = answer.strip()
    words = [w.lower().strip(".,;:!?'\"") for w in text.split()]
    words = [w for w in words if w]
    for n in range(1, 5):
        for i in range(len(words) - 2 * n + 1):
            if words[i:i + n] == words[i + n:i + 2 * n]:
                return "repeats"
    seen = set()
    for i in range(len(words) - 2):
        gram = tuple(words[i:i + 3])
        if gram in seen:
            return "repeats"
        seen.add(gram)
    if not text or not re.match(r"\w", text) or not text.endswith(SENTENCE_END):
        return "no sentence"
    return None


def collapsed(answers: list[str]) -> bool:
    """True when any of the answers has collapsed."""
    return any(collapse_reason(a) is not None for a in answers)
