"""The top-level scripts answer bad input with one line and exit code 2, before any work."""

import qf_learn_simple
from transformers_qf.core.facts import Fact
from transformers_qf.qf.walkthrough import Learn


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


# qf2_learn.py and qft_train.py: tests/unit/test_qf2_scripts.py
