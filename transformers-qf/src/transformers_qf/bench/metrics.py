"""Scoring answers: does an answer give the target, how varied is free text, and the run's fractions.

An answer gives a target when the target occurs in it as whole words (case-insensitive, with
whitespace normalised), a plural "s" allowed after it: "Amara Lindqvist" is in "The founder is Amara
Lindqvist.", "GPU" in "GPUs", but "412" is not in "4120" and "Lyon" not in "Lyonnais".
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter


def _normal(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


def gives(answer: str, target: str) -> bool:
    """Whether `answer` contains `target` as whole words (see module doc)."""
    target = _normal(target)
    if not target:
        raise ValueError("empty target: a target must name what a correct answer contains")
    pattern = rf"(?<!\w){re.escape(target)}(?:s|es)?(?!\w)"
    return re.search(pattern, _normal(answer)) is not None


def ngram_entropy(text: str, ns: tuple[int, ...] = (2, 3), weights: tuple[float, ...] = (2 / 3, 4 / 3)) -> float:
    """Weighted mean over n of the entropy (bits) of the text's word n-gram frequencies.

    The fluency measure of ROME/MEMIT: repetitive text ("the the the ...") scores low. 0 for text with
    fewer words than n.
    """
    words = re.findall(r"\w+", text.casefold())
    values = []
    for n, w in zip(ns, weights):
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        h = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        values.append(w * h)
    return sum(values) / len(values)


def fraction(flags) -> float | None:
    """Mean of booleans (None when there are none)."""
    flags = list(flags)
    return sum(bool(f) for f in flags) / len(flags) if flags else None


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
