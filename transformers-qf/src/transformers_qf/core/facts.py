"""What a fact is, as text: the one `Fact` of the walkthroughs, the learner, the edits file and the benchmark.

A fact is taught as QF teaches it: `system` holds the fact in the open-book pass, `user` is the
question asked without it, and `answer` is the assistant turn teacher-forced in both passes. The
optional fields say more about it for the flows that need it:

- significance: one number per whitespace-separated word of `answer` (None: all 1);
- target: what a right answer must contain (the fact's value, e.g. "Amara Lindqvist"); the rows
  that predict it are the "target" positions;
- subject: the entity the fact is about, as written in `user` (the subject positions, rewordings);
- relation: the kind of fact (data/worldfacts.RELATIONS), which splits the benchmark's controls;
- paraphrases: other questions whose answer should change with the fact (benchmark scoring).

What is made of a fact lives next to the flow that makes it: a walkthrough's `Learn` step carries
QF2's learning rate for its round (qf/walkthrough.py), a learned fact carries the rows its passes
recorded (teach/edits.LearnedFact), and the benchmark's facts file stores the answer under the key
"assistant" (bench/data.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

OPTIONAL = ("target", "subject", "relation")


@dataclass(frozen=True)
class Fact:
    system: str  # the fact, given as the system turn in the open-book pass
    user: str  # the question, asked with and without the fact
    answer: str  # the assistant turn, teacher-forced in both passes
    significance: list[float] | None = None  # one number per word of the answer; None = all 1
    target: str | None = None  # what a right answer must contain (the fact's value)
    subject: str | None = None  # the entity it is about, as written in `user`
    relation: str | None = None  # the kind of fact (worldfacts.RELATIONS), if known
    paraphrases: list[str] = field(default_factory=list)  # other wordings of `user`

    def as_dict(self) -> dict:
        """system, user, answer and significance, then each optional field that is set (JSON-ready)."""
        significance = None if self.significance is None else list(self.significance)
        out = {"system": self.system, "user": self.user, "answer": self.answer, "significance": significance}
        out |= {k: getattr(self, k) for k in OPTIONAL if getattr(self, k) is not None}
        return out | ({"paraphrases": list(self.paraphrases)} if self.paraphrases else {})

    @classmethod
    def from_dict(cls, entry: dict) -> "Fact":
        """The inverse of `as_dict` (missing optional keys are None, or no paraphrases)."""
        return cls(entry["system"], entry["user"], entry["answer"], entry.get("significance"),
                   **{k: entry.get(k) for k in OPTIONAL}, paraphrases=list(entry.get("paraphrases") or []))
