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
from transformers_qf.editing.presets import PRESETS

FACT = ["--system", "Qi started Oxinnovate.", "--user", "Who started Oxinnovate?",
        "--assistant", "Oxinnovate was started by Qi."]
FACT2 = ["--system", "Jack Ma started Alibaba.", "--user", "Who started Alibaba?",
         "--assistant", "Alibaba was started by Jack Ma."]


@pytest.fixture
def loads(monkeypatch, tiny_qwen2, tokenizer, tmp_path):
    """`cli.load` gives a fresh copy of the tiny model (same weights) named after --model; returns the models.
    Key covariances (the default preset's) are made on a quick corpus and cached under tmp_path."""
    monkeypatch.setenv("QF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, "DEFAULT_METRIC", {"corpus": "generic", "shrink": 0.1, "texts": 4})
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
    progress = ("qf: loading", "qf: key covariance", "qf: asked as")
    lines = [line for line in err.strip().splitlines() if not line.startswith(progress)]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- the command line ------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, status, fragments", [
    ([], 2, ["qf: error: choose a command: ask, learn, chat or bench (see qf --help)"]),
    (["teach"], 2, ["qf: error: argument", "invalid choice: 'teach'"]),
    (["ask"], 2, ["qf ask: error: the following arguments are required: question"]),
    (["learn", "--system", "x"], 2, ["qf learn: error:", "required: --edits"]),
    (["learn", "--edits", "e", "--preset", "best"], 2, ["argument --preset: invalid choice: 'best'",
                                                        "paper", "qf-fast", "intact", "ft", "in-context"]),
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
    assert [f.fact.user for f in edits.facts] == ["Who started Oxinnovate?", "Who started Alibaba?"]
    assert edits.facts[0].fact.significance == [0, 1, 1, 1, 1]

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
    assert run(capsys, "learn", *FACT, "--edits", plain, "--preset", "paper")[0] == 0
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


# -- presets, one sentence, empty facts ------------------------------------------------------------
SENTENCE = "The capital of Zubrovia is Pelmora."


def test_learn_help_lists_the_presets_with_what_they_measured(capsys):
    code, out, _ = run(capsys, "learn", "--help")
    assert code == 0 and "--preset" in out
    for name in ("paper [default]", "qf-fast", "intact", "ft", "in-context"):
        assert f"  {name}: " in out, name
    intact = PRESETS["intact"]  # its measured cost and scores, as the report gives them
    assert f"{intact.cost}; {intact.scores}" in out and "results/bench/benchmark.md" in out


def test_one_sentence_is_enough(loads, capsys, tmp_path):
    path = str(tmp_path / "facts.safetensors")
    code, out, err = run(capsys, "learn", SENTENCE, "--edits", path, "--preset", "qf-fast")
    assert code == 0 and out.startswith("learned fact 1 in ") and "(layer 3, covariance metric," in out
    assert "asked as 'What is the capital of Zubrovia?', value 'Pelmora' (template)" in err
    edits = Edits.load(path)
    fact = edits.facts[0].fact
    assert (edits.preset, edits.positions) == ("qf-fast", "target")
    assert (fact.system, fact.user, fact.answer, fact.target) == (SENTENCE, "What is the capital of Zubrovia?",
                                                                   SENTENCE, "Pelmora")
    full = Edits.load(path)  # the answer's value only: fewer rows than the whole answer turn
    code, out, _ = run(capsys, "learn", SENTENCE, "--edits", str(tmp_path / "paper.safetensors"))  # the default
    paper = Edits.load(tmp_path / "paper.safetensors")
    assert code == 0 and "(layer 3, " in out and "covariance" not in out
    assert (paper.preset, paper.positions, paper.metric) == ("paper", "answer", None)
    assert paper.facts[0].rows > full.facts[0].rows


@pytest.mark.parametrize("argv", [
    ["--system", "", "--user", "Who started Oxinnovate?", "--assistant", "Oxinnovate was started by Qi."],
    ["--system", "   ", "--user", "Who started Oxinnovate?", "--assistant", "Oxinnovate was started by Qi."],
    ["  "],
    [""],
])
@pytest.mark.parametrize("preset", ["paper", "qf-fast", "ft", "in-context"])
def test_an_empty_fact_is_refused_and_nothing_is_written(loads, capsys, tmp_path, argv, preset):
    path = tmp_path / "facts.safetensors"
    code, out, err = run(capsys, "learn", *argv, "--edits", str(path), "--preset", preset)
    assert code == 2 and out == "" and not path.exists()
    one_line_error(err, "qf: error: the fact is empty", "nothing was written")


def test_a_refused_fact_leaves_an_existing_file_as_it_was(loads, capsys, tmp_path):
    path = tmp_path / "facts.safetensors"
    assert run(capsys, "learn", *FACT, "--edits", str(path))[0] == 0
    before = path.read_bytes()
    code, out, err = run(capsys, "learn", "--system", "", "--user", "q?", "--assistant", "a", "--edits", str(path))
    assert code == 2 and out == "" and path.read_bytes() == before
    one_line_error(err, "the fact is empty")


def test_learn_needs_a_fact(loads, capsys, tmp_path):
    code, out, err = run(capsys, "learn", "--edits", str(tmp_path / "f.safetensors"))
    assert code == 2 and out == ""
    one_line_error(err, "give the fact as one sentence")
    code, out, err = run(capsys, "learn", SENTENCE, "--system", SENTENCE, "--edits", str(tmp_path / "f.safetensors"))
    assert code == 2 and "give the fact once" in err


@pytest.mark.parametrize("preset", ["ft", "in-context", "intact"])
def test_the_other_presets_learn_into_an_edits_file_that_ask_applies(loads, capsys, tmp_path, preset, monkeypatch):
    from transformers_qf.editing import presets

    if preset == "intact":  # the same editor, with fewer fitting steps and no rewordings on the tiny model
        quick = presets.PRESETS["intact"].config.__class__(**{**presets.INTACT.as_dict(), "layers": (4, 5, 6, 7, 8),
                                                              "target_steps": 3, "target_wordings": 0})
        monkeypatch.setitem(presets.PRESETS, "intact", presets.Preset(**{**presets.PRESETS["intact"].__dict__,
                                                                         "config": quick}))
    path = str(tmp_path / f"{preset}.safetensors")
    code, out, err = run(capsys, "learn", SENTENCE, "--edits", path, "--preset", preset)
    assert code == 0 and out.startswith("learned fact 1 in ") and f"preset {preset}" in out, err
    edits = Edits.load(path)
    assert edits.preset == preset and not edits.keeps_rows and edits.facts[0].fact.target == "Pelmora"
    assert run(capsys, "learn", *FACT, "--edits", path)[0] == 0  # the file's preset
    assert len(Edits.load(path).facts) == 2
    code, out, err = run(capsys, "ask", "What is the capital of Zubrovia?", "--edits", path, "--max-new-tokens", "2")
    assert code == 0 and out.strip()
    if preset != "in-context":
        layers = [int(i) for i in edits.config["layers"]]
        learned, applied = loads[1], loads[-1]
        for layer in layers:
            assert torch.equal(locate(learned, layer).down.weight, locate(applied, layer).down.weight) or preset == "ft"
        changed = [not torch.equal(locate(applied, i).down.weight, locate(loads[0], i).down.weight) for i in layers]
        assert any(changed)


def test_a_preset_the_file_was_not_made_with_is_refused(loads, capsys, tmp_path):
    path = str(tmp_path / "facts.safetensors")
    assert run(capsys, "learn", SENTENCE, "--edits", path, "--preset", "paper")[0] == 0
    code, out, err = run(capsys, "learn", *FACT, "--edits", path, "--preset", "ft")
    assert code == 1 and out == ""
    one_line_error(err, "made with preset paper, not ft: leave out --preset")
    code, out, err = run(capsys, "learn", *FACT, "--edits", str(tmp_path / "new.safetensors"), "--preset", "intact",
                         "--layer", "2")
    assert code == 1 and out == ""
    one_line_error(err, "preset intact edits layers 4,5,6,7,8 together: leave out --layer")
