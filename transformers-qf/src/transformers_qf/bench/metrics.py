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


def leaked_values(answer: str, values, own_target: str, question: str = "", before: str = "") -> list[str]:
    """The edited facts' values (targets) that a control's `answer` names as whole words (as `gives`
    matches them), in the order given. Left out, since naming them is no sign of an edit: a value that is
    the control's own target or a part of it (or has it as a part: "Gates" for "Bill Gates"), a value
    its question names (an answer repeats its question's words), and a value the unedited model's answer
    to the same prompt, `before`, names already ("Alibaba was founded by Jack Ma in 1999" is no leak of an
    invented fact's founding year 1999 when the unedited model said it too; among 1,000 facts most years
    are some fact's value)."""
    found = []
    for value in dict.fromkeys(v for v in values if _normal(v)):
        if gives(own_target, value) or gives(value, own_target) or (question and gives(question, value)):
            continue
        if before and gives(before, value):
            continue
        if gives(answer, value):
            found.append(value)
    return found


def kept(answer: str, own_target: str, values, question: str = "", before: str = "") -> bool:
    """A control is kept when its answer still gives its own target and names no edited fact's value
    (`leaked_values`, which leaves out what the unedited answer `before` named): "Microsoft was founded by
    Bill Gates and Paul Allen in 1987", after an edit whose value is 1987, is not kept."""
    return gives(answer, own_target) and not leaked_values(answer, values, own_target, question, before)


def changed(answer: str, before: str) -> bool:
    """Whether an answer differs from the unedited model's answer to the same prompt (case and
    whitespace aside)."""
    return _normal(answer) != _normal(before)


MISS_KINDS = ("part of the target", "the subject, another value", "other")


def miss_kind(answer: str, target: str, subject: str | None) -> str:
    """What an answer that does not give its target says instead (MISS_KINDS):
    - "part of the target": a whole word of it ("Wilhelmina Mun" for Wilhelmina Esposito), or a word that
      starts with the target's first 4 characters ("Weidrelf" for Weidrelt);
    - "the subject, another value": the subject's first word, in an answer that names something else
      ("The CEO of Droram is Mr. Kim.");
    - "other": neither (an answer about something else, a refusal, degenerate text)."""
    words = _normal(answer).replace(",", " ").replace(".", " ").split()
    target_words = _normal(target).split()
    stem = _normal(target)[:4]
    if any(w in words for w in target_words) or (len(stem) == 4 and any(w.startswith(stem) for w in words)):
        return MISS_KINDS[0]
    if subject and gives(answer, subject.split()[0]):
        return MISS_KINDS[1]
    return MISS_KINDS[2]


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
