"""`--preset` of the benchmark: the preset's method and options, changed by the options given."""

import json

import pytest

from transformers_qf.bench import cli
from transformers_qf.editing.presets import PRESETS

from test_bench import bench_model, facts_file  # noqa: F401 - the tiny model and facts of the bench's tests


def _args(*argv):
    return cli.build_parser().parse_args(["--facts", "f", "--protocol", "single", "--out", "o", *argv])


def test_a_preset_gives_its_options_and_the_options_given_change_them():
    assert cli.edit_config(_args("--preset", "paper"), 28) == PRESETS["paper"].config
    assert cli.edit_config(_args("--preset", "qf-fast"), 28) == PRESETS["qf-fast"].config
    assert cli.edit_config(_args("--preset", "intact"), 28) == PRESETS["intact"].config
    assert cli.edit_config(_args("--preset", "intact"), 4).layers == (0, 1, 2, 3)
    changed = cli.edit_config(_args("--preset", "intact", "--target-steps", "5", "--layers", "2,3"), 4)
    assert changed.layers == (2, 3) and changed.target_steps == 5 and changed.positions == "subject-copies"
    assert cli.edit_config(_args("--preset", "qf-fast", "--layer", "2"), 4).layers == (2,)


@pytest.mark.parametrize("argv, fragment", [
    (["--preset", "ft", "--method", "qf"], "--preset ft is a ft preset, not --method qf"),
    (["--preset", "paper", "--paper"], "--paper is the preset paper"),
    ([], "give --method (none, in-context, qf, ft) or --preset (paper, qf-fast, intact, ft, in-context)"),
])
def test_preset_mistakes_are_one_line(argv, fragment, tmp_path, capsys):
    assert cli.main(["--facts", str(tmp_path / "f.jsonl"), "--protocol", "single", "--out", str(tmp_path / "o"),
                     *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err and not (tmp_path / "o").exists()


def test_the_intact_preset_runs_end_to_end(bench_model, facts_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    argv = ["--facts", str(facts_file), "--preset", "intact", "--protocol", "sequential", "--out", str(out),
            "--max-new-tokens", "3", "--checkpoints", "2", "--limit", "2", "--target-steps", "2", "--target-wordings",
            "1", "--cov-texts", "4", "--cov-fact-texts", "4"]
    assert cli.main(argv) == 0
    header = json.loads((out / "cases.jsonl").read_text().splitlines()[0])
    config = header["method_config"]
    assert header["method"] == "qf" and config["layers"] == [0, 1, 2, 3] and config["positions"] == "subject-copies"
    assert config["target"] == "optimized" and config["keep_context"] and config["target_steps"] == 2
