"""The one greedy generator: the benchmark's answers are the core generator's, and are what each prompt
generated alone gives (the benchmark's own left-padded generator, folded into `core.generation`, gave the
same on these models: checked before it was removed)."""

import torch

from transformers_qf.bench.answering import Answerer
from transformers_qf.core import prompting
from transformers_qf.core.generation import greedy_answers

TURNS = [("", "Who started Oxinnovate?"), ("Qi started Oxinnovate.", "Who started Oxinnovate?"),
         ("", "Where is Oxinnovate located?"), ("The CEO of Nvidia is Jensen Huang.", "Who started Alibaba?"),
         ("", "Who?")]


@torch.no_grad()
def _one_at_a_time(model, tokenizer, turns, max_new_tokens):
    """What the benchmark's own generator scored before it was folded into the core one: each ChatML prompt's
    greedy continuation, stopped at <|im_end|> only, decoded without special tokens and stripped. Here each
    prompt is generated alone, with no padding, which left padding must not change."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = []
    for system, user in turns:
        ids = tokenizer([prompting.generation_prompt(system, user)], add_special_tokens=False,
                        return_tensors="pt")["input_ids"]
        row = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, temperature=None, top_p=None, top_k=None, eos_token_id=end,
                             pad_token_id=tokenizer.pad_token_id)[0]
        out.append(tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True).strip())
    return out


def _ends_some_answers_early(model, tokenizer):
    """Make <|im_end|> the greedy choice wherever the model's most frequent greedy token was, so that some
    answers end before max_new_tokens (the stop is then exercised, not only the length)."""
    prompts = [prompting.generation_prompt(s, u) for s, u in TURNS]
    ids = tokenizer(prompts[:1], add_special_tokens=False, return_tensors="pt")["input_ids"]
    generated = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, temperature=None, top_p=None,
                               top_k=None, pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:]
    often = int(torch.mode(generated).values)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[end] = head[often] * 1.5


def test_bench_answers_are_the_core_generators_and_the_earlier_ones(tiny_model, tokenizer):
    _ends_some_answers_early(tiny_model, tokenizer)
    alone = _one_at_a_time(tiny_model, tokenizer, TURNS, 8)
    for batch_size in (2, 32):
        bench = Answerer(tiny_model, tokenizer, max_new_tokens=8, batch_size=batch_size).answers(TURNS)
        core = greedy_answers(tiny_model, tokenizer, TURNS, 8, batch_size=batch_size)
        assert bench == core == alone
    lengths = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in alone]
    assert min(lengths) < 8, lengths  # at least one answer stopped at <|im_end|>


def test_answers_are_asked_in_the_tokenizers_chat_format(tiny_qwen2, tokenizer, monkeypatch):
    from transformers_qf.core import generation

    asked = []
    monkeypatch.setattr(generation, "greedy_batch",
                        lambda model, tok, prompts, n, stop, batch_size: asked.append((prompts, stop)) or prompts)
    greedy_answers(tiny_qwen2, tokenizer, TURNS[:2])
    prompts, stop = asked[0]
    assert prompts == [prompting.generation_prompt(s, u) for s, u in TURNS[:2]]
    assert prompts[0] == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nWho started Oxinnovate?<|im_end|>\n" \
                         "<|im_start|>assistant\n"
    assert stop == ["<|im_end|>"]


def test_answers_of_a_llama3_template_are_asked_and_stopped_in_its_format(llama3_tokenizer, monkeypatch):
    from transformers_qf.core import generation

    asked = []
    monkeypatch.setattr(generation, "greedy_batch",
                        lambda model, tok, prompts, n, stop, batch_size: asked.append((prompts, stop)) or prompts)
    greedy_answers(None, llama3_tokenizer, TURNS[1:2])
    prompts, stop = asked[0]
    turns = [{"role": "system", "content": TURNS[1][0]}, {"role": "user", "content": TURNS[1][1]}]
    assert prompts == [llama3_tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)]
    assert stop == ["<|eot_id|>"]
    # one token, so generation ends on it (not only the text cut there)
    assert generation.stop_token_ids(llama3_tokenizer, stop) == [llama3_tokenizer.convert_tokens_to_ids("<|eot_id|>")]

