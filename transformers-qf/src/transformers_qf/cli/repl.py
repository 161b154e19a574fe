"""`qf chat`: ask, give a fact, keep what the model said with it, forget it again.

Lines that do not start with '/' are questions, answered by the weights in the model now. A fact
given with /fact goes in the system turn of the next question only (open book); /keep then
consolidates that exchange into the weights: the open-book pass is the exchange with the fact, the
closed-book pass the same without it, and the answer is what the model said open-book. /keep right
after /fact, with no question asked, learns the fact as one sentence, as `qf learn SENTENCE` does
(the question and the value derived; the answer is the sentence). Every mistake gets one line that
says what was wrong and what to do; nothing raises out of `handle`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from transformers_qf.teach.learner import Learner, MethodLearner, parse_significance
from transformers_qf.teach.sentence import derive

PROMPT = "> "
HELP = """\
  QUESTION         ask; the answer comes from the weights in the model now
  /fact TEXT       put TEXT in context for the next question (open book)
  /keep [0,1,...]  learn the last open-book exchange into the weights (optional: a significance per word);
                   right after /fact, learn the fact itself as one sentence
  /facts           list what was learned
  /forget N        forget fact N exactly (the others are re-solved from the original weight)
  /save [FILE]     write the learned facts to an edits file (default: the --edits file)
  /help            this list
  /quit            leave (also Ctrl-D)"""


class ChatError(ValueError):
    """A mistake at the prompt; its message is shown as one line."""


@dataclass
class Exchange:
    """One open-book question and the model's answer to it."""

    fact: str
    question: str
    answer: str


class Chat:
    """The REPL's state and commands. `write` prints one message (a line, or /help's block)."""

    def __init__(self, learner: Learner | MethodLearner, edits_path: str | None = None, write: Callable[[str], None] = print):
        self.learner = learner
        self.edits_path = edits_path
        self.write = write
        self.fact: str | None = None  # for the next question
        self.last_open: Exchange | None = None
        self.unsaved = False
        self.quit_warned = False
        self.commands: dict[str, Callable[[str], bool | None]] = {
            "/fact": self.do_fact, "/keep": self.do_keep, "/facts": self.do_facts, "/forget": self.do_forget,
            "/save": self.do_save, "/help": self.do_help, "/quit": self.do_quit, "/exit": self.do_quit,
        }

    def banner(self) -> str:
        n = len(self.learner.edits.facts)
        return (f"qf chat: {self.learner.edits.identity.get('name', 'model')}, {self.learner.describe}, "
                f"{n} fact{'s' * (n != 1)} learned. Ask a question; /help lists the commands.")

    def run(self, read: Callable[[str], str] | None = None) -> int:
        """Read lines (default: `input`) until /quit or end of input; returns the exit status (0)."""
        read = read or input
        self.write(self.banner())
        while True:
            try:
                line = read(PROMPT)
            except EOFError:
                self.write("")
                self._warn_unsaved()
                return 0
            except KeyboardInterrupt:
                self.write("\n(Ctrl-C: type /quit to leave)")
                continue
            try:
                if not self.handle(line):
                    return 0
            except KeyboardInterrupt:
                self.write("interrupted: the weights are as they were before that command")

    def handle(self, line: str) -> bool:
        """Act on one line; False means leave. Mistakes and failures are shown as one line."""
        line = line.strip()
        if not line:
            return True
        name, _, arg = line.partition(" ")
        command = self.commands.get(name.lower()) if line.startswith("/") else self.ask
        if command is None:
            self.write(f"error: unknown command {name}: /help lists the commands")
            return True
        if command != self.do_quit:
            self.quit_warned = False
        try:
            return command(line if command == self.ask else arg.strip()) is not False
        except ChatError as e:
            self.write(f"error: {e}")
        except Exception as e:  # noqa: BLE001 - the REPL shows one line, never a traceback
            self.write(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        return True

    # -- commands ----------------------------------------------------------------------------------
    def ask(self, question: str) -> None:
        """Answer with the weights now; open book when a fact was given for this question."""
        fact, self.fact = self.fact, None
        answer = self.learner.ask(question, fact or "")
        if fact:
            self.last_open = Exchange(fact, question, answer)
            self.write(f"(open book) {answer}")
        else:
            self.write(answer)

    def do_fact(self, text: str) -> None:
        if not text:
            raise ChatError("/fact needs the fact, e.g. /fact The capital of Zubrovia is Pelmora.")
        replaced = self.fact is not None
        self.fact = text
        self.write(f"fact {'replaced' if replaced else 'in context'} for the next question: {text}")

    def do_keep(self, arg: str) -> None:
        if self.fact is not None:  # /fact, then /keep with no question: the fact as one sentence
            sentence = self.fact
            derived = derive(sentence, self.learner.model, self.learner.tokenizer)
            self.write(f"asked as: {derived.question} (value {derived.target!r})")
            self._learn(Exchange(sentence, derived.question, sentence), arg, derived.target, derived.subject)
            self.fact = None
            return
        ex = self.last_open
        if ex is None:
            raise ChatError("nothing to keep: give a fact with /fact TEXT, ask a question, then /keep")
        if not ex.answer.split():
            raise ChatError("nothing to keep: the open-book answer was empty; ask again with the fact")
        self._learn(ex, arg)

    def _learn(self, ex: Exchange, arg: str, target: str | None = None, subject: str | None = None) -> None:
        significance = parse_significance(arg) if arg else None
        before = self.learner.logprob(ex.question, ex.answer)
        t0 = time.perf_counter()
        fact, report = self.learner.learn(ex.fact, ex.question, ex.answer, significance, target=target, subject=subject)
        seconds = time.perf_counter() - t0
        after = self.learner.logprob(ex.question, ex.answer)
        self.last_open, self.unsaved = None, True
        n = len(self.learner.edits.facts)
        residual = report.get("residual") if isinstance(report, dict) else report.residual_applied
        rows = fact.rows or (report.get("rows", 0) if isinstance(report, dict) else 0)
        self.write(f"learned fact {n} in {seconds:.2f} s ({self.learner.describe}, {rows} rows"
                   f"{'' if residual is None else f', residual {residual:.1e}'}); log p of the answer without the "
                   f"fact: {before:.1f} -> {after:.1f}")

    def do_facts(self, arg: str) -> None:
        self._no_argument("/facts", arg)
        facts = self.learner.edits.facts
        if not facts:
            self.write("no facts learned yet: /fact TEXT, ask a question, then /keep")
            return
        self.write("\n".join(f"{i}. {f.fact.system} | {f.fact.user} -> {f.fact.answer} ({f.rows} rows)"
                             for i, f in enumerate(facts, 1)))

    def do_forget(self, arg: str) -> None:
        n = len(self.learner.edits.facts)
        try:
            number = int(arg)
        except ValueError:
            raise ChatError(f"/forget needs a fact number from /facts (1..{n}), e.g. /forget 1") from None
        if not 1 <= number <= n:
            raise ChatError(f"there is no fact {number}: {n} learned; /facts lists them, numbered from 1")
        t0 = time.perf_counter()
        self.learner.forget(number - 1)
        seconds = time.perf_counter() - t0
        self.unsaved = True
        left = n - 1
        if left:
            self.write(f"forgot fact {number} in {seconds:.2f} s; re-solved the other {left} from the original weight")
        else:
            same = "sha256 verified" if self.learner.is_original() else "WARNING: sha256 differs"
            self.write(f"forgot fact {number} in {seconds:.2f} s; layer {self.learner.layer} holds the original "
                       f"weight again ({same})")

    def do_save(self, arg: str) -> None:
        path = arg or self.edits_path
        if not path:
            raise ChatError("/save needs a file name, e.g. /save facts.safetensors")
        try:
            self.learner.edits.save(path)
        except OSError as e:
            raise ChatError(f"could not write {path} ({e.strerror or e}): check the folder exists and is writable") from e
        self.unsaved = False
        n = len(self.learner.edits.facts)
        self.write(f"saved {n} fact{'s' * (n != 1)} to {path} ({Path(path).stat().st_size / 1024:.0f} KiB)")

    def do_help(self, arg: str) -> None:
        self.write(HELP)

    def do_quit(self, arg: str) -> bool:
        if self.unsaved and not self.quit_warned:
            self.quit_warned = True
            self._warn_unsaved(" or /quit again to leave")
            return True
        return False

    # -- helpers -------------------------------------------------------------------------------------
    def _warn_unsaved(self, then: str = "") -> None:
        if self.unsaved:
            self.write(f"the learned facts changed since the last save: /save FILE to keep them{then}")

    @staticmethod
    def _no_argument(name: str, arg: str) -> None:
        if arg:
            raise ChatError(f"{name} takes no argument: type {name} alone")
