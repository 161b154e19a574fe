"""The presets registry, one-sentence facts and the refusal of facts that teach nothing."""

import pytest
import torch

from transformers_qf.core.prompting import FactError, PromptError
from transformers_qf.editing.editor import PAPER, RECOMMENDED
from transformers_qf.editing.presets import DEFAULT_PRESET, INTACT, PRESETS, get_preset
from transformers_qf.teach.learner import Learner, check_teaches, keeps_rows
from transformers_qf.teach.sentence import derive, subject_of, value_of


def test_the_registry_holds_the_five_presets_with_their_measures():
    assert list(PRESETS) == ["paper", "qf-fast", "intact", "ft", "in-context"] and DEFAULT_PRESET == "paper"
    assert PRESETS["paper"].config == PAPER and PRESETS["qf-fast"].config == RECOMMENDED
    assert INTACT.layers == (4, 5, 6, 7, 8) and INTACT.target == "optimized" and INTACT.keep_context
    assert PRESETS["ft"].config.layers == (23,) and PRESETS["in-context"].config is None
    for p in PRESETS.values():
        assert " an edit" in p.cost and "efficacy" in p.scores and p.run.startswith("sequential100-")
    assert [keeps_rows(PRESETS[n]) for n in ("paper", "qf-fast", "intact")] == [True, True, False]


def test_layers_are_placed_in_models_of_other_depths():
    assert PRESETS["paper"].layers_for(28) == (23,) and PRESETS["paper"].layers_for(30) == (29,)
    assert PRESETS["intact"].layers_for(28) == (4, 5, 6, 7, 8) and PRESETS["intact"].layers_for(4) == (0, 1, 2, 3)
    assert PRESETS["intact"].layers_for(56) == (8, 9, 10, 11, 12)
    assert PRESETS["in-context"].layers_for(30) == ()
    with pytest.raises(PromptError, match="unknown preset 'best': use one of paper, qf-fast"):
        get_preset("best")
    with pytest.raises(PromptError, match="edits layers 4,5,6,7,8 together"):
        PRESETS["intact"].config_for(layer=3)
    assert PRESETS["qf-fast"].config_for(layer=5).layers == (5,)


@pytest.mark.parametrize("sentence, question, target, subject", [
    ("The capital of Zubrovia is Pelmora.", "What is the capital of Zubrovia?", "Pelmora", "Zubrovia"),
    ("The CEO of Steitum Motors is Ada Lee.", "Who is the CEO of Steitum Motors?", "Ada Lee", "Steitum Motors"),
    ("Ada Lee is the CEO of Steitum Motors.", "Who is the CEO of Steitum Motors?", "Ada Lee", "Steitum Motors"),
    ("  The founder of Velmora Labs was Tomasz Oyelaran  ", "Who was the founder of Velmora Labs?",
     "Tomasz Oyelaran", "Velmora Labs"),
])
def test_template_sentences_give_their_question_without_a_model(sentence, question, target, subject):
    assert derive(sentence) == type(derive(sentence))(question, target, subject, "template")


def test_other_sentences_need_the_model_and_its_question():
    with pytest.raises(FactError, match="give --user QUESTION"):
        derive("Qi started Oxinnovate.")
    with pytest.raises(FactError, match="the fact is empty"):
        derive("   ")
    assert value_of("Steitum Motors was founded by Ada Lee.", "Who founded Steitum Motors?") == "Ada Lee"
    assert subject_of("Steitum Motors was founded by Ada Lee.", "Who founded Steitum Motors?") == "Steitum Motors"


def test_the_model_rewrites_a_sentence_into_a_question(tiny_qwen2, tokenizer, monkeypatch):
    from transformers_qf.teach import sentence

    asked = []
    monkeypatch.setattr(sentence, "greedy_batch", lambda m, t, prompts, n, stop: asked.extend(prompts) or
                        ["Who started Oxinnovate?\nmore"])
    got = derive("Qi started Oxinnovate.", tiny_qwen2, tokenizer)
    assert got == sentence.Derived("Who started Oxinnovate?", "Qi", "Oxinnovate", "model")
    assert "Qi started Oxinnovate." in asked[0] and sentence.SYSTEM in asked[0]
    monkeypatch.setattr(sentence, "greedy_batch", lambda *a, **k: ["Qi started Oxinnovate."])
    with pytest.raises(FactError, match="did not turn 'Qi started Oxinnovate.' into a question"):
        derive("Qi started Oxinnovate.", tiny_qwen2, tokenizer)


def test_rows_that_do_not_differ_are_refused():
    u, v = torch.randn(4, 96), torch.randn(4, 32)
    with pytest.raises(FactError, match="the fact changes nothing"):
        check_teaches(u, u.clone(), v, v.clone())
    with pytest.raises(FactError, match="keeps no rows"):
        check_teaches(u[:0], u[:0], v[:0], v[:0])
    check_teaches(u, u + 1e-3, v, v)


def test_the_learner_refuses_a_fact_that_changes_nothing_before_any_change(tiny_qwen2, tokenizer):
    learner = Learner(tiny_qwen2, tokenizer, {"name": "tiny"}, layer=3)
    W = learner.parts.down.weight.detach().clone()
    for fact in ("", " \n"):
        with pytest.raises(FactError, match="the fact is empty"):
            learner.learn(fact, "Who started Oxinnovate?", "Qi.")
    assert torch.equal(learner.parts.down.weight, W) and not learner.edits.facts
    target = Learner(tiny_qwen2, tokenizer, {"name": "tiny"}, layer=3, positions="target")
    with pytest.raises(FactError, match="keeps no rows"):  # the value's words all dropped
        target.learn("Qi started Oxinnovate.", "Who started Oxinnovate?", "It was Qi.", significance=[1, 1, 0])
    assert torch.equal(target.parts.down.weight, W) and not target.edits.facts


def test_target_positions_keep_the_rows_that_predict_the_value(tiny_qwen2, tokenizer):
    full = Learner(tiny_qwen2, tokenizer, {"name": "tiny"}, layer=3)
    fact = full.record("Qi started Oxinnovate.", "Who started Oxinnovate?", "Oxinnovate was started by Qi.")
    target = Learner(tiny_qwen2, tokenizer, {"name": "tiny"}, layer=3, positions="target")
    rows = target.record("Qi started Oxinnovate.", "Who started Oxinnovate?", "Oxinnovate was started by Qi.")
    qi = tokenizer(" Qi.", add_special_tokens=False)["input_ids"]  # the answer's word "Qi.", the value's
    assert rows.targets == qi and rows.fact.target == "Qi" and fact.rows > rows.rows
    assert torch.equal(rows.u, fact.u[-1 - len(qi):-1])  # the same rows, those before the closing token
