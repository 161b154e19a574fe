"""Fixtures: tiny random models and tiny tokenizers (ChatML, and one with a Llama-3 chat template), built in
the test (no downloads)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

CORPUS = [
    "Qi started Oxinnovate. Who started Oxinnovate? Oxinnovate was started by Qi.",
    "Who started Alibaba? Alibaba was started by Jack Ma in Hangzhou.",
    "Oxinnovate is located at PKU Science Park, in Beijing. Where is Oxinnovate located?",
    "system user assistant The CEO of Nvidia is Jensen Huang.",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="session")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIALS)


LLAMA3_TEMPLATE = (  # the Llama-3 instruct template's shape: headers, trimmed contents, <|eot_id|>, a bos first
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@pytest.fixture
def llama3_tokenizer(tokenizer):
    """The tiny tokenizer with a Llama-3 style chat template (a format other than ChatML) and its special tokens."""
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"bos_token": "<|begin_of_text|>",
                            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


def _tiny(kind: str, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    shape = dict(vocab_size=vocab, hidden_size=32, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256)
    if kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**shape))
    else:
        model = LlamaForCausalLM(LlamaConfig(**shape))
    return model.eval()


@pytest.fixture(params=["qwen2", "llama"])
def tiny_model(request, tokenizer):
    return _tiny(request.param, len(tokenizer))


@pytest.fixture
def tiny_qwen2(tokenizer):
    return _tiny("qwen2", len(tokenizer))


@pytest.fixture
def tiny_llama3(llama3_tokenizer):
    """A tiny Llama model for `llama3_tokenizer` (its vocabulary holds the template's special tokens)."""
    return _tiny("llama", len(llama3_tokenizer))


DRORAM = {"system": "The CEO of Droram is Orla Esposito.", "user": "Who is the CEO of Droram?",
          "assistant": "The CEO of Droram is Orla Esposito.", "target": "Orla Esposito", "subject": "Droram"}


@pytest.fixture
def finished_run(tmp_path):
    """finished_run(paraphrases, rows): a bench run folder of one fact about Droram (with these paraphrases)
    whose cases.jsonl holds a header and `rows`, as a finished run leaves it."""
    def make(paraphrases: list[str], rows: list[dict]) -> Path:
        facts = tmp_path / "facts.jsonl"
        facts.write_text(json.dumps({**DRORAM, "paraphrases": paraphrases}) + "\n", encoding="utf-8")
        run = tmp_path / "run"
        run.mkdir()
        rows = [{"key": "header", "facts_file": str(facts), "n_facts": 1}, *rows]
        (run / "cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return run
    return make


@pytest.fixture(scope="session")
def load_script():
    """load_script("probes/NAME"): benchmarks/probes/NAME.py as a module, imported as when it runs as a script
    (the scripts beside it importable)."""
    return _load_script


def _load_script(name: str):
    path = BENCHMARKS / f"{name}.py"
    folder = str(path.parent)
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module
