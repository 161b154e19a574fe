"""qf2_learn.py and qft_train.py answer bad input with one line and exit code 2, writing nothing."""

import json

from transformers_qf.core.facts import Fact
from transformers_qf.qf.walkthrough import Learn


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].count("\n") == 0
    return err[-1]


def test_qf2_learn_without_a_conversion_says_how_to_make_one(tmp_path, capsys):
    import qf2_learn

    out = tmp_path / "out"
    assert qf2_learn.main(["--model", "smollm2", "--layer", "20", "--cache", str(tmp_path / "none"),
                           "--out", str(out)]) == 2
    err = _one_line(capsys)
    assert err.startswith("qf2_learn.py: error: no QFt conversion") and "qft_train.py --model" in err
    assert not out.exists()


def _fake_conversion(folder, base, layer):
    folder.mkdir(parents=True)
    (folder / "qft_conversion.json").write_text(json.dumps({"base_model": base, "layer": layer}))


def test_qf2_learn_refuses_a_conversion_of_another_model_or_layer(tmp_path, capsys):
    import qf2_learn

    _fake_conversion(tmp_path / "other-model", "qwen2.5-coder-0.5b-instruct", 20)
    assert qf2_learn.main(["--model", "smollm2", "--layer", "20", "--conversion", str(tmp_path / "other-model"),
                           "--out", str(tmp_path / "out")]) == 2
    assert "a conversion of 'qwen2.5-coder-0.5b-instruct'" in _one_line(capsys)
    _fake_conversion(tmp_path / "other-layer", "smollm2-135m-instruct", 21)
    assert qf2_learn.main(["--model", "smollm2", "--layer", "20", "--conversion", str(tmp_path / "other-layer"),
                           "--out", str(tmp_path / "out")]) == 2
    assert "converted layer 21, not layer 20" in _one_line(capsys)
    (tmp_path / "unfinished").mkdir()
    assert qf2_learn.main(["--model", "smollm2", "--layer", "20", "--conversion", str(tmp_path / "unfinished")]) == 2
    assert "not a finished QFt conversion" in _one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_qf2_learn_refuses_a_significance_list_that_does_not_fit(tmp_path, capsys, monkeypatch):
    import qf2_learn

    bad = Fact("Qi is the CEO of Oxinnovate.", "Who is the CEO of Oxinnovate?", "The CEO of Oxinnovate is Qi.", [1, 10])
    monkeypatch.setattr(qf2_learn, "STEPS", [Learn(bad, lr=4e-4)])
    monkeypatch.setattr(qf2_learn, "load_model", lambda *a: (_ for _ in ()).throw(AssertionError("loaded")))
    assert qf2_learn.main(["--out", str(tmp_path / "out")]) == 2
    assert "2 values but the answer has 6 words" in _one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_qft_train_resume_refuses_a_checkpoint_of_another_configuration(tmp_path, capsys, monkeypatch):
    import qft_train
    from transformers_qf.qf2.conversion import conversion_paths
    from transformers_qf.qf2.training import PRESETS, with_overrides

    config = with_overrides(PRESETS["cpu"], layer=20)
    ckpt = conversion_paths("smollm2-135m-instruct", config, "cpu", tmp_path).checkpoint
    ckpt.mkdir(parents=True)
    other = {"model": "smollm2-135m-instruct", "config": with_overrides(config, lr=1e-3).identity(), "data": "x",
             "heldout_facts": 30}
    (ckpt / "state.json").write_text(json.dumps({"identity": other, "step": 10}))
    monkeypatch.setattr(qft_train, "load_model", lambda *a: (_ for _ in ()).throw(AssertionError("loaded")))
    assert qft_train.main(["--model", "smollm2", "--layer", "20", "--cache", str(tmp_path), "--resume",
                           "--out", str(tmp_path / "out")]) == 2
    err = _one_line(capsys)
    assert err.startswith("qft_train.py: error: the checkpoint is from another configuration") and "--resume" in err
    assert json.loads((ckpt / "state.json").read_text())["step"] == 10 and not (tmp_path / "out").exists()


def test_qft_train_refuses_a_bad_layer_in_one_line(tiny_qwen2, tokenizer, tmp_path, capsys):
    import qft_train

    tiny_qwen2.save_pretrained(tmp_path / "stock")
    tokenizer.save_pretrained(tmp_path / "stock")
    assert qft_train.main(["--model", str(tmp_path / "stock"), "--layer", "7", "--cache", str(tmp_path / "c"),
                           "--out", str(tmp_path / "o")]) == 2
    assert _one_line(capsys).startswith("qft_train.py: error: layer 7 is out of range")
