"""QF2's rows: the original's decode rows in the plain format, one tokenizer call for the whole text."""

import pytest
import torch

from transformers_qf.core.prompting import PromptError
from transformers_qf.qf2.rows import answer_rows, final_token_id, plain_prompt, plain_text

FACT = ("Qi is the CEO of Oxinnovate.", "Who is the CEO of Oxinnovate?", "The CEO of Oxinnovate is Qi.")


def test_the_text_is_the_plain_format_with_the_answer_and_a_closing_newline():
    assert plain_text(*FACT) == ("system: Qi is the CEO of Oxinnovate.\nuser: Who is the CEO of Oxinnovate?\n"
                                 "assistant: The CEO of Oxinnovate is Qi.\n")
    assert plain_text(*FACT).startswith(plain_prompt(*FACT[:2]))


def test_rows_run_from_the_header_to_the_last_answer_token(tokenizer):
    tf = answer_rows(tokenizer, *FACT, [1, 2, 3, 4, 5, 10])
    ids = tokenizer(plain_text(*FACT), add_special_tokens=False)["input_ids"]
    assert tf.input_ids.tolist() == ids  # the whole text, as one tokenizer call makes it
    assert torch.equal(tf.targets, tf.input_ids[tf.kept + 1]) and int(tf.kept[-1]) == len(ids) - 2
    # the prompt's own last row (predicting `assistant`) is a prefill row: never kept
    header_first = len(tokenizer(plain_prompt(*FACT[:2])[: -len("assistant:")], add_special_tokens=False)["input_ids"])
    assert int(tf.kept[0]) == header_first
    assert tf.weights[0] == 0  # the row predicting `:` has significance 0
    kept = tf.nonzero()
    assert tokenizer.decode(kept.targets) == " The CEO of Oxinnovate is Qi.\n"
    assert kept.weights[-1] == 10.0  # the final row carries the last word's significance, not 1
    assert set(kept.weights.tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0, 10.0} and kept.weights[0] == 1.0


def test_every_token_takes_its_words_significance(tokenizer):
    tf = answer_rows(tokenizer, "", FACT[1], FACT[2], [1, 2, 3, 4, 5, 6]).nonzero()
    pieces = [tokenizer.decode([int(t)]) for t in tf.targets]
    words, current = [], -1
    for piece, w in zip(pieces, tf.weights.tolist()):
        if piece.startswith(" "):
            current += 1
        words.append((current, w))
    assert all(w == i + 1 for i, w in words)  # word i's tokens (and the trailing `.\n`) all weigh i + 1


def test_a_significance_list_of_the_wrong_length_is_refused(tokenizer):
    with pytest.raises(PromptError, match="6 words"):
        answer_rows(tokenizer, *FACT, [1, 1, 10])
    with pytest.raises(PromptError, match="empty"):
        answer_rows(tokenizer, *FACT[:2], "  ")


def test_the_final_token_is_found_through_the_tokenizer(tokenizer):
    ids = tokenizer(".\n", add_special_tokens=False)["input_ids"]
    assert final_token_id(tokenizer) == (ids[0] if len(ids) == 1 else None)
