"""Prompts, teacher-forced answers and the per-position significance of the QF passes.

The QF prompt is raw ChatML built by hand, with the system turn present even when empty:

    <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n

The answer is teacher-forced as `<|im_start|>assistant\n{answer}<|im_end|>\n`. The kept positions
are those that *predict* a token of that turn, from `assistant` to `<|im_end|>`; each takes the
significance of the token it predicts (a word's number for its tokens, 1 for header and closing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ANSWER_HEADER = "<|im_start|>assistant\n"
ANSWER_END = "<|im_end|>"  # the token that ends a turn
ANSWER_CLOSING = ANSWER_END + "\n"


class PromptError(ValueError):
    """An answer or significance list that cannot be turned into kept positions."""


class FactError(PromptError):
    """A fact that teaches nothing (empty, or no different from no fact at all): refused before anything is written."""


def check_fact_text(fact: str) -> None:
    """Refuse an empty or blank fact: its open-book pass would be the closed-book one."""
    if not fact or not fact.strip():
        raise FactError("the fact is empty: give the sentence to learn, e.g. qf learn \"The capital of Zubrovia is "
                        "Pelmora.\" (nothing was written)")


def chatml_prompt(system: str, user: str) -> str:
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    """The token ids of each text, no special tokens added: `tokenizer(texts, add_special_tokens=False)`.

    A fast tokenizer with no truncation or padding configured is called through its Rust backend, one
    text at a time: the same ids, at about half the time of the wrapper's batch call for an edit's
    ~20 short texts (no BatchEncoding built, no thread pool woken)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [backend.encode(text, add_special_tokens=False).ids for text in texts]


def check_significance(significance, n_words: int) -> list[float]:
    """One finite, non-negative number per whitespace-separated word; None means all ones."""
    if significance is None:
        return [1.0] * n_words
    values = list(significance)
    if len(values) != n_words:
        raise PromptError(
            f"significance has {len(values)} values but the answer has {n_words} words: give one number per "
            "whitespace-separated word"
        )
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise PromptError(f"significance value {v!r} is not a finite number >= 0: use 0 to drop a word, 1 as default")
    return [float(v) for v in values]


def answer_words(answer: str, original_tokenization: bool = False) -> list[str]:
    """The answer's whitespace-separated words as they are tokenized: with a leading space after the first
    word, or (original_tokenization) with none, as the original QF code did."""
    words = answer.split()
    if not words:
        raise PromptError("the answer has no tokens: give a non-empty answer to teacher-force")
    return [word if (i == 0 or original_tokenization) else " " + word for i, word in enumerate(words)]


def target_words(answer: str, target: str) -> list[int]:
    """Indices of the answer's words that overlap the first occurrence of `target` (case-insensitive);
    every word when the target does not occur in the answer."""
    words = answer.split()
    at = answer.lower().find(target.lower()) if target else -1
    if at < 0:
        return list(range(len(words)))
    out, pos = [], 0
    for i, word in enumerate(words):
        pos = answer.index(word, pos)
        if pos < at + len(target) and pos + len(word) > at:
            out.append(i)
        pos += len(word)
    return out


def _join_pieces(pieces: list[list[int]], weights: list[float]) -> tuple[list[int], list[float]]:
    ids: list[int] = []
    token_weights: list[float] = []
    for piece, w in zip(pieces, weights):
        ids += piece
        token_weights += [w] * len(piece)
    return ids, token_weights


def answer_tokens(
    tokenizer, answer: str, significance=None, original_tokenization: bool = False, space_first: bool = False
) -> tuple[list[int], list[float]]:
    """Token ids of the answer and the significance of each token.

    Each word is tokenized on its own, with a leading space after the first word (and before the first
    too with `space_first`, as after `assistant:` in the plain format). With `original_tokenization`
    the words are tokenized with no leading space, as the original QF code did, which teacher-forces
    "Oxinnovatewasstartedby Qi." instead of the sentence.
    """
    words = answer_words(answer, original_tokenization)
    weights = check_significance(significance, len(words))
    if space_first and not original_tokenization:
        words[0] = " " + words[0]
    return _join_pieces(encode_many(tokenizer, words), weights)


@dataclass
class TeacherForced:
    """One teacher-forced sequence and the positions QF keeps.

    input_ids: [n]; kept: [k] positions; weights: [k]; targets: [k] the token each kept position predicts.
    """

    input_ids: torch.Tensor
    kept: torch.Tensor
    weights: torch.Tensor
    targets: torch.Tensor

    def nonzero(self) -> "TeacherForced":
        """Only the positions with a positive weight (0 drops a position)."""
        keep = self.weights > 0
        if keep.all():
            return self
        return TeacherForced(self.input_ids, self.kept[keep], self.weights[keep], self.targets[keep])

    def answer_words(self, header: int, keep_end: bool = False) -> "TeacherForced":
        """Only the positions that predict the answer's words: not the `header` ones that predict the turn's
        header ("assistant\\n"), nor (unless keep_end) the one that predicts the end of the turn."""
        keep = torch.arange(len(self.kept)) >= header
        if not keep_end:
            keep &= torch.arange(len(self.kept)) != len(self.kept) - 1
        return TeacherForced(self.input_ids, self.kept[keep], self.weights[keep], self.targets[keep])

    def through_last_kept(self) -> torch.Tensor:
        """input_ids up to the last kept position: with causal attention no later token changes a kept row."""
        return self.input_ids[: int(self.kept[-1]) + 1] if len(self.kept) else self.input_ids


def teacher_forced(
    tokenizer, system: str, user: str, answer: str, significance=None, original_tokenization: bool = False
) -> TeacherForced:
    return teacher_forced_many(tokenizer, [system], user, answer, significance, original_tokenization)[0]


def teacher_forced_many(
    tokenizer, systems: list[str], user: str, answer: str, significance=None, original_tokenization: bool = False
) -> list[TeacherForced]:
    """The same question and answer after each system prompt (e.g. the fact, then none), tokenized
    with one tokenizer call in all (see `answer_tokens` for how the answer is tokenized)."""
    words = answer_words(answer, original_tokenization)
    word_weights = check_significance(significance, len(words))
    texts = [chatml_prompt(s, user) for s in systems] + [ANSWER_HEADER, ANSWER_CLOSING] + words
    pieces = encode_many(tokenizer, texts)
    prompts, (header, closing) = pieces[:len(systems)], pieces[len(systems):len(systems) + 2]
    ids, w = _join_pieces(pieces[len(systems) + 2:], word_weights)
    targets = torch.tensor(header[1:] + ids + closing[:1], dtype=torch.long)
    weights = torch.tensor([1.0] * (len(header) - 1) + w + [1.0], dtype=torch.float64)
    out = []
    for prompt in prompts:
        start = len(prompt)  # the position whose input is <|im_start|> of the answer turn
        out.append(TeacherForced(
            input_ids=torch.tensor(prompt + header + ids + closing, dtype=torch.long),
            kept=torch.arange(start, start + len(targets)),
            weights=weights,
            targets=targets,
        ))
    return out


def user_turn_start(tokenizer, prompt: str) -> int:
    """Position of the first token of the user turn (`<|im_start|>user`) in a ChatML prompt."""
    return len(encode(tokenizer, prompt.split("<|im_start|>user")[0]))


def subject_positions(tokenizer, prompt: str, user: str, subject: str | None) -> torch.Tensor:
    """Positions in `prompt` of the tokens that spell `subject` where it occurs in `user` (its last copy)."""
    if not subject:
        raise PromptError("positions 'subject' needs the fact's subject: add a \"subject\" key to the fact")
    start = prompt.rfind(user) + user.find(subject) if subject in user else -1
    if start < 0:
        raise PromptError(f"the subject {subject!r} does not occur in the question {user!r}")
    end = start + len(subject)
    offsets = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return torch.tensor([i for i, (a, b) in enumerate(offsets) if a < end and b > start])


def subject_copies(tokenizer, ids, subject: str, start: int = 0) -> torch.Tensor:
    """Positions from `start` on where a copy of `subject` ends in the token ids: where the subject's last two
    tokens (as written after a space, or at the start of a line) occur."""
    ids = [int(i) for i in ids]
    ends = {tuple(encode(tokenizer, text)[-2:]) for text in (" " + subject, subject)}
    return torch.tensor([p for p in range(start, len(ids)) for end in ends
                         if p + 1 >= len(end) and tuple(ids[p + 1 - len(end):p + 1]) == end], dtype=torch.long)


def generation_prompt(system: str, user: str, open_answer_turn: bool = True) -> str:
    """The prompt to answer from. With `open_answer_turn` it ends in `<|im_start|>assistant\\n`,
    the context the recorded passes saw; without it, it ends after the user turn like the original."""
    return chatml_prompt(system, user) + (ANSWER_HEADER if open_answer_turn else "")


# -- the plain `role: content` format of the QFt-converted model (QF2) ------------------------------------
PLAIN_HEADER = "assistant:"
PLAIN_END = "\n"


def plain_prompt(system: str, user: str, open_answer: bool = True) -> str:
    """`system: {system}\nuser: {user}\n`, and `assistant:` to answer from (the original QF2 format)."""
    return f"system: {system}\nuser: {user}\n" + (PLAIN_HEADER if open_answer else "")


def plain_teacher_forced(tokenizer, system: str, user: str, answer: str, significance=None,
                         end: bool = False) -> TeacherForced:
    """The plain-format prompt, `assistant:` and the answer (each word with its leading space), plus the
    end-of-answer newline with `end`. Kept positions predict `assistant:`, the answer's tokens (and the
    newline). A final '.' ends the answer: it is its own token and, like the header and the newline,
    takes significance 1; every other token takes its word's significance."""
    body, period = (answer.rstrip()[:-1], ".") if answer.rstrip().endswith(".") else (answer, "")
    ids, w = answer_tokens(tokenizer, body, significance, space_first=True)
    prompt, header, stop, newline = tokenizer(
        [plain_prompt(system, user, open_answer=False), PLAIN_HEADER, period, PLAIN_END], add_special_tokens=False
    )["input_ids"]
    tail = stop + (newline if end else [])
    targets = header + ids + tail
    return TeacherForced(
        input_ids=torch.tensor(prompt + targets, dtype=torch.long),
        kept=torch.arange(len(prompt) - 1, len(prompt) - 1 + len(targets)),
        weights=torch.tensor([1.0] * len(header) + w + [1.0] * len(tail), dtype=torch.float64),
        targets=torch.tensor(targets, dtype=torch.long),
    )
