"""The one greedy generator: answers to many prompts at once (left-padded batches).

    greedy_batch(model, tokenizer, ["system: \\nuser: Who is the CEO of Nvidia?\\nassistant:"], stop=["\\n"])
    greedy_answers(model, tokenizer, [("Qi started Oxinnovate.", "Who started Oxinnovate?")])   # chat turns
"""

from __future__ import annotations

import torch

from transformers_qf.core.prompting import chat_format


def stop_token_ids(tokenizer, stops: list[str]) -> list[int]:
    """The ids of the stop strings that are one token for this tokenizer (generation ends on them early;
    the text is cut at every stop string anyway)."""
    pieces = [tokenizer(stop, add_special_tokens=False)["input_ids"] for stop in stops]
    return [piece[0] for piece in pieces if len(piece) == 1]


@torch.no_grad()
def greedy_batch(model, tokenizer, prompts: list[str], max_new_tokens: int = 24, stop: list[str] | None = None,
                 batch_size: int = 16) -> list[str]:
    """The greedy continuation of each prompt, cut at the first stop string (default: the tokenizer's eos).

    Prompts are tokenized as they are (no special tokens added) and left-padded, `batch_size` at a time.
    """
    stop = stop or []
    stop_ids = stop_token_ids(tokenizer, stop)
    if tokenizer.eos_token_id is not None:
        stop_ids.append(tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    device = next(model.parameters()).device
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        ids = tokenizer(prompts[start:start + batch_size], add_special_tokens=False)["input_ids"]
        width = max(len(seq) for seq in ids)
        batch = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            batch[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
        generated = model.generate(
            input_ids=batch.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
            do_sample=False, temperature=None, top_p=None, top_k=None, eos_token_id=stop_ids, pad_token_id=pad,
        )
        for row in generated:
            text = tokenizer.decode(row[width:], skip_special_tokens=True)
            for s in stop:
                text = text.split(s)[0]
            out.append(text.strip())
    return out


def greedy_answers(model, tokenizer, turns: list[tuple[str, str]], max_new_tokens: int = 48,
                   open_answer_turn: bool = True, batch_size: int = 16) -> list[str]:
    """The greedy answer to each (system, user) pair, asked in the tokenizer's chat format
    (`prompting.chat_format(tokenizer).generation_prompt`) and ended at the end of the answer turn."""
    fmt = chat_format(tokenizer)
    prompts = [fmt.generation_prompt(system, user, open_answer_turn) for system, user in turns]
    return greedy_batch(model, tokenizer, prompts, max_new_tokens, stop=[fmt.end], batch_size=batch_size)
