"""Prompts, teacher-forced answers and the per-position significance of the QF passes.

The chat format is the tokenizer's own: `chat_format(tokenizer)` renders the tokenizer's chat template
once with placeholder texts and cuts it into the pieces around the system text, the question and the
answer (a `ChatFormat`). A tokenizer with no template gets raw ChatML, the paper's format, with the
system turn present even when empty:

    <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n

The templates of both bundled models (Qwen2.5-Coder, SmolLM2) render exactly this when a system turn is
given, so their prompts are the paper's ChatML byte for byte; a system turn is always given (empty when
there is no fact), which also keeps a template's default system prompt out.

The answer is teacher-forced as `{header}{answer}{closing}`, in ChatML `<|im_start|>assistant\n{answer}<|im_end|>\n`.
The kept positions are those that *predict* a token of that turn, from the header's second token
(`assistant`) to the closing's first (`<|im_end|>`); each takes the significance of the token it predicts
(a word's number for its tokens, 1 for header and closing).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChatFormat:
    """The texts around the system text, the question and the answer in one chat format.

    prompt = system_open + system + system_close + user_open + user + user_close; the answer turn is
    header + answer + closing. `system_close` is empty when the template does not show where the system
    turn ends (then the user turn starts right after the system text).
    """

    system_open: str
    system_close: str
    user_open: str
    user_close: str
    header: str
    closing: str

    @property
    def end(self) -> str:
        """The text that ends an answer turn (generation stops there): the closing without its trailing newline."""
        return self.closing.strip() or self.closing

    def prompt(self, system: str, user: str) -> str:
        """The system turn (present even when empty) and the user turn, up to where the answer turn opens."""
        return f"{self.system_open}{system}{self.system_close}{self.user_open}{user}{self.user_close}"

    def generation_prompt(self, system: str, user: str, open_answer_turn: bool = True) -> str:
        """The prompt to answer from. With `open_answer_turn` it ends in the answer turn's header (ChatML:
        `<|im_start|>assistant\\n`), the context the recorded passes saw; without it, after the user turn
        like the original."""
        return self.prompt(system, user) + (self.header if open_answer_turn else "")

    def conversation(self, system: str, user: str, answer: str) -> str:
        """The whole exchange: the prompt, the answer turn and its closing."""
        return self.prompt(system, user) + self.header + answer + self.closing


CHATML = ChatFormat(system_open="<|im_start|>system\n", system_close="<|im_end|>\n", user_open="<|im_start|>user\n",
                    user_close="<|im_end|>\n", header="<|im_start|>assistant\n", closing="<|im_end|>\n")

# The paper's raw ChatML by name (its scripts and tests); code that has a tokenizer uses chat_format(tokenizer).
ANSWER_HEADER = CHATML.header
ANSWER_END = CHATML.end  # the token that ends a turn
ANSWER_CLOSING = CHATML.closing


# Placeholder texts rendered through a template and found again in its output.
_SYSTEM, _USER, _ANSWER = "QFSYSTEMTEXTQF", "QFUSERTEXTQF", "QFANSWERTEXTQF"
_FORMATS: "weakref.WeakKeyDictionary[object, tuple[object, ChatFormat]]" = weakref.WeakKeyDictionary()


def chat_format(tokenizer) -> ChatFormat:
    """The tokenizer's chat format, cut from its own chat template (computed once per tokenizer and template);
    raw ChatML when the tokenizer has no template."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return CHATML
    cached = _FORMATS.get(tokenizer)
    if cached is not None and cached[0] == template:
        return cached[1]
    fmt = _cut_template(tokenizer)
    _FORMATS[tokenizer] = (template, fmt)
    return fmt


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # a template raises what it likes (jinja's TemplateError, its own raise_exception)
        roles = "/".join(m["role"] for m in messages)
        raise ChatTemplateError(f"the tokenizer's chat template does not render a {roles} conversation "
                                f"({str(e).splitlines()[0] if str(e) else type(e).__name__}): give the model a "
                                "template with system, user and assistant turns, or none for ChatML") from None


def _cut(text: str, marker: str, what: str) -> tuple[str, str]:
    """`text` split at its one copy of `marker`."""
    if text.count(marker) != 1:
        raise ChatTemplateError(f"the tokenizer's chat template does not show the {what} exactly once in its "
                                "output, so QF cannot cut it into turns: give the model a template that writes each "
                                "message's text as given, or none for ChatML")
    before, after = text.split(marker)
    return before, after


def _cut_template(tokenizer) -> ChatFormat:
    """The pieces of the tokenizer's template, found by rendering placeholder texts: a system + user prompt, the
    same with an answer (its header and closing), and the system turn alone (where it ends). The header is the
    one the template writes in a conversation, which the answer is teacher-forced after and generated from; a
    template's generation prompt may stop short of it (Zephyr's lacks the newline)."""
    system, user = {"role": "system", "content": _SYSTEM}, {"role": "user", "content": _USER}
    prompt = _render(tokenizer, [system, user])
    full = _render(tokenizer, [system, user, {"role": "assistant", "content": _ANSWER}])
    system_open, rest = _cut(prompt, _SYSTEM, "system text")
    between, user_close = _cut(rest, _USER, "question")
    if not between:
        raise ChatTemplateError("the tokenizer's chat template writes the question right after the system text: "
                                "QF cannot tell the turns apart; give the model a template with separate turns")
    if not full.startswith(prompt):
        raise ChatTemplateError("the tokenizer's chat template writes the prompt differently once an answer "
                                "follows: QF cannot teacher-force the answer after the prompt it generates from")
    header, closing = _cut(full[len(prompt):], _ANSWER, "answer")
    if not header or not closing:
        raise ChatTemplateError(f"the tokenizer's chat template has no {'header' if not header else 'closing'} "
                                "around the answer: QF needs both to teacher-force the answer turn")
    system_close, user_open = "", between
    try:
        alone = _render(tokenizer, [system])  # where the system turn ends, when the template shows it
    except ChatTemplateError:
        alone = ""
    if alone.startswith(system_open + _SYSTEM):
        close = alone[len(system_open + _SYSTEM):]
        if close and between.startswith(close) and len(close) < len(between):
            system_close, user_open = close, between[len(close):]
    return ChatFormat(system_open, system_close, user_open, user_close, header, closing)


class PromptError(ValueError):
    """An answer or significance list that cannot be turned into kept positions."""


class ChatTemplateError(PromptError):
    """A tokenizer's chat template that cannot be cut into the system, user and answer pieces QF needs."""


class FactError(PromptError):
    """A fact that teaches nothing (empty, or no different from no fact at all): refused before anything is written."""


def check_fact_text(fact: str) -> None:
    """Refuse an empty or blank fact: its open-book pass would be the closed-book one."""
    if not fact or not fact.strip():
        raise FactError("the fact is empty: give the sentence to learn, e.g. qf learn \"The capital of Zubrovia is "
                        "Pelmora.\" (nothing was written)")


def chatml_prompt(system: str, user: str) -> str:
    """The paper's raw ChatML prompt (system turn present even when empty)."""
    return CHATML.prompt(system, user)


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
    """The same question and answer after each system prompt (e.g. the fact, then none), in the tokenizer's
    chat format, tokenized with one tokenizer call in all (see `answer_tokens` for how the answer is tokenized).
    The prompt, the header, each word and the closing are tokenized apart, so no token spans two of them."""
    fmt = chat_format(tokenizer)
    words = answer_words(answer, original_tokenization)
    word_weights = check_significance(significance, len(words))
    texts = [fmt.prompt(s, user) for s in systems] + [fmt.header, fmt.closing] + words
    pieces = encode_many(tokenizer, texts)
    prompts, (header, closing) = pieces[:len(systems)], pieces[len(systems):len(systems) + 2]
    ids, w = _join_pieces(pieces[len(systems) + 2:], word_weights)
    targets = torch.tensor(header[1:] + ids + closing[:1], dtype=torch.long)
    weights = torch.tensor([1.0] * (len(header) - 1) + w + [1.0], dtype=torch.float64)
    out = []
    for prompt in prompts:
        start = len(prompt)  # the position whose input is the header's first token (ChatML: <|im_start|>)
        out.append(TeacherForced(
            input_ids=torch.tensor(prompt + header + ids + closing, dtype=torch.long),
            kept=torch.arange(start, start + len(targets)),
            weights=weights,
            targets=targets,
        ))
    return out


def header_rows(tokenizer) -> int:
    """How many kept positions predict the answer turn's header (ChatML: `assistant`, `\\n`); the answer's
    tokens are predicted from the next kept position on."""
    return len(encode(tokenizer, chat_format(tokenizer).header)) - 1


def user_turn_start(tokenizer, prompt: str) -> int:
    """Position of the first token of the user turn (ChatML: `<|im_start|>user`) in a prompt of the tokenizer's
    chat format (its first copy of the user turn's opening)."""
    return len(encode(tokenizer, prompt.split(chat_format(tokenizer).user_open)[0]))


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
    """The paper's raw ChatML prompt to answer from (`CHATML.generation_prompt`); with a tokenizer at hand use
    `chat_format(tokenizer).generation_prompt`, the same text for a ChatML model."""
    return CHATML.generation_prompt(system, user, open_answer_turn)


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
