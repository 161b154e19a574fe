"""`qf chat` on the tiny random Qwen2: the whole flow, and one line for every mistake."""

import copy

import pytest
import torch

from transformers_qf.cli import main as cli
from transformers_qf.teach.edits import Edits
from transformers_qf.core.models import LoadedModel
from transformers_qf.cli.repl import Chat
from transformers_qf.teach.learner import Learner

FACT = "Qi started Oxinnovate."
QUESTION = "Who started Oxinnovate?"


@pytest.fixture
def chat(tiny_qwen2, tokenizer):
    """A Chat whose messages are collected in chat.lines."""
    lines = []
    c = Chat(Learner(tiny_qwen2, tokenizer, {"name": "tiny"}, max_new_tokens=6), write=lines.append)
    c.lines = lines
    return c


def say(chat: Chat, line: str) -> str:
    """The one message `line` produced."""
    before = len(chat.lines)
    assert chat.handle(line) is True
    assert len(chat.lines) == before + 1, chat.lines[before:]
    return chat.lines[-1]


def weight(chat: Chat) -> torch.Tensor:
    return chat.learner.parts.down.weight.detach().clone()


def test_ask_fact_keep_forget(chat, tmp_path):
    W = weight(chat)
    closed = say(chat, QUESTION)
    assert say(chat, f"/fact {FACT}") == f"fact in context for the next question: {FACT}"
    open_book = say(chat, QUESTION)
    assert open_book.startswith("(open book) ")
    kept = say(chat, "/keep")
    assert kept.startswith("learned fact 1 in ") and " s (layer 3, " in kept and "log p of the answer" in kept
    assert not torch.equal(weight(chat), W)
    assert say(chat, "/facts") == f"1. {FACT} | {QUESTION} -> {open_book[len('(open book) '):]} " \
                                  f"({chat.learner.edits.facts[0].rows} rows)"
    assert not say(chat, QUESTION).startswith("(open book)")  # the fact was for one question only
    saved = say(chat, f"/save {tmp_path / 'facts.safetensors'}")
    assert saved.startswith(f"saved 1 fact to {tmp_path / 'facts.safetensors'} (")
    assert len(Edits.load(tmp_path / "facts.safetensors").facts) == 1
    assert "holds the original weight again (sha256 verified)" in say(chat, "/forget 1")
    assert torch.equal(weight(chat), W)
    assert say(chat, QUESTION) == closed
    assert say(chat, "/facts").startswith("no facts learned yet")


@pytest.mark.parametrize("line, message", [
    ("/teach me", "error: unknown command /teach: /help lists the commands"),
    ("/keep", "error: nothing to keep: give a fact with /fact TEXT, ask a question, then /keep"),
    ("/fact", "error: /fact needs the fact, e.g. /fact The capital of Zubrovia is Pelmora."),
    ("/forget", "error: /forget needs a fact number from /facts (1..0), e.g. /forget 1"),
    ("/forget one", "error: /forget needs a fact number from /facts (1..0), e.g. /forget 1"),
    ("/forget 1", "error: there is no fact 1: 0 learned; /facts lists them, numbered from 1"),
    ("/save", "error: /save needs a file name, e.g. /save facts.safetensors"),
    ("/facts all", "error: /facts takes no argument: type /facts alone"),
])
def test_each_mistake_gets_one_line(chat, line, message):
    W = weight(chat)
    assert say(chat, line) == message
    assert torch.equal(weight(chat), W)


def test_mistakes_after_learning(chat, tmp_path):
    say(chat, f"/fact {FACT}")
    say(chat, QUESTION)
    assert say(chat, "/keep 1,x").startswith("error: bad significance '1,x': give one number per word")
    assert "error: significance has 1 values but the answer has" in say(chat, "/keep 1")
    assert say(chat, "/keep").startswith("learned fact 1")
    assert say(chat, "/keep").startswith("error: nothing to keep")  # that exchange is kept already
    assert say(chat, "/forget 2") == "error: there is no fact 2: 1 learned; /facts lists them, numbered from 1"
    assert say(chat, "/forget 0") == "error: there is no fact 0: 1 learned; /facts lists them, numbered from 1"
    missing = tmp_path / "no" / "facts.safetensors"
    assert say(chat, f"/save {missing}") == (f"error: could not write {missing} (No such file or directory): "
                                             "check the folder exists and is writable")
    assert say(chat, "/fact again") == "fact in context for the next question: again"
    assert say(chat, "/fact other") == "fact replaced for the next question: other"


def test_an_empty_open_book_answer_cannot_be_kept(chat, monkeypatch):
    monkeypatch.setattr(chat.learner, "ask", lambda question, fact="": "")
    say(chat, f"/fact {FACT}")
    say(chat, QUESTION)
    assert say(chat, "/keep") == "error: nothing to keep: the open-book answer was empty; ask again with the fact"


def test_an_unexpected_failure_is_one_line_too(chat, monkeypatch):
    def boom(question, fact=""):
        raise RuntimeError("out of memory\nsecond line")

    monkeypatch.setattr(chat.learner, "ask", boom)
    assert say(chat, QUESTION) == "error: out of memory"


def test_quit_warns_once_about_unsaved_facts(chat):
    assert chat.handle("/quit") is False
    say(chat, f"/fact {FACT}")
    say(chat, QUESTION)
    say(chat, "/keep")
    assert say(chat, "/quit") == ("the learned facts changed since the last save: /save FILE to keep them "
                                  "or /quit again to leave")
    assert chat.handle("/quit") is False


def test_run_reads_until_end_of_input_and_survives_ctrl_c(chat):
    inputs = iter(["", KeyboardInterrupt, "/nope"])

    def read(prompt):
        assert prompt == "> "
        item = next(inputs, EOFError)
        if isinstance(item, type) and issubclass(item, BaseException):
            raise item
        return item

    assert chat.run(read) == 0
    assert chat.lines[0].startswith("qf chat: tiny, layer 3, 0 facts learned.")
    assert chat.lines[1:] == ["\n(Ctrl-C: type /quit to leave)", "error: unknown command /nope: /help lists the commands",
                              ""]


def test_qf_chat_starts_from_an_edits_file_and_saves_to_it(monkeypatch, capsys, tiny_qwen2, tokenizer, tmp_path):
    path = tmp_path / "facts.safetensors"

    def fresh(spec=None, device=None, dtype=None) -> LoadedModel:
        return LoadedModel(copy.deepcopy(tiny_qwen2), tokenizer, name="tiny", source="test", quantization="none")

    lm = fresh()
    learner = Learner(lm.model, tokenizer, lm.identity)
    learner.learn(FACT, QUESTION, "Oxinnovate was started by Qi.")
    learner.edits.save(path)
    monkeypatch.setattr(cli, "load", fresh)
    lines = iter(["/facts", "/forget 1", "/save", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(lines))
    assert cli.main(["chat", "--edits", str(path), "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("qf chat: tiny, layer 3, 1 fact learned.")
    assert out[1].startswith(f"1. {FACT} | {QUESTION} -> Oxinnovate was started by Qi.")
    assert "sha256 verified" in out[2] and out[3].startswith(f"saved 0 facts to {path}")
    assert Edits.load(path).facts == []


def test_keep_right_after_fact_learns_the_sentence(chat):
    W = weight(chat)
    say(chat, "/fact The capital of Zubrovia is Pelmora.")
    before = len(chat.lines)
    assert chat.handle("/keep") is True
    asked, kept = chat.lines[before:]
    assert asked == "asked as: What is the capital of Zubrovia? (value 'Pelmora')"
    assert kept.startswith("learned fact 1 in ") and " s (layer 3, " in kept
    fact = chat.learner.edits.facts[0].fact
    assert (fact.system, fact.user, fact.answer) == ("The capital of Zubrovia is Pelmora.",
                                                     "What is the capital of Zubrovia?",
                                                     "The capital of Zubrovia is Pelmora.")
    assert not torch.equal(weight(chat), W)
    assert say(chat, "/keep").startswith("error: nothing to keep")  # the sentence was learned once


def test_an_empty_open_book_fact_is_refused_in_one_line(chat):
    chat.last_open = __import__("transformers_qf.cli.repl", fromlist=["Exchange"]).Exchange(" ", QUESTION, "Qi.")
    W = weight(chat)
    assert say(chat, "/keep").startswith("error: the fact is empty")
    assert torch.equal(weight(chat), W) and not chat.learner.edits.facts


def test_a_preset_without_rows_cannot_forget_one_fact(tiny_qwen2, tokenizer):
    from transformers_qf.editing.presets import get_preset
    from transformers_qf.teach.learner import MethodLearner

    lines = []
    c = Chat(MethodLearner(tiny_qwen2, tokenizer, {"name": "tiny"}, get_preset("ft"), max_new_tokens=4),
             write=lines.append)
    c.lines = lines
    say(c, f"/fact {FACT}")
    say(c, QUESTION)
    assert say(c, "/keep").startswith("learned fact 1 in ") and "(preset ft, layers 3," in c.lines[-1]
    assert say(c, "/forget 1") == ("error: preset ft keeps no rows a fact, so one fact cannot be forgotten: "
                                   "start again from an earlier edits file")
    assert len(c.learner.edits.facts) == 1
