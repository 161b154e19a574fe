"""The top-level scripts answer bad input with one line and exit code 2, before any work."""

import qf_learn_simple
from transformers_qf.qf.walkthrough import Fact, Learn


def test_a_missing_model_is_one_line(tmp_path, capsys):
    assert qf_learn_simple.main(["--model", str(tmp_path / "nowhere"), "--folder", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err


def test_a_significance_list_that_does_not_fit_fails_before_loading(tmp_path, capsys, monkeypatch):
    bad = Fact("Qi started Oxinnovate.", "Who started Oxinnovate?", "Oxinnovate was started by Qi.", [0, 1, 1])
    monkeypatch.setattr(qf_learn_simple, "STEPS", [Learn(bad)])
    monkeypatch.setattr(qf_learn_simple, "load_model", lambda *a: (_ for _ in ()).throw(AssertionError("loaded")))
    assert qf_learn_simple.main(["--folder", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "3 values but the answer has 5 words" in err


def test_qf2_learn_without_a_converted_model_says_how_to_make_one(tmp_path, capsys):
    import qf2_learn

    assert qf2_learn.main(["--model", str(tmp_path / "nowhere"), "--folder", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "python qft_train.py --layer 23" in err and "minutes" in err


def test_qf2_learn_refuses_a_stock_model(tiny_qwen2, tokenizer, tmp_path, capsys):
    import qf2_learn

    tiny_qwen2.save_pretrained(tmp_path / "stock")
    tokenizer.save_pretrained(tmp_path / "stock")
    assert qf2_learn.main(["--model", str(tmp_path / "stock"), "--layer", "2", "--folder", str(tmp_path / "p"),
                           "--dtype", "float32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the loader's progress bars
    assert err.startswith("qf2_learn.py: error: ") and "no QF2 block" in err and "qft_train.py --layer 2" in err


def test_qft_train_refuses_a_bad_layer_in_one_line(tiny_qwen2, tokenizer, tmp_path, capsys):
    import qft_train

    tiny_qwen2.save_pretrained(tmp_path / "stock")
    tokenizer.save_pretrained(tmp_path / "stock")
    assert qft_train.main(["--model", str(tmp_path / "stock"), "--layer", "7", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("qft_train.py: error: ") and "layer 7 is out of range" in err
