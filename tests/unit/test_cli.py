"""The `qf` command in-process, on the tiny random Qwen2 (injected through `cli.load`): every error path."""

import copy

import pytest
import torch

from transformers_qf.cli import main as cli
from transformers_qf.core.architectures import locate
from transformers_qf.teach.edits import Edits
from transformers_qf.core.models import LoadedModel, ModelLoadError
from transformers_qf.cli.repl import Chat
from transformers_qf.teach.learner import Learner

FACT = ["--system", "Qi started Oxinnovate.", "--user", "Who started Oxinnovate?",
        "--assistant", "Oxinnovate was started by Qi."]
FACT2 = ["--system", "Jack Ma started Alibaba.", "--user", "Who started Alibaba?",
         "--assistant", "Alibaba was started by Jack Ma."]


@pytest.fixture
def loads(monkeypatch, tiny_qwen2, tokenizer):
    """`cli.load` gives a fresh copy of the tiny model (same weights) named after --model; returns the models."""
    models = []

    def fake(spec, device, dtype):
        models.append(copy.deepcopy(tiny_qwen2))
        return LoadedModel(models[-1], tokenizer, name=spec or "tiny", source="test", quantization="none")

    monkeypatch.setattr(cli, "load", fake)
    return models


def run(capsys, *argv):
    """(exit status, stdout, stderr) of `qf argv`."""
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def one_line_error(err: str, *fragments: str) -> None:
    """stderr holds one line (besides the loading notice) and it says all of `fragments`."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("qf: loading")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- the command line ------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, status, fragments", [
    ([], 2, ["qf: error: choose a command: ask, learn, chat or bench (see qf --help)"]),
    (["teach"], 2, ["qf: error: argument", "invalid choice: 'teach'"]),
    (["ask"], 2, ["qf ask: error: the following arguments are required: question"]),
    (["learn", "--system", "x"], 2, ["qf learn: error:", "required: --user, --assistant, --edits"]),
    (["learn", *FACT, "--edits", "e", "--significance", "0,one"], 2, ["bad significance '0,one'"]),
    (["ask", "q", "--max-new-tokens", "0"], 2, ["'0' is not a positive whole number"]),
    (["chat", "--layer", "top"], 2, ["argument --layer: invalid int value: 'top'"]),
    (["ask", "q", "--colour"], 2, ["unrecognized arguments: --colour"]),
])
def test_command_line_mistakes_are_one_line(capsys, argv, status, fragments):
    code, out, err = run(capsys, *argv)
    assert code == status and out == ""
    one_line_error(err, *fragments)


def test_help_exits_zero(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "ask" in out and "learn" in out and "chat" in out and "bench" in out


def test_model_load_errors_are_one_line(capsys):
    """The real loader: both fail before any weights are read."""
    code, _, err = run(capsys, "ask", "q", "--model", "/no/such/model")
    assert code == 1 and "qf: error: model path /no/such/model does not exist" in err and "Traceback" not in err
    code, _, err = run(capsys, "ask", "q", "--model", "smollm2", "--dtype", "bogus")
    assert code == 1 and "qf: error: unknown dtype 'bogus'" in err


def test_the_bundled_names_are_accepted(monkeypatch, capsys):
    seen = []

    def fake_load_model(spec, device, dtype):
        seen.append(spec)
        raise ModelLoadError(f"stop after {spec}")

    monkeypatch.setattr(cli, "load_model", fake_load_model)
    for name in ("smollm2", "qwen2.5-coder-0.5b"):
        assert run(capsys, "ask", "q", "--model", name)[0] == 1
    assert seen == ["smollm2", "qwen2.5-coder-0.5b"]


# -- bench ---------------------------------------------------------------------------------------------
def test_bench_says_it_is_not_built_yet(monkeypatch, capsys):
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None)
    code, out, err = run(capsys, "bench", "--facts", "10")
    assert code == 2 and out == ""
    one_line_error(err, "qf: the benchmark is not built yet (transformers_qf.bench is missing)")


def test_bench_forwards_its_arguments(monkeypatch):
    calls = []
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd: calls.append(cmd) or 3)
    assert cli.main(["bench", "--help", "x"]) == 3
    assert calls[0][1:] == ["-m", "transformers_qf.bench", "--help", "x"]


# -- ask and learn -----------------------------------------------------------------------------------
def test_ask_prints_the_answer(loads, capsys):
    code, out, err = run(capsys, "ask", "Who started Oxinnovate?", "--system", "Qi started it.", "--max-new-tokens", "3")
    assert code == 0 and out.strip() and out.count("\n") == 1 and err == ""


def test_learn_appends_and_ask_applies_the_file(loads, capsys, tmp_path, tiny_qwen2):
    path = str(tmp_path / "facts.safetensors")
    code, out, _ = run(capsys, "learn", *FACT, "--significance", "0,1,1,1,1", "--edits", path)
    assert code == 0 and out.startswith("learned fact 1 in ") and f"{path} holds 1 fact" in out
    code, out, _ = run(capsys, "learn", *FACT2, "--edits", path)
    assert code == 0 and out.startswith("learned fact 2 in ") and "(layer 3," in out and "holds 2 facts" in out
    edits = Edits.load(path)
    assert [f.user for f in edits.facts] == ["Who started Oxinnovate?", "Who started Alibaba?"]
    assert edits.facts[0].significance == [0, 1, 1, 1, 1]

    assert run(capsys, "ask", "Who started Oxinnovate?", "--edits", path, "--max-new-tokens", "2")[0] == 0
    original, learned, applied = (locate(model, 3).down.weight for model in (tiny_qwen2, loads[1], loads[2]))
    assert torch.equal(applied, learned) and not torch.equal(applied, original)


def test_learn_in_a_covariance_metric_keeps_to_it_and_refuses_to_mix(loads, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("QF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, "DEFAULT_METRIC", {"corpus": "generic", "shrink": 0.1, "texts": 4})  # a quick corpus
    path = str(tmp_path / "metric.safetensors")
    code, out, err = run(capsys, "learn", *FACT, "--edits", path, "--covariance")
    assert code == 0 and "(layer 3, covariance metric," in out and "key covariance of layer 3 (generic, 4 texts" in err
    code, out, _ = run(capsys, "learn", *FACT2, "--edits", path)  # the file's metric is used without the flag
    assert code == 0 and "covariance metric" in out and "holds 2 facts" in out
    edits = Edits.load(path)
    assert edits.metric == {"corpus": "generic", "shrink": 0.1, "texts": 4} and all(f.b is not None for f in edits.facts)
    assert list((tmp_path / "cache" / "keystats").iterdir())  # made once, then cached

    plain = str(tmp_path / "plain.safetensors")
    assert run(capsys, "learn", *FACT, "--edits", plain)[0] == 0
    code, out, err = run(capsys, "learn", *FACT2, "--edits", plain, "--covariance")
    assert code == 1 and out == ""
    one_line_error(err.replace("qf: key covariance", "qf: loading"), "qf: error:", "plain metric: leave out --covariance")
    assert len(Edits.load(plain).facts) == 1


def test_learn_and_ask_mistakes_are_one_line(loads, capsys, tmp_path):
    path = str(tmp_path / "facts.safetensors")
    assert run(capsys, "learn", *FACT, "--edits", path, "--layer", "2")[0] == 0
    cases = [
        (["learn", *FACT, "--edits", path, "--layer", "1"], ["made at layer 2, not layer 1: leave out --layer"]),
        (["learn", *FACT, "--edits", path, "--model", "other"], ["holds edits made on model tiny", "not on other"]),
        (["ask", "q", "--edits", path, "--model", "other"], ["--model tiny"]),
        (["ask", "q", "--edits", str(tmp_path / "none.safetensors")], ["no edits file", "check the path"]),
        (["learn", *FACT, "--edits", str(tmp_path / "new.safetensors"), "--layer", "9"],
         ["layer 9 is out of range: this model has 4 layers (0..3)"]),
        (["learn", *FACT, "--edits", str(tmp_path / "new.safetensors"), "--significance", "1,1"],
         ["significance has 2 values but the answer has 5 words"]),
        (["learn", *FACT, "--edits", str(tmp_path / "no" / "dir.safetensors")], ["No such file or directory"]),
    ]
    for argv, fragments in cases:
        code, out, err = run(capsys, *argv)
        assert code == 1 and out == "", argv
        one_line_error(err, "qf: error: ", *fragments)
    assert len(Edits.load(path).facts) == 1  # refused learns did not touch the file
