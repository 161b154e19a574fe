"""QFt's training data: company facts as `system / user / assistant` samples, generated from a seed.

Three kinds, as in seed 004 (section 3.1):

- "real":       facts about well-known companies that the base model already answers correctly
                (asked with its own chat format; the others are dropped), asked with no system turn;
- "instructed": an invented company's fact given as the system turn, then asked about;
- "unknown":    an invented company asked about with no fact, or with a fact about another one:
                the answer is "Need more information."

Invented names come from worldfacts' "qft" pool, which the benchmark's never overlaps. Whole real
facts (subject and relation) are held out for the checks, so "held-out accuracy" asks about facts the
converted model never saw in training, in any phrasing.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Callable

from transformers_qf.data import worldfacts
from transformers_qf.qf.walkthrough import mentions

NEED_MORE = "Need more information."
COMPANY_RELATIONS = tuple(name for name, r in worldfacts.RELATIONS.items() if r.subject_kind == "company")
KINDS = ("real", "instructed", "unknown")


@dataclass(frozen=True)
class Sample:
    """One training or check example. `accepted`: strings a correct answer contains (any of them)."""

    system: str
    user: str
    answer: str
    kind: str
    subject: str
    relation: str
    accepted: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Dataset:
    train: list[Sample]
    heldout_real: list[Sample]  # one question per held-out real fact, never trained on
    heldout_text: list[Sample]  # held-out generated samples of every kind, for perplexity
    known_facts: int  # real company facts the base model answered correctly
    candidate_facts: int


def real_candidates() -> list[worldfacts.RealFact]:
    """The real company facts that the base model is asked about."""
    return [f for f in worldfacts.real_facts() if f.relation in COMPANY_RELATIONS]


def answers_correctly(answer: str, accepted: tuple[str, ...]) -> bool:
    return any(mentions(answer, a) for a in accepted)


def known_facts(facts: list[worldfacts.RealFact], ask: Callable[[list[str]], list[str]]) -> list[worldfacts.RealFact]:
    """The facts whose first question `ask` (questions -> answers, e.g. the base model) answers right."""
    questions = [worldfacts.RELATIONS[f.relation].question(f.subject, 0) for f in facts]
    answers = ask(questions)
    return [f for f, a in zip(facts, answers) if answers_correctly(a, f.answers)]


def _real_sample(fact: worldfacts.RealFact, phrasing: int) -> Sample:
    rel = worldfacts.RELATIONS[fact.relation]
    return Sample("", rel.question(fact.subject, phrasing), rel.answer(fact.subject, fact.value), "real",
                  fact.subject, fact.relation, fact.answers)


def _invented(rng: random.Random, names: worldfacts.NameMaker, kind: str) -> Sample:
    relation = rng.choice(COMPANY_RELATIONS)
    rel = worldfacts.RELATIONS[relation]
    subject = names.company()
    value = rel.draw_value(rng, names)
    question = rel.question(subject, rng.randrange(len(rel.questions)))
    if kind == "instructed":
        return Sample(rel.fact(subject, value, rng), question, rel.answer(subject, value), kind, subject, relation,
                      (rel.target(value),))
    system = ""
    if rng.random() < 1 / 3:  # a fact about another invented company is no answer either
        other = worldfacts.RELATIONS[rng.choice(COMPANY_RELATIONS)]
        system = other.fact(names.company(), other.draw_value(rng, names), rng)
    return Sample(system, question, NEED_MORE, kind, subject, relation, (NEED_MORE,))


def build(known: list[worldfacts.RealFact], n_samples: int = 3000, seed: int = 0, heldout_facts: int = 30,
          heldout_text: int = 120, mix: tuple[float, float, float] = (0.2, 0.5, 0.3)) -> Dataset:
    """The training samples and the held-out checks, deterministic in (`known`, `n_samples`, `seed`).

    mix: the shares of real, instructed and unknown samples. Real facts cycle through their question
    phrasings (and repeat) to fill their share; `heldout_facts` of them are kept out of training.
    """
    if len(known) < heldout_facts:
        raise ValueError(f"only {len(known)} real facts are known to the base model, fewer than the {heldout_facts} "
                         "to hold out: lower --heldout-facts")
    rng = random.Random(f"qft-data:{seed}")
    facts = sorted(known, key=lambda f: (f.relation, f.subject))
    rng.shuffle(facts)
    held, trained = facts[:heldout_facts], facts[heldout_facts:]
    names = worldfacts.NameMaker(seed=seed, pool="qft")

    n_real = round(mix[0] * n_samples)
    n_instructed = round(mix[1] * n_samples)
    real = []
    phrasing = 0
    while trained and len(real) < n_real:  # a model that knows no fact gets no real samples
        for fact in trained:
            n_questions = len(worldfacts.RELATIONS[fact.relation].questions)
            real.append(_real_sample(fact, phrasing % n_questions))
        phrasing += 1
    samples = real[:n_real]
    samples += [_invented(rng, names, "instructed") for _ in range(n_instructed)]
    samples += [_invented(rng, names, "unknown") for _ in range(n_samples - len(samples))]
    rng.shuffle(samples)

    text = [_real_sample(f, 1) for f in held[: heldout_text // 3]]
    text += [_invented(rng, names, "instructed" if i % 2 else "unknown") for i in range(heldout_text - len(text))]
    return Dataset(train=samples, heldout_real=[_real_sample(f, 0) for f in held], heldout_text=text,
                   known_facts=len(known), candidate_facts=len(real_candidates()))
