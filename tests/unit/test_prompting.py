import math

import pytest
import torch

from transformers_qf.core import prompting
from transformers_qf.core.prompting import PromptError, answer_tokens, chatml_prompt, teacher_forced

ANSWER = "Oxinnovate was started by Qi."


def test_chatml_keeps_an_empty_system_turn():
    assert chatml_prompt("", "Hi?") == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n"


def test_kept_positions_predict_the_answer_turn(tokenizer):
    tf = teacher_forced(tokenizer, "Qi started Oxinnovate.", "Who started Oxinnovate?", ANSWER, [0, 1, 1, 1, 1])
    ids = tf.input_ids
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    # the first kept position reads the answer turn's <|im_start|>, the last one predicts <|im_end|>
    assert ids[tf.kept[0]] == im_start
    assert tf.targets[-1] == im_end
    assert (tf.targets == ids[tf.kept + 1]).all()
    # the prompt's own last position (predicting <|im_start|>) is not kept
    assert tf.kept[0] == len(tokenizer(chatml_prompt("Qi started Oxinnovate.", "Who started Oxinnovate?"),
                                       add_special_tokens=False)["input_ids"])
    n_header = len(tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]) - 1
    assert tokenizer.decode(tf.targets[:n_header]) == "assistant\n"


def test_significance_follows_the_predicted_token(tokenizer):
    sig = [0, 1, 2.5, 1, 3]
    tf = teacher_forced(tokenizer, "", "Who started Oxinnovate?", ANSWER, sig)
    ids, per_token = answer_tokens(tokenizer, ANSWER, sig)
    n_header = len(tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]) - 1
    assert tf.weights.tolist() == [1.0] * n_header + per_token + [1.0]
    # each word's tokens carry the word's number
    words = ANSWER.split()
    pos = 0
    for i, (word, s) in enumerate(zip(words, sig)):
        n = len(tokenizer(word if i == 0 else " " + word, add_special_tokens=False)["input_ids"])
        assert per_token[pos:pos + n] == [s] * n
        pos += n
    dropped = tf.nonzero()
    assert len(dropped.kept) == len(tf.kept) - per_token.count(0)
    assert (dropped.weights > 0).all()


def test_answer_tokenization_default_and_original(tokenizer):
    ids, _ = answer_tokens(tokenizer, ANSWER)
    assert tokenizer.decode(ids) == ANSWER
    ids, _ = answer_tokens(tokenizer, ANSWER, original_tokenization=True)
    assert tokenizer.decode(ids) == "".join(ANSWER.split())


@pytest.mark.parametrize(
    "answer, sig, message",
    [
        ("   ", None, "no tokens"),
        (ANSWER, [1, 1], "5 words"),
        (ANSWER, [1, 1, -1, 1, 1], ">= 0"),
        (ANSWER, [1, 1, math.nan, 1, 1], ">= 0"),
        (ANSWER, [1, 1, math.inf, 1, 1], ">= 0"),
    ],
)
def test_bad_answers_and_significances(tokenizer, answer, sig, message):
    with pytest.raises(PromptError, match=message):
        teacher_forced(tokenizer, "", "Q?", answer, sig)


def test_the_plain_format_of_the_converted_model(tokenizer):
    from transformers_qf.core.prompting import plain_prompt, plain_teacher_forced

    assert plain_prompt("", "Who?") == "system: \nuser: Who?\nassistant:"
    tf = plain_teacher_forced(tokenizer, "Qi is the CEO.", "Who is the CEO?", "The CEO is Qi.", [1, 1, 1, 10], end=True)
    text = tokenizer.decode(tf.input_ids)
    assert text == "system: Qi is the CEO.\nuser: Who is the CEO?\nassistant: The CEO is Qi.\n"
    assert torch.equal(tf.input_ids[tf.kept + 1], tf.targets)  # each kept position predicts its target
    assert tokenizer.decode(tf.targets) == "assistant: The CEO is Qi.\n"
    qi = tokenizer(" Qi", add_special_tokens=False)["input_ids"]
    weights = dict(zip(tf.targets.tolist(), tf.weights.tolist()))
    assert all(weights[t] == 10.0 for t in qi)
    assert tf.weights[-1] == 1.0 and tf.weights[-2] == 1.0  # the final '.' and the newline count 1


def test_encode_many_gives_the_tokenizers_ids(tokenizer):
    texts = [prompting.chatml_prompt("a fact", "a question?"), prompting.ANSWER_HEADER, " word", "héllo  wörld\n", ""]
    expected = tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert prompting.encode_many(tokenizer, texts) == expected
    tokenizer.backend_tokenizer.enable_truncation(max_length=2)  # configured truncation: the wrapper's call decides
    try:
        assert prompting.encode_many(tokenizer, texts) == expected
    finally:
        tokenizer.backend_tokenizer.no_truncation()
