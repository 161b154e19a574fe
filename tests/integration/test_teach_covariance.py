"""`qf learn --covariance` on the real SmolLM2-135M: the key covariance is made from the model's own answers,
the fact is learned in that metric, and the edits file answers the question when applied to a fresh load.
One sentence is enough: `qf learn SENTENCE` derives the question and the value, with the default preset (paper)
and with qf-fast (the rows that predict the value, in the covariance metric).

The corpus is thinned to 8 generic texts (256 in the default) to keep CI short; the path is the same."""

import pytest

from transformers_qf.cli import main as cli
from transformers_qf.teach.edits import Edits

pytestmark = pytest.mark.integration

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


@pytest.mark.parametrize("preset, shown, positions", [(None, "(layer 29, ", "answer"),
                                                     ("qf-fast", "(layer 29, covariance metric,", "target")])
def test_one_sentence_is_learned(tmp_path, monkeypatch, capsys, preset, shown, positions):
    monkeypatch.setattr(cli, "DEFAULT_METRIC", {**cli.DEFAULT_METRIC, "texts": 8})
    path = tmp_path / "zubrovia.safetensors"
    extra = [] if preset is None else ["--preset", preset]
    assert cli.main(["learn", "The capital of Zubrovia is Pelmora.", "--model", "smollm2", "--edits", str(path),
                     *extra]) == 0
    out, err = capsys.readouterr()
    assert "asked as 'What is the capital of Zubrovia?', value 'Pelmora' (template)" in err
    assert out.startswith("learned fact 1 in ") and shown in out
    edits = Edits.load(path)
    assert (edits.preset, edits.positions) == (preset or "paper", positions)

    assert cli.main(["ask", "What is the capital of Zubrovia?", "--model", "smollm2", "--edits", str(path),
                     "--max-new-tokens", "16"]) == 0
    assert "Pelmora" in capsys.readouterr().out

    code = cli.main(["learn", "--system", " ", "--user", "Who?", "--assistant", "Nobody.", "--model", "smollm2",
                     "--edits", str(tmp_path / "empty.safetensors")])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and not (tmp_path / "empty.safetensors").exists()
    assert [line for line in err.splitlines() if not line.startswith("qf: ")] == [] and \
        err.splitlines()[-1].startswith("qf: error: the fact is empty")
