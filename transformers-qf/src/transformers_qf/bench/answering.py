"""Batched greedy answers and teacher-forced target probabilities, for scoring many prompts at once.

    answerer = Answerer(model, tokenizer, max_new_tokens=24)
    answerer.answers([("", "Who founded Velmora?"), (fact, "Who founded Velmora?")])   # two strings
    answerer.target_logprobs([("", question, answer, target)])                         # log p(target | ...)

Answers come from the package's one greedy generator (`core.generation.greedy_answers`): prompts in the
tokenizer's chat format (raw ChatML for the bundled models, ending in `<|im_start|>assistant\\n`), left-padded
`batch_size` at a time; generation is greedy and stops at the end of the answer turn or after `max_new_tokens`.
"""

from __future__ import annotations

import torch

from transformers_qf.core import prompting
from transformers_qf.core.generation import greedy_answers


class Answerer:
    """Greedy answers from the model as it is now, `batch_size` prompts per generate call."""

    def __init__(self, model, tokenizer, max_new_tokens: int = 24, batch_size: int = 32, open_answer_turn: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.open_answer_turn = open_answer_turn
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else tokenizer.convert_tokens_to_ids(prompting.chat_format(tokenizer).end)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def answers(self, prompts: list[tuple[str, str]], max_new_tokens: int | None = None) -> list[str]:
        """The greedy answer to each (system, user) prompt."""
        return greedy_answers(self.model, self.tokenizer, prompts, max_new_tokens or self.max_new_tokens,
                              self.open_answer_turn, self.batch_size)

    def target_logprobs(self, items: list[tuple[str, str, str, str]]) -> list[float]:
        """log p of the target's tokens in the teacher-forced answer, for each (system, user, answer, target).

        The target's tokens are those of the answer words that overlap the target's first occurrence
        (the whole answer when the target does not occur in it).
        """
        return [logp for logp, _ in self.target_scores(items)]

    def target_scores(self, items: list[tuple[str, str, str, str]]) -> list[tuple[float, bool]]:
        """(log p, greedy) of the target's tokens for each (system, user, answer, target), as `target_logprobs`;
        greedy: every target token is the most likely one after the answer before it, so that greedy generation
        that reached the target's start writes the target."""
        out: list[tuple[float, bool]] = []
        for start in range(0, len(items), self.batch_size):
            out += self._scores(items[start:start + self.batch_size])
        return out

    @torch.no_grad()
    def _scores(self, items) -> list[tuple[float, bool]]:
        forced = [_forced_target(self.tokenizer, *item) for item in items]
        width = max(len(ids) for ids, _ in forced)
        batch = torch.full((len(forced), width), self.pad_id, dtype=torch.long)
        for row, (ids, _) in enumerate(forced):
            batch[row, :len(ids)] = torch.tensor(ids)  # right padding: causal attention never sees it
        batch = batch.to(self.device)  # the ids are indexed with positions made on the logits' device below
        logits = self.model(input_ids=batch, use_cache=False).logits
        result = []
        for row, (ids, positions) in enumerate(forced):
            pos = torch.tensor(positions, device=logits.device)
            logp = torch.log_softmax(logits[row, pos - 1].float(), dim=-1)
            wanted = batch[row, pos].to(logits.device)
            picked = logp.gather(1, wanted[:, None])
            result.append((float(picked.sum()), bool((logp.argmax(-1) == wanted).all())))
        return result


def _forced_target(tokenizer, system: str, user: str, answer: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of prompt + answer turn, and the positions of the target's tokens in them."""
    tf = prompting.teacher_forced(tokenizer, system, user, answer)
    ids = tf.input_ids.tolist()
    first = int(tf.kept[0]) + 1 + prompting.header_rows(tokenizer)  # position of the answer's first token
    words = answer.split()
    span = set(prompting.target_words(answer, target))
    pieces = tokenizer([w if i == 0 else " " + w for i, w in enumerate(words)], add_special_tokens=False)["input_ids"]
    positions, cursor = [], first
    for i, piece in enumerate(pieces):
        if i in span:
            positions += range(cursor, cursor + len(piece))
        cursor += len(piece)
    return ids, positions
