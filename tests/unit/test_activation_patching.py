"""benchmarks/probes/activation_patching.py on a tiny random model: the patch lands where it should."""

import pytest

from transformers_qf.core.facts import Fact

FACT = Fact(system="Qi started Oxinnovate.", user="Who started Oxinnovate?", answer="Oxinnovate was started by Qi.",
            target="Qi", paraphrases=["Who founded Oxinnovate?"], subject="Oxinnovate")


@pytest.fixture(scope="module")
def patching(load_script):
    return load_script("probes/activation_patching")


def test_the_subject_positions_spell_the_subject(patching, tokenizer):
    sets = patching.position_sets(tokenizer, FACT.user, FACT.subject, first_answer_row=20, length=30)
    prompt_ids = tokenizer(patching.prompting.chatml_prompt("", FACT.user), add_special_tokens=False)["input_ids"]
    assert tokenizer.decode([prompt_ids[i] for i in sets["subject"]]).strip() == "Oxinnovate"
    assert sets["subject-last"].tolist() == sets["subject"][-1:].tolist()
    assert sets["shared"].tolist() == sets["user"].tolist() + sets["answer"].tolist()


def test_patching_every_shared_row_at_the_last_layer_gives_the_open_book_answer(patching, tiny_model, tokenizer):
    last = len(tiny_model.model.layers) - 1
    row = patching.patch_fact(patching.Patcher(tiny_model), tokenizer, FACT, [0, last])
    assert row["open"] != pytest.approx(row["closed"], abs=1e-3)  # the fact changes the random model's answer
    assert row[f"L{last}/shared"] == pytest.approx(row["open"], abs=1e-4)  # all the later layers see is patched
    assert row[f"L{last}/answer"] == pytest.approx(row["open"], abs=1e-4)  # no attention after the last layer
    summary = patching.summarize([row], [0, last])
    assert summary["recovered"][f"L{last}/shared"] == pytest.approx(1.0, abs=1e-3)
