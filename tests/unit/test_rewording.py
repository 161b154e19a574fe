"""rewording.rewordings: the model's own rewordings of a question, filtered."""

from transformers_qf.editing import rewording


def test_rewordings_keep_new_questions_that_name_the_subject(monkeypatch):
    answers = ['"Who established Steitum Motors?"\nI hope this helps.',  # first line, quotes stripped
               "Who founded Steitum Motors?",  # the question itself
               "who established steitum motors?",  # a repeat (case aside), and the subject's case is lost
               "Who started Steitum Motor?",  # the subject misspelt
               "Who is the founder of Steitum Motors?"]
    prompts_seen = []

    def fake_greedy(model, tokenizer, prompts, max_new_tokens, stop):
        prompts_seen.extend(prompts)
        return answers[:len(prompts)]

    monkeypatch.setattr(rewording, "greedy_batch", fake_greedy)
    got = rewording.rewordings(None, None, "Who founded Steitum Motors?", "Steitum Motors", 3)
    assert got == ["Who established Steitum Motors?", "Who is the founder of Steitum Motors?"]
    assert len(prompts_seen) == rewording.FIRST  # up to FIRST rewordings: the first FIRST instructions, as ever
    assert all(p.endswith("<|im_start|>assistant\n") and "Who founded Steitum Motors?" in p and rewording.SYSTEM in p
               for p in prompts_seen)
    assert rewording.rewordings(None, None, "Who founded Steitum Motors?", "Steitum Motors", 1) == got[:1]


def test_more_rewordings_than_the_first_instructions_ask_all_of_them(monkeypatch):
    prompts_seen = []

    def fake_greedy(model, tokenizer, prompts, max_new_tokens, stop):
        prompts_seen.extend(prompts)
        return [f"Question {i} about Steitum Motors?" for i in range(len(prompts))]

    monkeypatch.setattr(rewording, "greedy_batch", fake_greedy)
    got = rewording.rewordings(None, None, "Who founded Steitum Motors?", "Steitum Motors", 8)
    assert len(prompts_seen) == len(rewording.INSTRUCTIONS) > rewording.FIRST
    assert got == [f"Question {i} about Steitum Motors?" for i in range(8)]


def test_an_answer_instead_of_a_rewording_is_not_kept(monkeypatch):
    answers = ["Steitum Motors was founded by John Doe.",  # the model answered (with a value of its own)
               "Who established Steitum Motors",  # no question mark: not kept either
               "Who started Steitum Motors?"]
    monkeypatch.setattr(rewording, "greedy_batch",
                        lambda model, tokenizer, prompts, max_new_tokens, stop: answers + [""] * (len(prompts) - 3))
    assert rewording.rewordings(None, None, "Who founded Steitum Motors?", "Steitum Motors", 3) == \
        ["Who started Steitum Motors?"]
