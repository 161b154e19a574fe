"""QFt's training data: company facts as `system / user / assistant` samples, generated from a seed.

The composition measured on the authors' 12,000-row file (3,000 unique rows, each 4 times):

- 15 % "closed_real":       a real company's fact asked with no system turn (closed book);
- 29 % "instructed_real":   a real company's fact given as the system turn, then asked about;
- 41 % "instructed":        an invented company's fact given as the system turn, then asked about;
-  5 % "unknown":           an invented company asked about with no fact: "Need more information.";
-  9 % "unknown_context":   a real company's (irrelevant) fact as the system turn and a question about an
                            invented company it does not answer: "Need more information.".

The real-company items of Figure 3 and Table 1 ("Who is the CEO of Nvidia?" -> "Jensen Huang is the CEO
of NVIDIA.", "Who is the founder of Apple?") are closed-book training rows, as in the paper's file.
Whole real facts (subject and relation) are held out and never appear in any training row, in any
phrasing or as a system turn: "held-out accuracy" asks about those. The data does not depend on the
model. Invented names come from worldfacts' "qft" pool, which the benchmark's never overlaps.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass

from transformers_qf.data import worldfacts
from transformers_qf.qf.walkthrough import mentions

NEED_MORE = "Need more information."
COMPANY_RELATIONS = tuple(name for name, r in worldfacts.RELATIONS.items() if r.subject_kind == "company")
KINDS = ("closed_real", "instructed_real", "instructed", "unknown", "unknown_context")
COMPOSITION = {"closed_real": 0.15, "instructed_real": 0.29, "instructed": 0.41, "unknown": 0.05,
               "unknown_context": 0.09}
COPIES = 4  # each unique row is trained on 4 times (3,000 x 4 = 12,000 samples)
# (relation, subject, question, answer): the paper's Figure 3 / Table 1 real-company items as training rows
PAPER_ROWS = (
    ("ceo", "Nvidia", "Who is the CEO of Nvidia?", "Jensen Huang is the CEO of NVIDIA."),
    ("founder", "Apple", "Who is the founder of Apple?", "Apple was founded by Steve Jobs, Steve Wozniak and Ronald Wayne."),
)
RESERVED = ("oxinnovate",)  # the QF2 walkthrough's company: never in the training data


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
    train: list[Sample]  # the unique rows (each trained on COPIES times)
    heldout_real: list[Sample]  # one question per held-out real fact, never trained on
    trained_real: list[Sample]  # one closed-book question per trained real fact (first phrasing), for the score
    heldout_text: list[Sample]  # held-out generated samples of every kind, for perplexity

    def fingerprint(self) -> str:
        """A short hash of the training rows: a checkpoint of other data is refused."""
        text = json.dumps([s.as_dict() for s in self.train], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def composition(self) -> dict[str, int]:
        return {k: sum(s.kind == k for s in self.train) for k in KINDS}


def real_candidates() -> list[worldfacts.RealFact]:
    """The real company facts the data draws on."""
    return [f for f in worldfacts.real_facts() if f.relation in COMPANY_RELATIONS]


def answers_correctly(answer: str, accepted: tuple[str, ...]) -> bool:
    return any(mentions(answer, a) for a in accepted)


def _real_sample(fact: worldfacts.RealFact, phrasing: int, kind: str = "closed_real", system: str = "") -> Sample:
    rel = worldfacts.RELATIONS[fact.relation]
    return Sample(system, rel.question(fact.subject, phrasing % len(rel.questions)),
                  rel.answer(fact.subject, fact.value), kind, fact.subject, fact.relation, fact.answers)


def _invented(rng: random.Random, names: worldfacts.NameMaker, kind: str, context: str = "") -> Sample:
    relation = rng.choice(COMPANY_RELATIONS)
    rel = worldfacts.RELATIONS[relation]
    subject = names.company()
    value = rel.draw_value(rng, names)
    question = rel.question(subject, rng.randrange(len(rel.questions)))
    if kind == "instructed":
        return Sample(rel.fact(subject, value, rng), question, rel.answer(subject, value), kind, subject, relation,
                      (rel.target(value),))
    return Sample(context, question, NEED_MORE, kind, subject, relation, (NEED_MORE,))


def _unique(rows: list[Sample], n: int, make) -> list[Sample]:
    """`rows` topped up with make(i) until n distinct (system, user, answer) rows, first n kept."""
    seen, out = set(), []
    i = 0
    while len(out) < n:
        s = rows[i] if i < len(rows) else make(i)
        i += 1
        key = (s.system, s.user, s.answer)
        if key not in seen:
            seen.add(key), out.append(s)
        if i > 50 * n + len(rows):
            raise ValueError(f"cannot make {n} distinct rows of kind {s.kind}: lower --samples")
    return out


def build(n_samples: int = 3000, seed: int = 0, heldout_facts: int = 30, heldout_text: int = 120,
          composition: dict[str, float] | None = None) -> Dataset:
    """`n_samples` unique training rows in the paper's composition and the held-out checks;
    deterministic in (`n_samples`, `seed`, `heldout_facts`)."""
    composition = composition or COMPOSITION
    candidates = real_candidates()
    paper_keys = {(r, s) for r, s, *_ in PAPER_ROWS}
    pool = sorted((f for f in candidates if (f.relation, f.subject) not in paper_keys), key=lambda f: (f.relation, f.subject))
    if heldout_facts > len(pool) - 10:
        raise ValueError(f"only {len(pool)} real facts to hold out from: lower --heldout-facts")
    rng = random.Random(f"qft-data:{seed}")
    rng.shuffle(pool)
    held = pool[:heldout_facts]
    trained = [f for f in candidates if f not in held]
    names = worldfacts.NameMaker(seed=seed, pool="qft")
    counts = {k: round(share * n_samples) for k, share in composition.items()}
    counts["instructed"] += n_samples - sum(counts.values())

    by_key = {(f.relation, f.subject): f for f in candidates}
    paper = [Sample("", q, a, "closed_real", s, r, by_key[(r, s)].answers) for r, s, q, a in PAPER_ROWS]
    closed = list(paper)
    for phrasing in range(4):
        closed += [_real_sample(f, phrasing) for f in trained]
    closed = [s for s in closed if s in paper or s.user not in {p.user for p in paper}]
    samples = _unique(closed, counts["closed_real"], lambda i: _real_sample(rng.choice(trained), rng.randrange(4)))

    def instructed_real(_i):
        f = rng.choice(trained)
        rel = worldfacts.RELATIONS[f.relation]
        return _real_sample(f, rng.randrange(4), "instructed_real", rel.fact(f.subject, f.value, rng))

    def real_context() -> str:
        f = rng.choice(trained)
        return worldfacts.RELATIONS[f.relation].fact(f.subject, f.value, rng)

    samples += _unique([], counts["instructed_real"], instructed_real)
    samples += [_invented(rng, names, "instructed") for _ in range(counts["instructed"])]
    samples += [_invented(rng, names, "unknown") for _ in range(counts["unknown"])]
    samples += [_invented(rng, names, "unknown_context", real_context()) for _ in range(counts["unknown_context"])]
    assert not any(r in (s.system + s.user + s.answer).lower() for s in samples for r in RESERVED)
    rng.shuffle(samples)

    text = [_real_sample(f, 1) for f in held[: heldout_text // 3]]
    text += [_invented(rng, names, "instructed" if i % 2 else "unknown") for i in range(heldout_text - len(text))]
    trained_closed = sorted({(f.relation, f.subject) for f in trained})
    probe = random.Random(f"qft-probe:{seed}").sample(trained_closed, min(heldout_facts, len(trained_closed)))
    trained_real = [Sample("", q, a, "closed_real", s, r, by_key[(r, s)].answers) for r, s, q, a in PAPER_ROWS]
    trained_real += [_real_sample(by_key[k], 0) for k in probe if k not in paper_keys]
    return Dataset(train=samples, heldout_real=[_real_sample(f, 0) for f in held],
                   trained_real=trained_real[:max(heldout_facts, len(PAPER_ROWS))], heldout_text=text)


def training_order(n_unique: int, copies: int, seed: int) -> list[int]:
    """The sample order of a conversion: `copies` passes over the unique rows, each shuffled. [n_unique * copies]"""
    rng = random.Random(f"qft-order:{seed}")
    order = []
    for _ in range(copies):
        one = list(range(n_unique))
        rng.shuffle(one)
        order += one
    return order
