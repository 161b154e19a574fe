"""The key covariance C = E[u u^T] of one layer's down_proj input, on generic text the project makes.

The covariance-weighted solve (`keysolve.KeyMetric`) needs to know which directions of the 8960-wide
key space generic inputs use, so that an edit changes the layer least there. The generic text is
made here, without any data set: a fixed, seeded list of everyday requests (topics x kinds of
request, none about the benchmark's entities or relations), each answered by the model itself
(greedy), and the whole exchange written in the model's chat format. Texts and covariances are cached per model under
the package's cache directory (`models.cache_dir()`).

    texts = generic_texts(answer, count=256, seed=0)                  # answer: (system, user) -> text
    texts += known_fact_texts(answer, exclude=["Who is the CEO of Google?"])  # the model on real entities
    C, n = key_covariance(model, parts, tokenizer, texts)             # [d_mlp, d_mlp] float64, n positions
    by_layer = key_covariances(model, [p4, p8], tokenizer, texts)     # {4: (C, n), 8: (C, n)}, one forward a batch
    metrics = key_metrics(model, tokenizer, answer, layers=[23])      # all of it: {23: KeyMetric}, for editor.Editor

Generic text protects fluency but holds no questions like the benchmark's: an edit that must leave
"Who is the CEO of Google?" alone needs keys of that kind in C. `known_fact_texts` asks every phrasing of
every relation about the real entities of `worldfacts.REAL_FACTS` and keeps the model's own answers,
right or wrong (the point is to keep its behaviour, not to teach it truth). Entities a test scores
(a facts file's control questions) are passed as `exclude`: no entity named in them enters the corpus,
so the preserved keys never include what the benchmark asks.

`key_metrics(..., answer_weight=w)` adds w times the covariance of the answer positions of those texts
alone: the rows that spell a surname after a first name, or the next digit of a year, are shared by every
entity, and an edit that writes an invented name through them rewrites the real ones too.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import astuple
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from transformers_qf.core import prompting
from transformers_qf.core.architectures import locate
from transformers_qf.core.capture import record_layers
from transformers_qf.solve.keyed import KeyMetric
from transformers_qf.core.models import cache_dir
from transformers_qf.data.worldfacts import RELATIONS, real_facts

TOPICS = (
    "the water cycle", "photosynthesis", "a rainy afternoon", "the history of writing", "how bridges stay up",
    "learning to cook rice", "the moon's phases", "saving money", "a walk in the forest", "how vaccines work",
    "the rules of chess", "volcanoes", "a birthday party", "recycling plastic", "the human heart",
    "planting tomatoes", "jazz music", "the Roman roads", "sleep and memory", "electric circuits",
    "a train journey", "the desert at night", "how bees make honey", "writing a cover letter", "glaciers",
    "a city market", "the printing press", "ocean tides", "learning a musical instrument", "friendship",
    "a thunderstorm", "baking bread", "the immune system", "maps and navigation", "public libraries",
    "the life of a butterfly", "wind and weather", "a football match", "kindness to strangers", "prime numbers",
    "sorting a list in Python", "how a compiler works", "the speed of sound", "a mountain village",
    "coffee", "the solar system", "time management", "earthquakes", "a lighthouse", "ancient pottery",
)
REQUESTS = (
    "Write a short paragraph about {topic}.",
    "Explain {topic} to a ten-year-old.",
    "Give three interesting facts about {topic}.",
    "What should everyone know about {topic}?",
    "Describe {topic} in a few sentences.",
    "Write a short poem about {topic}.",
)

Answer = Callable[[list[tuple[str, str]], int], list[str]]  # (system, user) prompts, max new tokens -> answers


def generic_prompts(count: int, seed: int = 0) -> list[str]:
    """`count` requests (topic x kind of request), in a seeded order."""
    prompts = [r.format(topic=t) for t in TOPICS for r in REQUESTS]
    random.Random(f"{seed}:generic").shuffle(prompts)
    if count > len(prompts):
        raise ValueError(f"at most {len(prompts)} generic prompts, asked for {count}")
    return prompts[:count]


def generic_texts(answer: Answer, count: int = 256, seed: int = 0, max_new_tokens: int = 64,
                  cache_key: str | None = None, fmt: prompting.ChatFormat = prompting.CHATML) -> list[str]:
    """The generic prompts with the model's answers, as full exchanges in chat format `fmt` (cached when
    cache_key is given)."""
    return answered_texts(answer, generic_prompts(count, seed), max_new_tokens, cache_key, fmt)


def known_fact_prompts(exclude: list[str] = (), count: int | None = None, seed: int = 0) -> list[str]:
    """Every phrasing of the question about every real fact whose subject no text of `exclude` names
    (or `count` of them, drawn in a seeded order)."""
    excluded = " \n ".join(exclude).casefold()
    prompts = [RELATIONS[f.relation].question(f.subject, i) for f in real_facts()
               if f.subject.casefold() not in excluded for i in range(len(RELATIONS[f.relation].questions))]
    if count is not None:
        random.Random(f"{seed}:known").shuffle(prompts)
        prompts = prompts[:count]
    return prompts


def known_fact_texts(answer: Answer, exclude: list[str] = (), count: int | None = None, max_new_tokens: int = 32,
                     cache_key: str | None = None, fmt: prompting.ChatFormat = prompting.CHATML) -> list[str]:
    """`known_fact_prompts` with the model's own answers, as exchanges in chat format `fmt` (cached when
    cache_key is given)."""
    return answered_texts(answer, known_fact_prompts(exclude, count), max_new_tokens, cache_key, fmt)


def answered_texts(answer: Answer, prompts: list[str], max_new_tokens: int, cache_key: str | None = None,
                   fmt: prompting.ChatFormat = prompting.CHATML) -> list[str]:
    """Each prompt with the model's greedy answer, as a full exchange in chat format `fmt` (raw ChatML by
    default); cached per model, prompt list and (other than ChatML) chat format."""
    path = None
    if cache_key is not None:
        named = prompts if fmt == prompting.CHATML else [prompts, list(astuple(fmt))]
        digest = hashlib.sha256(json.dumps(named).encode()).hexdigest()[:12]
        path = cache_dir() / "answered" / f"{_slug(cache_key)}-{digest}-{max_new_tokens}.json"
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    answers = answer([("", p) for p in prompts], max_new_tokens)
    texts = [fmt.conversation("", p, a) for p, a in zip(prompts, answers)]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    return texts


def key_covariance(model, parts, tokenizer, texts: list[str], batch_size: int = 16, cache_key: str | None = None,
                   answers_only: bool = False) -> tuple[torch.Tensor, int]:
    """E[u u^T] over every position of `texts` at layer `parts.index` ([d_mlp, d_mlp] float64), and the count;
    answers_only: over the positions of the assistant's answer only (after the last answer turn's header)."""
    return key_covariances(model, [parts], tokenizer, texts, batch_size, cache_key, answers_only)[parts.index]


def _covariance_path(texts: list[str], layer: int, cache_key: str, answers_only: bool = False) -> Path:
    digest = hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:12]
    part = "-answers" if answers_only else ""
    return cache_dir() / "keystats" / f"{_slug(cache_key)}-layer{layer}-{digest}{part}.safetensors"


def cached_covariance(texts: list[str], layer: int, cache_key: str,
                      answers_only: bool = False) -> tuple[torch.Tensor, int] | None:
    """(C, count) of `key_covariances` for these texts and layer if it is cached, else None (no model needed)."""
    path = _covariance_path(texts, layer, cache_key, answers_only)
    if not path.is_file():
        return None
    stored = load_file(str(path))
    return stored["covariance"].to(torch.float64), int(stored["count"])


@torch.no_grad()
def key_covariances(model, layers, tokenizer, texts: list[str], batch_size: int = 16, cache_key: str | None = None,
                    answers_only: bool = False) -> dict[int, tuple[torch.Tensor, int]]:
    """`key_covariance` at several layers (LayerParts), from one forward of each batch cut after the deepest
    layer not cached yet: {layer index: (C, count)}. Each layer is cached on its own."""
    paths = {parts.index: _covariance_path(texts, parts.index, cache_key, answers_only)
             for parts in layers} if cache_key is not None else {}
    found = {}
    for index in paths:
        cached = cached_covariance(texts, index, cache_key, answers_only)
        if cached is not None:
            found[index] = cached
    missing = [parts for parts in layers if parts.index not in found]
    if not missing:
        return found
    d = missing[0].down.in_features
    totals = {parts.index: torch.zeros(d, d, dtype=torch.float64) for parts in missing}
    count = 0
    ids = [torch.tensor(prompting.encode(tokenizer, t)) for t in texts]
    starts = [_answer_start(tokenizer, t) if answers_only else 0 for t in texts]
    for start in range(0, len(ids), batch_size):
        batch = slice(start, start + batch_size)
        recorded = record_layers(model, missing, ids[batch])
        for index, recs in recorded.items():
            # one product a batch: the d_mlp x d_mlp result, not the rows, is what costs memory traffic
            u = torch.cat([rec.u[first:] for rec, first in zip(recs, starts[batch])]).float()
            totals[index].add_((u.T @ u).cpu())  # in place, promoted to float64: no float64 temporary
        count += sum(len(i) - first for i, first in zip(ids[batch], starts[batch]))
    for index, total in totals.items():
        covariance = total.div_(count)
        found[index] = covariance, count
        if index in paths:
            paths[index].parent.mkdir(parents=True, exist_ok=True)
            save_file({"covariance": covariance.float(), "count": torch.tensor(count)}, str(paths[index]))
    return found


def key_metrics(model, tokenizer, answer: Answer, layers, corpus: str = "generic+facts", shrink: float = 0.1,
                count: int = 256, exclude: list[str] = (), fact_count: int | None = None,
                cache_key: str | None = None, answer_weight: float = 0.0, null_space: float = 0.0) -> dict:
    """{layer: KeyMetric} for the covariance-weighted solve (`editor.Editor(..., metrics=...)`).

    corpus: "generic" (`count` everyday requests) or "generic+facts" (those plus `known_fact_texts`: all, or
    `fact_count` of them, leaving out every entity named in `exclude`); answer: (system, user) prompts, max
    new tokens -> the model's answers. answer_weight w > 0 (generic+facts only): C + w C_answers, with
    C_answers the covariance of the answer positions of the real-entity texts alone, so the keys that spell
    the model's answers about entities (a surname after a first name, the next digit of a year) count w
    times as much as the whole corpus. null_space > 0: each metric projects onto the directions whose variance is
    below that fraction of the mean (`KeyMetric`, AlphaEdit's null space) instead of weighting by C_s^-1.
    """
    if answer_weight < 0 or (answer_weight > 0 and corpus != "generic+facts"):
        raise ValueError(f"an answer weight ({answer_weight:g}) needs corpus generic+facts and must be >= 0")
    fmt = prompting.chat_format(tokenizer)
    texts = generic_texts(answer, count, cache_key=cache_key, fmt=fmt)
    facts = (known_fact_texts(answer, exclude, fact_count, cache_key=cache_key, fmt=fmt)
             if corpus == "generic+facts" else [])
    parts = [locate(model, layer) for layer in layers]
    covariances = {i: c for i, (c, _) in key_covariances(model, parts, tokenizer, texts + facts,
                                                           cache_key=cache_key).items()}
    if answer_weight > 0:
        answers = key_covariances(model, parts, tokenizer, facts, cache_key=cache_key, answers_only=True)
        covariances = {i: c + answer_weight * answers[i][0] for i, c in covariances.items()}
    return {i: KeyMetric(c, shrink, null_space) for i, c in covariances.items()}


def _answer_start(tokenizer, text: str) -> int:
    """The index of the first token of the assistant's answer in the encoded `text`."""
    header = prompting.chat_format(tokenizer).header
    head = text.rindex(header) + len(header)
    return len(prompting.encode(tokenizer, text[:head]))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)

