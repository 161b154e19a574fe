"""The facts benchmark: generated fictional facts and real controls, scored by free generation.

    python -m transformers_qf.bench.generate --n 100 --out benchmarks/facts/facts_100.jsonl
    python -m transformers_qf.bench --facts benchmarks/facts/facts_100.jsonl --method qf --protocol sequential --out runs/qf
    python -m transformers_qf.bench.report runs/benchmark --out results/bench   # every run folder under runs/benchmark

Modules: data (the facts file), generate (the generator), answering (batched generation), metrics,
methods (none, in-context, qf, ft), run (the protocols, resumable), summary, report, cli.
"""
