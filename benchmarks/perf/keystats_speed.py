"""How long the key covariances of several layers take on the bundled model: every layer from one packed forward
a batch (`keystats.key_covariances`), against one layer at a time.

    python benchmarks/perf/keystats_speed.py [--layers 4,5,6,7,8] [--texts N] [--out results/perf]

The texts are the benchmark's covariance corpus for facts_100.jsonl (256 generic requests and the questions
about real entities its controls do not name, each answered by the model: `keystats`), made by the model once
and cached as the bench caches them; only the covariances are timed, and none is read from or written to the
cache. --texts N times the first N texts only. Reports both times and the largest difference between the two
covariances of a layer, relative to the largest entry. Writes results/perf/keystats_speed.md and .json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from transformers_qf import load_model
from transformers_qf.solve import keystats
from transformers_qf.core.architectures import locate
from transformers_qf.bench.answering import Answerer
from transformers_qf.bench.data import read_facts
from transformers_qf.core.report import git_commit, write_json

FACTS = Path(__file__).resolve().parents[1] / "facts" / "facts_100.jsonl"


def corpus(lm) -> list[str]:
    """The bench's covariance texts for facts_100.jsonl, as `bench.cli.key_metrics` makes them (cached)."""
    answer = Answerer(lm.model, lm.tokenizer).answers
    name = f"{lm.name}-{str(lm.model.dtype).replace('torch.', '')}"
    controls = [c.user for c in read_facts(FACTS).controls]
    return (keystats.generic_texts(answer, 256, cache_key=name)
            + keystats.known_fact_texts(answer, controls, cache_key=name))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="4,5,6,7,8")
    parser.add_argument("--texts", type=int, default=None, help="time the first N texts only")
    parser.add_argument("--out", default="results/perf")
    args = parser.parse_args(argv)
    try:
        layers = [int(x) for x in args.layers.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--layers takes layer numbers separated by commas, e.g. 4,5,6; got {args.layers!r}")

    lm = load_model(dtype="bfloat16")
    texts = corpus(lm)[:args.texts]
    parts = [locate(lm.model, layer) for layer in layers]
    start = time.perf_counter()
    together = keystats.key_covariances(lm.model, parts, lm.tokenizer, texts)
    seconds_together = time.perf_counter() - start
    rows, seconds_alone = [], 0.0
    for p in parts:
        start = time.perf_counter()
        alone, count = keystats.key_covariance(lm.model, p, lm.tokenizer, texts)
        seconds = time.perf_counter() - start
        seconds_alone += seconds
        difference = float((together[p.index][0] - alone).abs().max() / alone.abs().max())
        rows.append({"layer": p.index, "seconds_alone": seconds, "positions": count, "difference": difference})
        print(rows[-1], file=sys.stderr)

    result = {"command": " ".join(["python benchmarks/perf/keystats_speed.py", *(argv or sys.argv[1:])]),
              "commit": git_commit(), "model": lm.name, "dtype": "bfloat16", "threads": torch.get_num_threads(),
              "texts": len(texts), "positions": rows[0]["positions"], "layers": layers,
              "seconds_together": seconds_together, "seconds_alone": seconds_alone, "rows": rows}
    out = Path(args.out)
    write_json(out / "keystats_speed.json", result)
    lines = ["# Key covariances of several layers: one forward a batch against one layer at a time", "",
             f"Written by `{result['command']}` at commit {result['commit']}: {result['model']} in bfloat16 on the "
             f"CPU ({result['threads']} threads), {result['texts']} texts ({result['positions']} positions) of the "
             "benchmark's covariance corpus. Difference: max |C_together - C_alone| / max |C_alone|.", "",
             f"All {len(layers)} layers from one forward a batch: **{seconds_together:.0f} s**; one layer at a "
             f"time: **{seconds_alone:.0f} s** in all.", "",
             "| layer | one layer alone, s | difference |", "|---|---|---|"]
    lines += [f"| {r['layer']} | {r['seconds_alone']:.0f} | {r['difference']:.1e} |" for r in rows]
    (out / "keystats_speed.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out / 'keystats_speed.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
