"""`qf chat` on SmolLM2-135M in a real terminal (pexpect): ask, give a fact, keep, ask, forget, ask."""

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

from transformers_qf.teach.edits import Edits

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("pexpect") is None, reason="pexpect is not installed"),
]

QUESTION = "What is the capital of Zubrovia?"
FACT = "The capital of Zubrovia is Pelmora."
PROMPT = "\r\n> "


def qf_command() -> tuple[str, list[str]]:
    """The installed `qf` script beside this Python, else the module."""
    script = Path(sys.executable).with_name("qf")
    return (str(script), []) if script.exists() else (sys.executable, ["-m", "transformers_qf.cli.main"])


def send(child, line: str) -> str:
    """Type `line`, return what the REPL printed before its next prompt."""
    child.sendline(line)
    child.expect_exact(line)  # the terminal's echo
    child.expect_exact(PROMPT)
    return child.before.strip().replace("\r\n", "\n")


def test_teach_and_forget_a_fact_in_a_terminal(tmp_path):
    import pexpect

    path = tmp_path / "facts.safetensors"
    program, args = qf_command()
    child = pexpect.spawn(program, args + ["chat", "--model", "smollm2", "--max-new-tokens", "24", "--edits", str(path),
                                           "--preset", "paper"],
                          env={**os.environ, "TERM": "dumb"}, encoding="utf-8", timeout=300, dimensions=(50, 400))
    child.expect(r"qf chat: smollm2-135m-instruct, layer 29, 0 facts learned\. .*" + re.escape(PROMPT))
    child.timeout = 120

    before = send(child, QUESTION)
    assert before and not before.startswith(("error", "(open book)"))
    assert send(child, f"/fact {FACT}") == f"fact in context for the next question: {FACT}"
    open_book = send(child, QUESTION)
    assert open_book.startswith("(open book) ")

    kept = send(child, "/keep")
    m = re.fullmatch(r"learned fact 1 in ([\d.]+) s \(layer 29, (\d+) rows, residual ([\d.e+-]+)\); "
                     r"log p of the answer without the fact: (-[\d.]+) -> (-[\d.]+)", kept)
    assert m, kept
    assert float(m[1]) < 60 and int(m[2]) > 3 and float(m[3]) < 1e-5 and float(m[5]) > float(m[4])

    after = send(child, QUESTION)
    assert not after.startswith("(open book)")
    # Measured on SmolLM2-135M (float32, CPU): at layer 29 the closed-book answer becomes the open-book one,
    # "The capital of Zubrovia is Pelmora." (before: "...is Zubrovia-A-Lavender.").
    assert "Pelmora" in after and "Pelmora" not in before

    assert send(child, "/facts").startswith(f"1. {FACT} | {QUESTION} -> {open_book[len('(open book) '):]}")
    assert send(child, "/save").startswith(f"saved 1 fact to {path} (")
    assert send(child, "/forget 1").endswith("layer 29 holds the original weight again (sha256 verified)")
    assert send(child, QUESTION) == before
    assert send(child, "/forget 1") == "error: there is no fact 1: 0 learned; /facts lists them, numbered from 1"
    assert send(child, "/quit").startswith("the learned facts changed since the last save")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and "Traceback" not in child.before

    saved = Edits.load(path)
    assert saved.identity["name"] == "smollm2-135m-instruct" and saved.layer == 29
    assert [(f.fact.system, f.fact.user) for f in saved.facts] == [(FACT, QUESTION)]
