"""Generate a benchmark facts file: invented facts, and real controls the model is checked to know.

    python -m transformers_qf.bench.generate --n 100 --out benchmarks/facts/facts_100.jsonl [--model M]
    python -m transformers_qf.bench.generate --n 10,100,1000 --out benchmarks/facts/facts_{n}.jsonl

Facts are drawn from `worldfacts` with the benchmark's pool of invented names (never QFt's), one
entity per fact, relations in turn (founder, CEO, headquarters, founding year, staff size, product,
capital). The question is one of the relation's phrasings; the others are its paraphrases. The same
seed gives the same facts, and the first n facts of a larger file are those of a smaller one.

Controls are questions about real facts (`worldfacts.REAL_FACTS`), asked to the unedited model at
generation time; a control is kept only if the model's answer gives one of the fact's accepted
answers, which becomes its target. Half the controls ask about the invented facts' relations (CEO of
a real company...), half about others (capitals, authors...).
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import Callable

from transformers_qf.core.errors import USER_ERRORS
from transformers_qf.core.report import git_commit
from transformers_qf.core.scriptargs import add_model_args
from transformers_qf.data.worldfacts import REAL_FACTS, RELATIONS, NameMaker
from transformers_qf.bench.data import Control, FactsFile, write_facts
from transformers_qf.core.facts import Fact
from transformers_qf.bench.metrics import gives

FACT_RELATIONS = ("founder", "ceo", "headquarters", "founding_year", "staff_size", "product", "capital")

Answer = Callable[[list[tuple[str, str]]], list[str]]  # (system, user) prompts -> answers


def invented_facts(n: int, seed: int = 0) -> list[Fact]:
    """n facts about invented entities; deterministic, and prefix-stable in n."""
    names = NameMaker(seed, pool="bench")
    rng = random.Random(f"{seed}:facts")
    facts = []
    for i in range(n):
        relation = RELATIONS[FACT_RELATIONS[i % len(FACT_RELATIONS)]]
        subject = names.entity(relation.subject_kind)
        value = relation.draw_value(rng, names)
        order = list(range(len(relation.questions)))
        rng.shuffle(order)
        questions = [relation.question(subject, j) for j in order]
        facts.append(Fact(
            system=relation.fact(subject, value, rng), user=questions[0],
            answer=relation.answer(subject, value), target=relation.target(value),
            paraphrases=questions[1:], significance=None, relation=relation.name, subject=subject,
        ))
    return facts


def answered_controls(answer: Answer, leave_out: frozenset[str] = frozenset()) -> tuple[list[tuple[Control, str]], int]:
    """Every real fact whose question (not in `leave_out`) the model answers right, as a control with the
    model's answer, in `REAL_FACTS` order; and how many were asked.

    An accepted answer that the question itself contains ("Packard" in "Who founded Hewlett-Packard?")
    proves nothing and is not used.
    """
    candidates = [(f, RELATIONS[f.relation].question(f.subject, 0)) for f in REAL_FACTS]
    candidates = [(f, q) for f, q in candidates if q not in leave_out]
    answers = answer([("", q) for _, q in candidates])
    kept = []
    for (fact, question), text in zip(candidates, answers):
        target = next((a for a in fact.answers if not gives(question, a) and gives(text, a)), None)
        if target is not None:
            kept.append((Control(question, target, fact.relation, fact.subject), text))
    return kept, len(candidates)


def known_controls(answer: Answer, seed: int = 0) -> tuple[list[Control], int]:
    """Every real fact the model answers right, as a control (in a seeded order); and how many were asked."""
    answered, asked = answered_controls(answer)
    kept = [control for control, _ in answered]
    random.Random(f"{seed}:controls").shuffle(kept)
    return kept, asked


def pick_controls(kept: list[Control], count: int) -> list[Control]:
    """Up to `count` controls, half about the invented facts' relations (as far as there are enough),
    each half taking the relations in turn so that every relation is asked about."""
    same = _interleaved([c for c in kept if c.relation in FACT_RELATIONS])
    other = _interleaved([c for c in kept if c.relation not in FACT_RELATIONS])
    half = min(count // 2, len(same))
    chosen = same[:half] + other[:count - half]
    chosen += same[half:half + count - len(chosen)]
    return chosen


def _interleaved(controls: list[Control]) -> list[Control]:
    """One control of each relation in turn (relations in order of first appearance)."""
    groups: dict[str, list[Control]] = {}
    for c in controls:
        groups.setdefault(c.relation, []).append(c)
    out = []
    while any(groups.values()):
        for group in groups.values():
            if group:
                out.append(group.pop(0))
    return out


def default_controls(n: int) -> int:
    return max(20, min(100, n // 2))


def generate(n: int, kept: list[Control], asked: int, seed: int = 0, controls: int | None = None,
             meta: dict | None = None) -> FactsFile:
    """The facts file of n invented facts and controls picked from `kept` (see known_controls)."""
    chosen = pick_controls(kept, default_controls(n) if controls is None else controls)
    info = {"generator": "transformers_qf.bench.generate", "n": n, "seed": seed, "controls_asked": asked,
            "controls_known": len(kept), **(meta or {})}
    return FactsFile(invented_facts(n, seed), chosen, info)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transformers_qf.bench.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--n", required=True, help="number of facts, or several: 10,100,1000")
    parser.add_argument("--out", required=True, help="facts file to write (JSON lines); {n} stands for the number")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--controls", type=int, default=None, help="number of controls (default: n/2 within 20..100)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    add_model_args(parser)
    args = parser.parse_args(argv)
    try:
        sizes = [int(t) for t in args.n.split(",")]
    except ValueError:
        parser.error(f"--n {args.n!r}: give a number or numbers like 10,100,1000")
    if min(sizes) < 1 or (len(sizes) > 1 and "{n}" not in args.out):
        parser.error("--n must be at least 1, and several sizes need {n} in --out")
    try:
        from transformers_qf.core.models import load_model
        from transformers_qf.bench.answering import Answerer

        lm = load_model(args.model, args.device, args.dtype)
        answerer = Answerer(lm.model, lm.tokenizer, max_new_tokens=args.max_new_tokens)
        meta = {"model": lm.name, "dtype": str(lm.model.dtype).replace("torch.", ""), "commit": git_commit()}
        kept, asked = known_controls(answerer.answers, args.seed)
    except USER_ERRORS as e:
        print(f"generate: error: {e}", file=sys.stderr)
        return 2
    for n in sizes:
        data = generate(n, kept, asked, args.seed, args.controls, meta)
        path = args.out.replace("{n}", str(n))
        write_facts(path, data)
        print(f"wrote {path}: {len(data.facts)} facts, {len(data.controls)} controls "
              f"({len(kept)} of {asked} real facts known to the model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
