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


# -- the chat format, cut from the tokenizer's own chat template -----------------------------------------
ZEPHYR_TEMPLATE = (  # Zephyr's: <|role|> lines, eos after each message; the generation prompt lacks the newline
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}"
    "\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
FACT = ("Qi started Oxinnovate.", "Who started Oxinnovate?", ANSWER)


def _templated(tokenizer, template: str, specials: list[str] = (), **tokens):
    import copy

    tok = copy.deepcopy(tokenizer)
    if specials:
        tok.add_special_tokens({"additional_special_tokens": list(specials)})
    for name, value in tokens.items():
        setattr(tok, name, value)
    tok.chat_template = template
    return tok


def _render(tok, system, user, answer=None, add_generation_prompt=False):
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def test_no_template_is_raw_chatml(tokenizer):
    assert tokenizer.chat_template is None
    assert prompting.chat_format(tokenizer) is prompting.CHATML
    assert prompting.CHATML.generation_prompt("", "Hi?") == chatml_prompt("", "Hi?") + "<|im_start|>assistant\n"
    assert prompting.CHATML.end == prompting.ANSWER_END == "<|im_end|>"


def test_a_chatml_template_gives_the_papers_chatml_and_the_same_rows(tokenizer):
    chatml = _templated(tokenizer, "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
                                   "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
                                   "{{ '<|im_start|>assistant\n' }}{% endif %}")
    assert prompting.chat_format(chatml) == prompting.CHATML
    for system in (FACT[0], ""):
        plain, templated = teacher_forced(tokenizer, system, *FACT[1:]), teacher_forced(chatml, system, *FACT[1:])
        for field in ("input_ids", "kept", "weights", "targets"):
            assert torch.equal(getattr(plain, field), getattr(templated, field)), field


def test_a_llama3_template_is_cut_into_its_turns(llama3_tokenizer):
    tok = llama3_tokenizer
    fmt = prompting.chat_format(tok)
    assert fmt == prompting.ChatFormat(
        system_open="<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n", system_close="<|eot_id|>",
        user_open="<|start_header_id|>user<|end_header_id|>\n\n", user_close="<|eot_id|>",
        header="<|start_header_id|>assistant<|end_header_id|>\n\n", closing="<|eot_id|>")
    assert fmt.end == "<|eot_id|>"
    for system in FACT[0], "":
        assert fmt.prompt(system, FACT[1]) == _render(tok, system, FACT[1])
        assert fmt.generation_prompt(system, FACT[1]) == _render(tok, system, FACT[1], add_generation_prompt=True)
        assert fmt.conversation(system, FACT[1], ANSWER) == _render(tok, system, FACT[1], ANSWER)
    assert prompting.chat_format(tok) is fmt  # cut once per tokenizer


def test_teacher_forcing_keeps_the_answer_turn_of_a_llama3_template(llama3_tokenizer):
    tok = llama3_tokenizer
    sig = [0, 1, 2.5, 1, 3]
    tf = teacher_forced(tok, *FACT, sig)
    start_header, eot = tok.convert_tokens_to_ids(["<|start_header_id|>", "<|eot_id|>"])
    # the sequence is the template's own conversation, token for token as the pieces are tokenized
    assert tok.decode(tf.input_ids) == _render(tok, *FACT)
    # the first kept position reads the answer turn's <|start_header_id|>, right after the templated prompt
    assert tf.kept[0] == len(tok(_render(tok, *FACT[:2]), add_special_tokens=False)["input_ids"])
    assert tf.input_ids[tf.kept[0]] == start_header
    assert torch.equal(tf.input_ids[tf.kept + 1], tf.targets)
    assert tok.decode(tf.targets) == "assistant<|end_header_id|>\n\n" + ANSWER + "<|eot_id|>"
    assert tf.targets[-1] == eot
    # the header rows, then the answer's tokens with their words' significance, then the closing
    header = prompting.header_rows(tok)
    assert tok.decode(tf.targets[:header]) == "assistant<|end_header_id|>\n\n"
    assert tok.decode(tf.targets[header:-1]) == ANSWER
    _, per_token = answer_tokens(tok, ANSWER, sig)
    assert tf.weights.tolist() == [1.0] * header + per_token + [1.0]
    words = tf.answer_words(header)
    assert tok.decode(words.targets) == ANSWER and words.kept[0] == tf.kept[header]
    # the user turn opens at its <|start_header_id|>
    prompt = prompting.chat_format(tok).prompt("", FACT[1])
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    start = prompting.user_turn_start(tok, prompt)
    assert ids[start] == start_header and tok.decode(ids[start:]).startswith("<|start_header_id|>user")


def test_a_zephyr_template_teaches_the_header_it_writes_in_a_conversation(tokenizer):
    """Zephyr's generation prompt ends in `<|assistant|>`, its conversations in `<|assistant|>\\n`: the answer is
    teacher-forced and asked after the header of the conversation, so both passes see the same context."""
    tok = _templated(tokenizer, ZEPHYR_TEMPLATE, ["<|system|>", "<|user|>", "<|assistant|>"])
    fmt = prompting.chat_format(tok)
    assert fmt.header == "<|assistant|>\n" and fmt.closing == "<|im_end|>\n" and fmt.end == "<|im_end|>"
    assert fmt.system_close == "<|im_end|>\n" and fmt.user_open == "<|user|>\n"
    assert _render(tok, *FACT[:2], add_generation_prompt=True).startswith(fmt.prompt(*FACT[:2]) + "<|assistant|>")
    tf = teacher_forced(tok, *FACT)
    assert tok.decode(tf.input_ids) == _render(tok, *FACT)
    assert tok.decode(tf.targets[prompting.header_rows(tok):-1]) == ANSWER


@pytest.mark.parametrize("template, message", [
    ("{% for m in messages %}{% if m['role'] != 'system' %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endif %}"
     "{% endfor %}", "system text"),
    ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
     "{% endif %}{{ m['content'] }}{% endfor %}", "System role not supported"),
    ("{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endif %}"
     "{% endfor %}", "answer"),
    ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}{% endfor %}", "closing"),
])
def test_a_template_that_cannot_be_cut_is_refused_in_one_line(tokenizer, template, message):
    tok = _templated(tokenizer, template)
    with pytest.raises(prompting.ChatTemplateError, match=message) as caught:
        teacher_forced(tok, *FACT)
    assert "\n" not in str(caught.value)


def test_the_format_follows_a_changed_template(llama3_tokenizer):
    tok = llama3_tokenizer
    assert prompting.chat_format(tok).closing == "<|eot_id|>"
    tok.chat_template = None
    assert prompting.chat_format(tok) is prompting.CHATML
