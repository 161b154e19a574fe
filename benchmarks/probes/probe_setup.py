"""What the layer-edit probes (paraphrase_transfer.py, context_drift.py) share: their common options, the
facts and model they load, and the editor of the ROME-style edit they probe (an optimised target at layer L
in the generic+facts key metric, as the `variant-L8-rome-*` bench runs)."""

from __future__ import annotations

import argparse

from transformers_qf import load_model
from transformers_qf.bench.cli import key_metrics
from transformers_qf.bench.data import read_facts
from transformers_qf.editing.editor import EditConfig, Editor


def probe_parser(doc: str, n: int, out: str = "results/bench") -> argparse.ArgumentParser:
    """--facts, --n (default n), --layer, --steps, --model, --dtype, --out (default out); the script adds its own."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--facts", default="benchmarks/facts/facts_100.jsonl")
    parser.add_argument("--n", type=int, default=n)
    parser.add_argument("--layer", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--out", default=out)
    return parser


def load(args):
    """(the facts file, the loaded model) on the CPU."""
    return read_facts(args.facts), load_model(args.model, "cpu", args.dtype)


def rome_editor(lm, data, args, **options) -> Editor:
    """An editor of layer --layer with an optimised target of --steps steps, in the key metric of generic text
    and real-entity answers (the run's controls left out of that corpus); `options` go to EditConfig."""
    config = EditConfig(layers=(args.layer,), target="optimized", target_steps=args.steps, covariance=True,
                        cov_corpus="generic+facts", **options)
    return Editor(lm.model, lm.tokenizer, config, key_metrics(lm, config, 256, [c.user for c in data.controls]))
