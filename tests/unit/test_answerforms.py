"""The model's own answer forms (answerforms.py): where a value goes, and the form fitted on."""

import pytest
import torch

from transformers_qf.editing import answerforms
from transformers_qf.core import prompting
from transformers_qf.editing.answerforms import form_at, own_answer_forms, target_logprobs, value_places


@pytest.mark.parametrize("answer, places", [
    ("The founder of Steitum Motors is Jose.", [0, 1, 2, 5, 6]),
    ("There are 56 people working at Glothasti.", [0, 1, 2, 3, 4, 5]),  # the subject is no place for a value
    ("Steitum Motors, or Steitum Motors?", [2]),
    ("Steitum Motors", []),
])
def test_a_value_can_start_at_any_word_outside_the_subject(answer, places):
    subject = "Glothasti" if "Glothasti" in answer else "Steitum Motors"
    assert value_places(answer, subject) == places


def test_the_form_keeps_the_words_before_the_place_and_ends_after_the_target():
    answer = "The founder of Steitum Motors is Jose."
    assert form_at(answer, 6, "Farid Jaramillo") == "The founder of Steitum Motors is Farid Jaramillo."
    assert form_at(answer, 0, "Farid Jaramillo") == "Farid Jaramillo."
    assert form_at("There are 56 people working at Glothasti.", 2, "976") == "There are 976."
    assert form_at(answer, 6, "Dr. Ana Lee.") == "The founder of Steitum Motors is Dr. Ana Lee."


def test_target_logprobs_are_the_log_probability_of_the_targets_tokens(tiny_qwen2, tokenizer):
    question, answer, target = "Who started Oxinnovate?", "Oxinnovate was started by Qi Lee.", "Qi Lee"
    tf = prompting.teacher_forced(tokenizer, "", question, answer)
    with torch.no_grad():
        logp = torch.log_softmax(tiny_qwen2(input_ids=tf.input_ids[None]).logits[0].float(), dim=-1)
    ends = [len(tokenizer.encode(prompting.chatml_prompt("", question) + prompting.ANSWER_HEADER + text))
            for text in ("Oxinnovate was started by", "Oxinnovate was started by Qi Lee.")]
    expected = sum(float(logp[p - 1, tf.input_ids[p]]) for p in range(ends[0], ends[1]))
    shorter = "Qi Lee."  # batched with a shorter answer (padded): the same value
    alone = target_logprobs(tiny_qwen2, tokenizer, question, [answer], target)
    batched = target_logprobs(tiny_qwen2, tokenizer, question, [shorter, answer], target)
    assert alone[0] == pytest.approx(expected, abs=1e-4) and batched[1] == pytest.approx(expected, abs=1e-4)


def test_own_answer_forms_put_the_target_where_it_is_likeliest(tiny_qwen2, tokenizer, monkeypatch):
    answers = ["The founder of Steitum Motors is Jose.", "Steitum Motors"]
    monkeypatch.setattr(answerforms, "greedy_batch", lambda model, tok, prompts, n, stop: answers[:len(prompts)])
    scores = {"The founder of Steitum Motors is Farid Jaramillo.": -3.0, "Farid Jaramillo.": -9.0}
    monkeypatch.setattr(answerforms, "target_logprobs",
                        lambda model, tok, q, forms, target: [scores.get(form, -20.0) for form in forms])
    forms = own_answer_forms(tiny_qwen2, tokenizer, ["Who is the founder of Steitum Motors?", "Tell me."],
                             "Farid Jaramillo", "Steitum Motors")
    assert forms == ["The founder of Steitum Motors is Farid Jaramillo.", None]
