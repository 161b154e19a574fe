"""The two protocols, scored by free greedy generation, resumable from their cases file.

- single: each fact is put into the model as loaded (the method is reset before every edit) and
  scored at once: its question, its paraphrases, a few controls (half about the facts' relations).
- sequential: the facts go in one after another. Right after each edit its question and paraphrases
  are scored; at each checkpoint (e.g. after 10, 30, 100 edits) every fact learned so far and every
  control; after the last edit (the final checkpoint) every question, paraphrase and control, so
  retention shows.

Before any edit, the controls are answered by the unedited model (a control counts for specificity
only if that answer gives its target), the open prompts are answered for fluency, and the target's
log-probability is taken. Every answer is one row of DIR/cases.jsonl, keyed; a run that stops can be
started again with the same command and skips what its cases file already holds. In the sequential
protocol the method's state is saved beside it (DIR/state.safetensors, state.py) at every checkpoint and
at least every `state_every` seconds; a resumed run goes on from the last state, and makes again, unscored,
only the edits after it. With a drift guard (`guard_max_drop`, `guard_max_lost`), an edit that lowers the
teacher-forced log p of a fixed set of controls too far, or makes too many of them no longer the greedy answer,
is withdrawn and its row says so. With `guard_resolve`, an edit that loses guard controls is first solved
again with those controls held where the unedited model has them (`method.hold`), and checked again. With
`guard_held_out`, the guard watches real facts that the facts file's controls leave out, so that what it
protects is not what specificity scores.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from transformers_qf.bench.answering import Answerer
from transformers_qf.bench.data import Control, FactsFile
from transformers_qf.bench.generate import answered_controls, pick_controls
from transformers_qf.core.facts import Fact
from transformers_qf.bench.metrics import gives, ngram_entropy
from transformers_qf.bench.state import STATE_FILE, load_state, save_state

PROTOCOLS = ("single", "sequential")

# open prompts whose free answers measure fluency before and after editing (fixed, never edited)
FLUENCY_PROMPTS = (
    "Tell me about the history of the bicycle.",
    "Describe a typical morning in a busy city.",
    "What are the benefits of learning a second language?",
    "Write a short paragraph about the ocean.",
    "Explain how a refrigerator keeps food cold.",
    "What makes a good team leader?",
    "Describe the seasons of the year.",
    "Why do people keep pets?",
)


class CasesFileError(ValueError):
    """A cases file from another configuration, or one that cannot be read."""


@dataclass
class RunOptions:
    protocol: str = "sequential"
    max_new_tokens: int = 24
    checkpoints: tuple[int, ...] = (10, 30, 100, 300)
    controls_per_edit: int = 4  # single protocol
    fluency_edits: int = 3  # single protocol: fluency after this many edits, spread over the facts
    fluency_tokens: int = 64
    immediate: bool = True  # sequential: score each fact right after its edit
    paraphrases: int | None = None  # score only each fact's first N paraphrases (None: all)
    seed: int = 0
    guard_max_drop: float | None = None  # sequential: refuse an edit that lowers the guard controls' mean log p more
    guard_max_lost: int | None = None  # sequential: refuse an edit after which more guard controls' targets are lost
    guard_controls: int = 16  # sequential, with a guard: how many controls (the first the unedited model answers)
    guard_held_out: bool = False  # the guard's controls: real facts the facts file's controls leave out (not scored)
    guard_resolve: bool = False  # an edit that loses guard controls is solved again with them held (method.hold)

    @property
    def guarded(self) -> bool:
        return self.protocol == "sequential" and (self.guard_max_drop is not None or self.guard_max_lost is not None
                                                  or self.guard_resolve)

    def as_dict(self) -> dict:
        return {**asdict(self), "checkpoints": list(self.checkpoints)}


class Cases:
    """DIR/cases.jsonl: a header row, then one row per answer or edit, each with a unique "key".

    defaults: {section: {key: value}} for header sections (such as "method_config") whose options were added
    after a file was written: such a file's header lacks them, and it resumes if the run asks for their default.
    """

    def __init__(self, path: Path, header: dict, defaults: dict[str, dict] | None = None):
        self.path = path
        self.rows: dict[str, dict] = {}
        if path.exists():
            rows = _read_rows(path)
            if rows and rows[0].get("key") != "header":
                raise CasesFileError(f"{path} does not start with a header row: delete it or choose another --out")
            written = _with_defaults(rows[0], defaults or {}) if rows else None
            if rows and _comparable(written) != _comparable(header):
                raise CasesFileError(
                    f"{path} was written by another run ({_difference(written, header)}): "
                    "choose another --out, or delete the file to start over")
            self.rows = {r["key"]: r for r in rows}
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        if "header" not in self.rows:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("", encoding="utf-8")
            self.add({"key": "header", **header})

    @classmethod
    def read(cls, path: Path) -> "Cases":
        """A cases file as it is, only read (its run may still be writing to it)."""
        cases = cls.__new__(cls)
        cases.path, cases.rows = path, {r["key"]: r for r in _read_rows(path)}
        return cases

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def add(self, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.rows[row["key"]] = row

    def with_prefix(self, prefix: str) -> list[dict]:
        return [r for k, r in self.rows.items() if k.startswith(prefix)]

    def adopt_before(self, other: Path) -> int:
        """Copy the unedited model's rows ("before/...") from another run's cases file, if that run asked
        the same model (and dtype) the same questions the same way; returns how many rows were copied."""
        if not other.is_file():
            raise CasesFileError(f"--before-from: {other} does not exist: give the folder of a run made before")
        rows = {r["key"]: r for r in _read_rows(other)}
        header = rows.get("header", {})
        same = ("model", "dtype", "facts_file", "n_facts")
        mine = self.rows["header"]
        differ = [k for k in same if header.get(k) != mine.get(k)]
        differ += [k for k in ("max_new_tokens", "fluency_tokens")
                   if header.get("options", {}).get(k) != mine.get("options", {}).get(k)]
        if differ:
            raise CasesFileError(f"--before-from: {other} differs in {', '.join(differ)}: its answers of the "
                                 "unedited model cannot be reused here")
        copied = 0
        for key, row in rows.items():
            if key.startswith("before/") and key not in self.rows:
                self.add(row)
                copied += 1
        return copied


def finished_edits(other: Path, header: dict, state: Path | None, defaults: dict[str, dict] | None = None
                   ) -> tuple[list[dict], dict]:
    """A finished sequential run's edits ("edit/..." rows) and its state after the last edit, checked to be this
    run's (header): same model, dtype, facts and method configuration (`defaults` as in `Cases`), scored after
    the last edit only (its state holds no earlier one). `adopt_edits` puts them into this run, which then
    only scores."""
    if not (other / "cases.jsonl").is_file():
        raise CasesFileError(f"--edits-from: {other / 'cases.jsonl'} does not exist: give the folder of a finished "
                             "sequential run")
    rows = {r["key"]: r for r in _read_rows(other / "cases.jsonl")}
    theirs = rows.get("header", {})
    completed = _with_defaults(theirs, defaults or {})
    differ = [k for k in ("model", "dtype", "facts_file", "n_facts", "method", "method_config")
              if completed.get(k) != header.get(k)]
    if completed.get("options", {}).get("protocol") != header["options"]["protocol"]:
        differ.append("protocol")
    if differ:
        raise CasesFileError(f"--edits-from: {other} differs in {', '.join(differ)}: its edits are not this run's")
    n = header["n_facts"]
    if header["options"]["immediate"] or [c for c in header["options"]["checkpoints"] if c < n]:
        raise CasesFileError(f"--edits-from scores the state after the last edit only: give --no-immediate and "
                             f"--checkpoints {n}")
    if state is None:
        raise CasesFileError("--edits-from needs a state file to put the edits in: leave out --no-state")
    found = load_state(other / STATE_FILE, theirs)
    if found is None or found[0] != n:
        got = "none" if found is None else f"one after edit {found[0]}"
        raise CasesFileError(f"--edits-from: {other} has no state after its last edit ({got}): finish that run first")
    edits = [r for k, r in rows.items() if k.startswith("edit/")]
    if len(edits) != n:
        raise CasesFileError(f"--edits-from: {other} has {len(edits)} edit rows for {n} facts: finish that run first")
    return edits, found[1]


def adopt_edits(cases: Cases, edits: list[dict], tensors: dict, state: Path) -> None:
    """`finished_edits`' rows into the cases file, and its tensors as this run's state after the last edit."""
    for row in edits:
        if row["key"] not in cases:
            cases.add(row)
    header = cases.rows["header"]
    if load_state(state, header) is None:
        save_state(state, tensors, header["n_facts"], header)


def read_header(path: Path) -> dict:
    """A cases file's header row ({} if there is no file)."""
    rows = _read_rows(path) if path.is_file() else []
    return rows[0] if rows and rows[0].get("key") == "header" else {}


def _read_rows(path: Path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        return [json.loads(line) for line in lines if line.strip()]
    except json.JSONDecodeError:
        return [json.loads(line) for line in lines[:-1] if line.strip()]  # a last line cut by a kill


def _with_defaults(header: dict, defaults: dict[str, dict]) -> dict:
    out = dict(header)
    for section, values in defaults.items():
        if isinstance(out.get(section), dict):
            out[section] = {**{k: v for k, v in values.items() if k not in out[section]}, **out[section]}
    return out


def _comparable(header: dict) -> dict:
    return {k: v for k, v in header.items() if k not in ("key", "started", "commit", "command", "device")}


def _difference(old: dict, new: dict) -> str:
    a, b = _comparable(old), _comparable(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in keys[:3])


@dataclass
class Ask:
    """One prompt to score: its key in the cases file and what a right answer gives."""

    key: str
    system: str
    user: str
    target: str
    info: dict = field(default_factory=dict)


class Runner:
    """state: the sequential protocol's state file (None: none kept); state_every: seconds between saves."""

    def __init__(self, method, data: FactsFile, answerer: Answerer, cases: Cases, options: RunOptions,
                 state: Path | None = None, state_every: float = 300.0):
        self.method, self.data, self.answerer, self.cases, self.options = method, data, answerer, cases, options
        self.same_relation = data.same_relation_controls()
        self.state, self.state_every = state, state_every
        self._saved_at = time.monotonic()

    # -- scoring -----------------------------------------------------------------------------------
    def score(self, asks: list[Ask], progress: str | None = None) -> None:
        """Answer every ask whose key is not in the cases file yet, a batch at a time (each batch saved)."""
        todo = [a for a in asks if a.key not in self.cases]
        size = self.answerer.batch_size
        bar = tqdm(total=len(todo), desc=progress, unit="answer", leave=False, disable=progress is None or not todo)
        for start in range(0, len(todo), size):
            batch = todo[start:start + size]
            answers = self.answerer.answers([(a.system, a.user) for a in batch], self.options.max_new_tokens)
            for a, text in zip(batch, answers):
                self.cases.add({"key": a.key, "user": a.user, "system": a.system, "target": a.target,
                                "answer": text, "gives": gives(text, a.target), **a.info})
            bar.update(len(batch))
        bar.close()

    def fact_asks(self, prefix: str, index: int, paraphrases: bool = True) -> list[Ask]:
        fact = self.data.facts[index]
        system = self.method.system_for(fact)
        asks = [Ask(f"{prefix}/fact/{index}/q", system, fact.user, fact.target, {"fact": index, "kind": "question"})]
        if paraphrases:
            asks += [Ask(f"{prefix}/fact/{index}/p{j}", system, p, fact.target,
                         {"fact": index, "kind": "paraphrase"})
                     for j, p in enumerate(fact.paraphrases[:self.options.paraphrases])]
        return asks

    def control_asks(self, prefix: str, indices, context: Fact | None) -> list[Ask]:
        system = self.method.system_for(context) if context is not None else ""
        return [Ask(f"{prefix}/control/{j}", system, self.data.controls[j].user, self.data.controls[j].target,
                    {"control": j, "kind": "control", "same_relation": self.same_relation[j]}) for j in indices]

    def fluency(self, key: str) -> None:
        if key in self.cases:
            return
        texts = self.answerer.answers([("", p) for p in FLUENCY_PROMPTS], self.options.fluency_tokens)
        self.cases.add({"key": key, "texts": texts, "entropy": [ngram_entropy(t) for t in texts]})

    def target_logprobs(self, key: str, indices) -> None:
        if key in self.cases:
            return
        facts = [self.data.facts[i] for i in indices]
        values = self.answerer.target_logprobs([("", f.user, f.answer, f.target) for f in facts])
        self.cases.add({"key": key, "facts": list(indices), "logprob": values})

    # -- protocols ---------------------------------------------------------------------------------
    def before(self) -> None:
        """What the unedited model does: controls, fluency, target log-probabilities (and the guard's)."""
        self.method.reset()
        n = len(self.data.facts)
        self.score(self.control_asks("before", range(len(self.data.controls)), None), "controls before editing")
        self.fluency("before/fluency")
        self.target_logprobs("before/logprob", range(n))
        if self.options.guarded:
            if self.options.guard_held_out and "before/guard-pool" not in self.cases:
                scored = frozenset(c.user for c in self.data.controls)
                answered, _ = answered_controls(self.answerer.answers, leave_out=scored)
                self.cases.add({"key": "before/guard-pool", "controls": [
                    {**asdict(control), "answer": text} for control, text in answered]})
            items = self._guard_items()
            if self.cases.rows.get("before/guard", {}).get("controls") != [j for j, _ in items]:
                scores = self.answerer.target_scores([item for _, item in items])
                self.cases.add({"key": "before/guard", "controls": [j for j, _ in items],
                                "logprob": [logp for logp, _ in scores], "greedy": [g for _, g in scores]})

    # -- the drift guard -----------------------------------------------------------------------------
    def _guard_items(self) -> list[tuple[int | str, tuple[str, str, str, str]]]:
        """The guard's controls, each teacher-forced on the unedited model's answer: (control index, or with
        guard_held_out its question, (system, user, answer, target)). By default the first `guard_controls`
        controls that the unedited model answers with their target; with guard_held_out, as many real facts
        that the facts file's controls leave out and the unedited model answers right, half about the facts'
        relations (as the controls are picked), in a seeded order."""
        if self.options.guard_held_out:
            pool = self.cases.rows["before/guard-pool"]["controls"]
            answers = {c["user"]: c["answer"] for c in pool}
            controls = [Control(c["user"], c["target"], c["relation"], c["subject"]) for c in pool]
            random.Random(f"{self.options.seed}:guard").shuffle(controls)
            chosen = pick_controls(controls, self.options.guard_controls)
            return [(c.user, ("", c.user, answers[c.user], c.target)) for c in chosen]
        rows = [self.cases.rows[f"before/control/{j}"] for j in range(len(self.data.controls))]
        right = [(j, r) for j, r in enumerate(rows) if r["gives"]][:self.options.guard_controls]
        return [(j, ("", r["user"], r["answer"], r["target"])) for j, r in right]

    def _guard_check(self) -> tuple[dict, list[tuple[str, str, str, str]]]:
        """The guard controls now against the unedited model: guard_drop, the mean fall of their target log p
        (nats); guard_worst, the largest one control's fall; guard_lost, how many whose target was the greedy
        continuation of their answer no longer is; and those lost controls."""
        row = self.cases.rows["before/guard"]
        before, was_greedy = row["logprob"], row.get("greedy") or [True] * len(row["logprob"])
        if not before:
            return {"guard_drop": 0.0, "guard_worst": 0.0, "guard_lost": 0}, []
        items = [item for _, item in self._guard_items()]
        now = self.answerer.target_scores(items)
        drops = [b - logp for b, (logp, _) in zip(before, now)]
        lost = [item for item, g, (_, greedy) in zip(items, was_greedy, now) if g and not greedy]
        return {"guard_drop": sum(drops) / len(drops), "guard_worst": max(drops), "guard_lost": len(lost)}, lost

    def _guard_refuses(self, check: dict) -> bool:
        o = self.options
        return (o.guard_max_drop is not None and check["guard_drop"] > o.guard_max_drop) or \
               (o.guard_max_lost is not None and check["guard_lost"] > o.guard_max_lost)

    def run(self) -> None:
        self.before()
        if self.options.protocol == "single":
            self.single()
        else:
            self.sequential()

    def _edit(self, index: int) -> None:
        """Edit fact `index`. With a guard (sequential), an edit that loses guard controls is solved again with
        them held (guard_resolve), and one that then passes one of its limits (`_guard_check`) is withdrawn (the
        method goes back to its state before it) and its row says `refused`; a resumed run does not make a
        refused edit again."""
        key = f"edit/{index}"
        guarded = self.options.guarded
        if key in self.cases and self.cases.rows[key].get("refused"):
            return
        # kept on the CPU: on a GPU a second copy of a long run's rows would not fit beside the first
        before = {k: v.detach().to("cpu", copy=True) for k, v in self.method.state_dict().items()} if guarded else None
        info = self.method.edit(self.data.facts[index])
        if guarded:
            check, lost = self._guard_check()
            if self.options.guard_resolve and lost:
                held = self.method.hold([(system, user, answer) for system, user, answer, _ in lost])
                first = check
                check, lost = self._guard_check()
                check.update(guard_lost_first=first["guard_lost"], guard_drop_first=first["guard_drop"],
                             guard_held_rows=held["held_rows"], guard_hold_seconds=held["seconds"])
            info = {**info, **check, "refused": self._guard_refuses(check)}
            if info["refused"]:
                self.method.reset()
                if before:
                    self.method.load_state_dict(before)
        if key not in self.cases:
            self.cases.add({"key": key, "fact": index, **info})

    def single(self) -> None:
        n = len(self.data.facts)
        fluency_at = set(_spread(n, self.options.fluency_edits))
        rng = random.Random(self.options.seed)
        picks = [self._controls_for(i, rng) for i in range(n)]
        for i in tqdm(range(n), desc="single edits", unit="fact"):
            keys = [f"edit/{i}", f"after/{i}/logprob", *(f"after/{i}/fluency" for _ in [0] if i in fluency_at)]
            asks = self.fact_asks(f"after/{i}", i) + self.control_asks(f"after/{i}", picks[i], self.data.facts[i])
            if all(k in self.cases for k in keys) and all(a.key in self.cases for a in asks):
                continue
            self.method.reset()
            self._edit(i)
            self.score(asks)
            self.target_logprobs(f"after/{i}/logprob", [i])
            if i in fluency_at:
                self.fluency(f"after/{i}/fluency")
        self.method.reset()

    def _controls_for(self, index: int, rng: random.Random) -> list[int]:
        """A few controls for one single edit: half about the facts' relations (the fact's own first)."""
        k = min(self.options.controls_per_edit, len(self.data.controls))
        relation = self.data.facts[index].relation
        same = [j for j, c in enumerate(self.data.controls) if relation and c.relation == relation]
        related = [j for j, s in enumerate(self.same_relation) if s and j not in same]
        other = [j for j, s in enumerate(self.same_relation) if not s]
        chosen = rng.sample(same, min(len(same), k // 2))
        chosen += rng.sample(related, min(len(related), k // 2 - len(chosen)))
        chosen += rng.sample(other, min(len(other), k - len(chosen)))
        rest = [j for j in range(len(self.data.controls)) if j not in chosen]
        return sorted(chosen + rng.sample(rest, k - len(chosen)))

    def sequential(self) -> None:
        n = len(self.data.facts)
        checkpoints = sorted({c for c in self.options.checkpoints if 0 < c < n} | {n})
        self.method.reset()
        if all(self._checkpoint_done(c) for c in checkpoints):
            return  # a finished run: nothing to restore or edit
        done = self._restore(checkpoints)
        if done:
            self._score_edit(done - 1, checkpoints)
        for i in tqdm(range(done, n), desc="sequential edits", unit="fact", initial=done, total=n):
            later = [c for c in checkpoints if c > i]
            if all(self._checkpoint_done(c) for c in later) and f"edit/{i}" in self.cases:
                continue
            self._edit(i)  # again, unscored, when resuming without a state
            self._save(i + 1, checkpoints)
            self._score_edit(i, checkpoints)

    def _score_edit(self, i: int, checkpoints: list[int]) -> None:
        """What is scored right after edit i: its own questions, and the checkpoint it completes."""
        if self.options.immediate:
            self.score(self.fact_asks(f"after/{i}", i))
        if i + 1 in checkpoints:
            self.checkpoint(i + 1, final=i + 1 == len(self.data.facts))

    def _restore(self, checkpoints: list[int]) -> int:
        """How many edits the state file brings back (0: none usable, the run starts from its first edit)."""
        found = load_state(self.state, self.cases.rows["header"]) if self.state is not None else None
        if found is None:
            return 0
        edits, tensors = found
        unscored = [c for c in checkpoints if c < edits and not self._checkpoint_done(c)]
        missing = [i for i in range(edits) if f"edit/{i}" not in self.cases]
        if unscored or missing:
            why = f"checkpoint {unscored[0]} was not scored" if unscored else f"edit {missing[0]} has no row"
            print(f"bench: not using {self.state} (after edit {edits}; {why}): making the edits again",
                  file=sys.stderr)
            return 0
        self.method.load_state_dict(tensors)
        print(f"bench: going on after edit {edits} (the state in {self.state})", file=sys.stderr)
        return edits

    def _save(self, edits: int, checkpoints: list[int]) -> None:
        due = edits in checkpoints or time.monotonic() - self._saved_at >= self.state_every
        if self.state is None or not due:
            return
        tensors = self.method.state_dict()
        if tensors:
            save_state(self.state, tensors, edits, self.cases.rows["header"])
        self._saved_at = time.monotonic()

    def _checkpoint_asks(self, count: int, final: bool) -> list[Ask]:
        prefix = f"checkpoint/{count}"
        asks = [a for i in range(count) for a in self.fact_asks(prefix, i, paraphrases=final)]
        return asks + self.control_asks(prefix, range(len(self.data.controls)), self.data.facts[count - 1])

    def _checkpoint_done(self, count: int) -> bool:
        final = count == len(self.data.facts)
        keys = [a.key for a in self._checkpoint_asks(count, final)]
        if final:
            keys += ["final/fluency", "final/logprob"]
        return all(k in self.cases for k in keys)

    def checkpoint(self, count: int, final: bool) -> None:
        self.score(self._checkpoint_asks(count, final), f"scoring {count} facts")
        if final:
            self.fluency("final/fluency")
            self.target_logprobs("final/logprob", range(count))


def _spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n)."""
    k = min(k, n)
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)}) if k else []
