"""The benchmark command on 3 facts of the bundled model (float32, the package default on CPU), with qf's
default configuration (target positions, the covariance-weighted solve).

The key covariance is estimated on a thin corpus here (8 generic texts and 16 questions about real
entities, against 256 and all of them in a benchmark run) to keep CI short; the path is the same. The
controls, the fluency prompts and the three facts are answered in a few batched float32 generations."""

import json
from pathlib import Path

import pytest

from transformers_qf.bench import cli

pytestmark = pytest.mark.integration

FACTS = Path(__file__).resolve().parents[2] / "benchmarks" / "facts" / "facts_10.jsonl"


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "qf"
    argv = ["--facts", str(FACTS), "--limit", "3", "--method", "qf", "--protocol", "sequential", "--out", str(out),
            "--max-new-tokens", "20", "--fluency-tokens", "32", "--checkpoints", "3",
            "--cov-texts", "8", "--cov-fact-texts", "16"]
    assert cli.main(argv) == 0
    return json.loads((out / "summary.json").read_text()), [json.loads(line) for line in
                                                            (out / "cases.jsonl").read_text().splitlines()]


def test_the_default_qf_consolidates_the_facts(summary):
    s, rows = summary
    assert s["n_facts"] == 3 and s["complete"] and s["model"] == "qwen2.5-coder-1.5b-instruct"
    assert s["method_config"]["positions"] == "target" and s["method_config"]["covariance"]
    before = {r["key"]: r for r in rows if r["key"].startswith("before/control/")}
    assert sum(r["gives"] for r in before.values()) >= 15  # the controls were chosen as known to this model
    floor = [r for r in rows if r["key"].startswith("after/") and r.get("kind") == "question"]
    assert len(floor) == 3
    assert s["efficacy"] >= 2 / 3, [r["answer"] for r in rows if r.get("kind") == "question"]
    assert s["logprob_after"] > s["logprob_before"] + 5
    assert s["residual_max"] < 1e-3


def test_the_unrelated_controls_survive_three_edits(summary):
    s, _ = summary
    assert s["specificity"] >= 0.8 and s["fluency_drop"] < 0.2
