"""QF with its variants as options: which positions, which layer(s), how far the target, which metric.

    editor = Editor(model, tokenizer, EditConfig(layers=(27,), positions="answer"))
    report = editor.learn(system=fact, user=question, answer=answer, subject="Velmora Labs")
    editor.reset()                                    # every edited layer back to its original weight

One round, for each layer L of `config.layers` in turn:
1. the open-book pass (fact in the system turn) and the closed-book pass (no fact) are teacher-forced
   through the model as it is now, cut after L (both in one forward);
2. rows are kept at `positions`: "answer" (the positions that predict the answer turn, as the paper),
   "answer-words" (the same less the two that predict the turn's header "assistant\n", whose keys are
   nearly the same for every question), "target" (only the positions that predict the words of the
   fact's target, e.g. the name in "The CEO of X is Ada Lee."), "target-next" (those and the one that
   predicts the word after the target, or the end of the turn: where the target must stop), "value" (as
   target-next over the answer's whole value, `answerforms.value_words`: a target written as a surname alone
   still teaches the first name the answer gives, and a number is taught where it stops), "suffix" (every
   position the two passes share from the user turn on, so the question's tokens carry the fact too),
   "subject" (the user turn's tokens of the fact's subject, plus the answer), "subject-last" (ROME's single
   row: the subject's last token in the question) or "subject-copies" (that row and the last token of every
   copy of the subject in the answer, "Steitum Motors was founded by ...", all with one target delta: a
   weight edit reaches those rows too, since their keys are alike);
3. the target of a kept position is the open-book layer output y_o = W0 u + v, pushed past it by
   `gamma`: y_o + gamma (y_o - y_c), y_c = W0 u' + v' the closed-book output (with `target_wordings`, the
   same two passes on each of the model's own rewordings of the question add their rows); or, with target
   "optimized", the closed-book output plus deltas found by gradient descent (gradtarget.py), shared by
   the question, `target_contexts` copies of it after other openings (`CONTEXT_OPENINGS`) and
   `target_wordings` rewordings of it by the model itself (rewording.py) and `target_templates` phrasings of
   the asked relation's (`worldfacts.Relation.fit_questions`), each of which adds its own kept rows; with
   `target_forms`, the rewordings (and the question, where the model words its answer otherwise) are answered
   in the model's own words with the target put where it names its value (answerforms.py);
4. with `keep_context`, every other row of those sequences, from the user turn to the end of the answer,
   is kept where it is: a row of the solve whose target is its output under the weight of the moment (a row
   whose tokens so far were already kept in an earlier round is not added twice). The optimised target
   was fitted with those rows as they are, and this keeps them so after this edit and every later one;
5. the layer is re-solved from its original weight over the rows of every round so far (`KeySolver`:
   exact, ridge, or covariance-weighted when `metrics` gives a key covariance for L).
With the optimised target, each solve also reports how far layer L's output has moved at the rows it did
not constrain, this fact's and every earlier one's (drift.py; `drift_rows` keeps only that many a context).
Speed options, each off by default (results/perf/intact_edit_profile.md measures them): `target_stop` ends
the gradient fit once the answer's mean NLL a token is below it; `incremental` extends each layer's
factorisation by the round's rows instead of re-factorising every row (keyed.py; the state then keeps only
the rows; with a ridge too). `EditReport.timings` splits each edit's seconds into PARTS.
Editing several layers in turn re-captures the closed-book pass after each edit, so a later layer
only closes what the earlier ones left open (open-book rows come from the model before the round).
An optimised target is fitted once, at the deepest layer, and spread over the layers as MEMIT spreads
its v*: from the lowest layer up, each closes 1/(layers left) of what the deepest layer still misses at
the kept rows (the change added to the residual stream there carries up to it), so the last one closes the
rest and no layer carries the whole change.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch

from transformers_qf.core import prompting
from transformers_qf.editing.answerforms import own_answer_forms, value_words
from transformers_qf.core.architectures import locate
from transformers_qf.core.capture import record, record_layers
from transformers_qf.editing.drift import DriftWatch
from transformers_qf.editing.targets import FIT_METHODS, Context, Essence, optimized_deltas
from transformers_qf.solve.keyed import KeyMetric, KeySolver
from transformers_qf.solve.weights import OriginalWeight
from transformers_qf.core.prompting import PromptError
from transformers_qf.editing.rewording import rewordings
from transformers_qf.data.worldfacts import asked_relation

POSITIONS = ("answer", "answer-words", "target", "target-next", "value", "suffix", "subject", "subject-last",
             "subject-copies")
TARGETS = ("open-book", "optimized")
COV_CORPORA = ("generic", "generic+facts")  # keystats: generic text, plus the model's answers about real entities
# Openings put before the question for the extra contexts of an optimised target (ROME's random prefixes, fixed
# here so that runs repeat): the subject's row and the answer then sit after different text.
CONTEXT_OPENINGS = ("Quick question.", "I need this for a report.", "Please answer briefly.",
                    "Something I have been wondering about.", "My friend asked me this today.")


@dataclass(frozen=True)
class EditConfig:
    layers: tuple[int, ...] = (23,)
    positions: str = "answer"
    gamma: float = 0.0
    ridge: float = 0.0
    ridge_relative: bool = False  # ridge is a multiple of each layer's mean |u|^2 in its metric (keyed.KeySolver)
    covariance: bool = False  # weight the solve by each layer's key covariance (needs `metrics`)
    cov_shrink: float = 0.1  # how far that covariance is shrunk towards its mean variance (KeyMetric)
    cov_corpus: str = "generic"  # the text that covariance is estimated on (COV_CORPORA)
    cov_answer_weight: float = 0.0  # generic+facts: C + w C(answer positions of the real-entity texts) (keystats)
    null_space: float = 0.0  # covariance: confine the change to the directions of variance < this x mean (KeyMetric)
    target: str = "open-book"  # or "optimized": layer-output targets by gradient descent (gradtarget.py)
    target_steps: int = 20
    target_lr: float = 0.1  # relative to |h_t| (gradtarget.py)
    target_decay: float = 0.5
    target_contexts: int = 0  # optimized: extra contexts (the question after CONTEXT_OPENINGS[:n]) sharing the deltas
    target_wordings: int = 0  # up to n rewordings of the question by the model, each asked open and closed book too
    target_templates: int = 0  # optimized: up to n of the asked relation's fit_questions (worldfacts), fitted on too
    target_essence: float = 0.0  # optimized, subject-last: weight of ROME's KL on "{subject} is a" (ROME: 0.0625)
    target_forms: bool = False  # optimized: the question and its rewordings answered in the model's own form too
    keep_context: bool = False  # the fitted sequences' other rows keep their output (step 4 of the module doc)
    target_stop: float = 0.0  # optimized: stop the fit once the answer's mean NLL a token is below this (0: never)
    target_method: str = "adam"  # optimized: "adam", "adam-warm" (the question alone first) or "lbfgs" (targets.py)
    incremental: bool = False  # extend each layer's factorisation by the round's rows (keyed.py), no re-factorising
    drift_rows: int = 0  # optimized: rows a context the drift watch keeps (0: every unconstrained row)

    def __post_init__(self):
        if self.positions not in POSITIONS:
            raise PromptError(f"unknown positions {self.positions!r}: use one of {', '.join(POSITIONS)}")
        if not self.layers:
            raise PromptError("no layer to edit: give at least one layer")
        if self.cov_corpus not in COV_CORPORA:
            raise PromptError(f"unknown covariance corpus {self.cov_corpus!r}: use one of {', '.join(COV_CORPORA)}")
        if self.cov_answer_weight < 0 or (self.cov_answer_weight > 0 and self.cov_corpus != "generic+facts"):
            raise PromptError(f"covariance answer weight {self.cov_answer_weight:g}: give a weight >= 0, and use it "
                              "with the generic+facts corpus (its answers are the ones weighted)")
        if self.null_space < 0 or (self.null_space and not self.covariance):
            raise PromptError(f"null space {self.null_space:g}: give a variance threshold >= 0, with the covariance "
                              "(the null space is that of its keys)")
        if self.target not in TARGETS:
            raise PromptError(f"unknown target {self.target!r}: use one of {', '.join(TARGETS)}")
        most = len(CONTEXT_OPENINGS)
        if self.target_contexts and (self.target != "optimized" or not 0 < self.target_contexts <= most):
            raise PromptError(f"{self.target_contexts} target contexts: use 1 to {most}, with the "
                              "optimized target (they share its deltas)")

        if self.target == "optimized" and list(self.layers) != sorted(set(self.layers)):
            raise PromptError(f"layers {','.join(map(str, self.layers))}: an optimized target is spread over its "
                              "layers from the lowest up, give them in increasing order without repeats")
        if self.target_stop < 0 or (self.target_stop and self.target != "optimized"):
            raise PromptError(f"target stop {self.target_stop:g}: give a loss >= 0, with the optimized target")
        if self.target_method not in FIT_METHODS or (self.target_method != "adam" and self.target != "optimized"):
            raise PromptError(f"target method {self.target_method!r}: use one of {', '.join(FIT_METHODS)}, with the "
                              "optimized target")
        if self.target_method == "adam-warm" and not self.target_stop:
            raise PromptError("target method adam-warm moves on from the question once its loss is below the target "
                              "stop: give --target-stop too")
        if self.drift_rows < 0:
            raise PromptError(f"{self.drift_rows} drift rows: give 0 (all) or more")
        if self.target_wordings < 0:
            raise PromptError(f"{self.target_wordings} target wordings: give 0 or more")
        if self.target_templates < 0 or (self.target_templates and self.target != "optimized"):
            raise PromptError(f"{self.target_templates} target templates: give 0 or more, with the optimized target")
        if self.target_forms and self.target != "optimized":
            raise PromptError("target forms need the optimized target (the forms share its deltas)")
        if self.target_essence < 0 or (self.target_essence and (self.target != "optimized"
                                                                 or not self.positions.startswith("subject-"))):
            raise PromptError(f"essence weight {self.target_essence:g}: give a weight >= 0, with the optimized "
                              "target at subject-last or subject-copies (it keeps the subject's own row in check)")

    def as_dict(self) -> dict:
        out = {**asdict(self), "layers": list(self.layers)}
        for later in ("null_space", "ridge_relative", "target_templates"):  # added later: read as before when off
            if not out[later]:
                del out[later]
        return out


PAPER = EditConfig(layers=(23,), positions="answer")  # the QF paper: answer positions, exact, plain metric
# The best of the configurations measured on 100 sequential facts (results/bench/benchmark.md): the paper's layer,
# the rows that predict the target only, solved in the metric of keys the model should keep (generic text and
# its own answers about real entities). It needs `keystats.key_metrics` for its layer (made once, cached).
RECOMMENDED = EditConfig(layers=(23,), positions="target", covariance=True, cov_corpus="generic+facts")


PARTS = ("rewordings", "forward", "target", "held", "drift", "solve")  # what EditReport.timings splits an edit into


class _Clock:
    """Seconds spent in each part of one edit (PARTS); what is not inside a part is "other"."""

    def __init__(self):
        self.start = time.perf_counter()
        self.seconds = dict.fromkeys(PARTS, 0.0)

    @contextmanager
    def part(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0

    def total(self) -> float:
        return time.perf_counter() - self.start

    def timings(self, total: float) -> dict[str, float]:
        """The parts' seconds and "other", which adds them up to `total` (one reading of the clock for both)."""
        return {**self.seconds, "other": max(0.0, total - sum(self.seconds.values()))}


@dataclass
class EditReport:
    seconds: float
    rows: int  # kept positions of this round (per layer)
    layers: list[dict] = field(default_factory=list)  # per edited layer: a KeySolveReport dict, with drift.py's measures
    timings: dict[str, float] = field(default_factory=dict)  # seconds a part of the edit (PARTS, and "other")

    @property
    def residual(self) -> float:
        return max(layer["residual"] for layer in self.layers)

    @property
    def delta_rel(self) -> float:
        return max(layer["delta_rel"] for layer in self.layers)


def _prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in tensors.items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _split(items: list, lengths: list[int]) -> list[list]:
    out, start = [], 0
    for n in lengths:
        out.append(items[start:start + n])
        start += n
    return out


def _rows_of(records, rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys u and MLP inputs v at the given rows of each recorded sequence, stacked."""
    return (torch.cat([rec.u[r.to(rec.u.device)] for rec, r in zip(records, rows)]),
            torch.cat([rec.v[r.to(rec.v.device)] for rec, r in zip(records, rows)]))


def _sampled(rows: list[torch.Tensor], most: int) -> list[torch.Tensor]:
    """At most `most` of each context's rows, evenly spaced (0: all)."""
    if not most:
        return rows
    return [r[torch.linspace(0, len(r) - 1, most).round().long().unique()] if len(r) > most else r for r in rows]


def _outputs_at(records, contexts) -> torch.Tensor:
    """The layer's output (residual stream after its MLP) at each context's kept rows, stacked, float64."""
    return torch.cat([(rec.v + rec.y)[pos.to(rec.v.device)].to(torch.float64)
                      for rec, (_, pos, _) in zip(records, contexts)])


def _with_held_rows(rows, keys: torch.Tensor, v: torch.Tensor, solver: KeySolver):
    """The solve's rows (keys, residuals, |targets|, weights) and rows that keep their output under the last
    solve. Their targets are that solve's exact change, not the weight's rounding of it: near-duplicate keys
    (the answer header after different questions) then ask for consistent outputs."""
    up, residuals, norms, weights = rows
    change = solver.change(keys)
    return (torch.cat([up, keys]), torch.cat([residuals, -change]),
            torch.cat([norms, torch.linalg.norm(solver.outputs_w0(keys, v) + change, dim=1)]),
            torch.cat([weights, torch.ones(len(keys), dtype=weights.dtype)]))


class Editor:
    """Consolidate facts into one or more down_proj weights of a loaded causal LM (see module doc).

    metrics: {layer: KeyMetric} for the covariance-weighted solve (needed when config.covariance).
    """

    def __init__(self, model, tokenizer, config: EditConfig, metrics: dict[int, KeyMetric] | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.parts = [locate(model, layer) for layer in config.layers]
        self.layers = [p.index for p in self.parts]
        if config.covariance and not all(i in (metrics or {}) for i in self.layers):
            raise PromptError("covariance-weighted solve needs a key covariance for every edited layer")
        self.last_target_losses: list[float] = []
        self.last_target_delta: torch.Tensor | None = None  # optimized target: the fitted deltas [k, d_model]
        self.last_rewordings: list[str] = []  # target_wordings: the model's rewordings of the last question
        self.last_forms: list[dict] = []  # target_forms: {"user", "assistant"} the own-form answers fitted on
        self.originals = [OriginalWeight(p.down) for p in self.parts]  # W0 of each edited layer, kept for reset
        self.solvers = [
            KeySolver(w.original, (metrics or {}).get(p.index) if config.covariance else None,
                      config.ridge, incremental=config.incremental, ridge_relative=config.ridge_relative)
            for p, w in zip(self.parts, self.originals)
        ]
        self._forget()

    def _forget(self) -> None:
        self.kept_prefixes: set[tuple[int, ...]] = set()  # keep_context: the token prefixes of every kept row
        self.watches = [DriftWatch() for _ in self.parts] if self.config.target == "optimized" else None

    def reset(self) -> None:
        """Every edited layer back to its original weight; every round forgotten."""
        for original in self.originals:
            original.restore()
        self.solvers = [KeySolver(s.W0, s.metric, s.ridge_given, incremental=s.incremental,
                                  ridge_relative=s.ridge_relative) for s in self.solvers]
        self._forget()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What every round so far has left: each layer's solver and weight, the kept rows' token prefixes and
        the drift watches. `load_state_dict` on an Editor of the same model and config goes on from there."""
        out = {}
        for i, (parts, solver) in enumerate(zip(self.parts, self.solvers)):
            out.update(_prefixed(f"layer{i}.solver.", solver.state_dict()))
            out[f"layer{i}.weight"] = parts.down.weight.detach()
            if self.watches is not None:
                out.update(_prefixed(f"layer{i}.drift.", self.watches[i].state_dict()))
        if self.kept_prefixes:
            kept = sorted(self.kept_prefixes)
            out["kept.lengths"] = torch.tensor([len(p) for p in kept])
            out["kept.tokens"] = torch.tensor([t for p in kept for t in p])
        return out

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.reset()
        device = self.parts[0].down.weight.device  # a state file, or one kept aside, is read onto the CPU
        state = {k: v.to(device) for k, v in state.items()}
        for i, (parts, solver) in enumerate(zip(self.parts, self.solvers)):
            solver.load_state_dict(_unprefixed(f"layer{i}.solver.", state))
            self.originals[i].load(state[f"layer{i}.weight"])
            if self.watches is not None:
                self.watches[i].load_state_dict(_unprefixed(f"layer{i}.drift.", state))
        if "kept.lengths" in state:
            tokens = state["kept.tokens"].tolist()
            self.kept_prefixes = {tuple(p) for p in _split(tokens, state["kept.lengths"].tolist())}

    @torch.no_grad()
    def learn(self, system: str, user: str, answer: str, significance=None, subject: str | None = None,
              target: str | None = None) -> EditReport:
        clock = _Clock()
        self._clock = clock
        ends_answer = False
        if self.config.positions in ("target", "target-next", "value"):
            value = self.config.positions == "value"
            significance, ends_answer = self._target_significance(answer, target, significance,
                                                                  self.config.positions != "target",
                                                                  subject if value else None, value)
        open_book = self.config.target == "open-book"
        questions = [user]
        if open_book and self.config.target_wordings:
            questions += self._reworded(user, subject)
        opens, contexts = [], []  # per question: the open-book sequence and its kept rows; the closed-book context
        for question in questions:
            open_tf, closed_tf = prompting.teacher_forced_many(self.tokenizer, [system, ""], question, answer,
                                                               significance)
            open_pos, closed_pos, weights = self._positions(open_tf, closed_tf, system, question, subject,
                                                            ends_answer)
            opens.append((open_tf.input_ids, open_pos))
            contexts.append((closed_tf, closed_pos, weights))
        if not open_book:
            contexts += self._extra_contexts(user, answer, significance, subject, ends_answer, target)
        weights = torch.cat([w for _, _, w in contexts])
        others = self._other_rows(contexts, user)
        with clock.part("held"):
            held = self._new_rows(contexts, others) if self.config.keep_context else None
        open_ids = [ids for ids, _ in opens]
        closed_ids = [tf.input_ids for tf, _, _ in contexts]
        # several layers: the open-book rows of every layer come from the model before this round
        with clock.part("forward"):
            opened = record_layers(self.model, self.parts, open_ids) if len(self.parts) > 1 and open_book else None
        spread = not open_book and len(self.parts) > 1
        top, goal_top = self.parts[-1], None
        reports: list[dict] = []
        for i, (parts, solver) in enumerate(zip(self.parts, self.solvers)):
            with clock.part("forward"):
                if spread:  # this layer and the deepest, as the layers below have left them
                    recorded = record_layers(self.model, [parts] if parts is top else [parts, top], closed_ids)
                    closed, at_top = recorded[parts.index], recorded[top.index]
                    open_recs = None
                elif not open_book:
                    open_recs, closed = None, record(self.model, parts, closed_ids)
                elif opened is None:
                    recorded = record(self.model, parts, open_ids + closed_ids)
                    open_recs, closed = recorded[:len(opens)], recorded[len(opens):]
                else:
                    open_recs, closed = opened[parts.index], record(self.model, parts, closed_ids)
                up, vp = _rows_of(closed, [pos for _, pos, _ in contexts])
                y_closed = solver.outputs_w0(up, vp)
            if spread:
                if goal_top is None:
                    with clock.part("target"):
                        goal_top = self._optimized_target(top.index, at_top, contexts, subject)
                left = goal_top - _outputs_at(at_top, contexts)  # what the deepest layer still misses
                goal = _outputs_at(closed, contexts) + left / (len(self.parts) - i)
            elif self.config.target == "optimized":
                with clock.part("target"):
                    goal = self._optimized_target(parts.index, closed, contexts, subject)
            else:
                y_open = solver.outputs_w0(*_rows_of(open_recs, [pos for _, pos in opens]))
                goal = y_open + self.config.gamma * (y_open - y_closed)
            W = self.originals[i].weight
            rows = (up, y_closed - goal, torch.linalg.norm(goal, dim=1), weights)
            if held is not None:
                with clock.part("held"):
                    rows = _with_held_rows(rows, *_rows_of(closed, held), solver)
            watch = self.watches[i] if self.watches is not None else None
            if watch is not None:
                with clock.part("drift"):
                    watch.add(*_rows_of(closed, _sampled(others, self.config.drift_rows)), W)
            with clock.part("solve"):
                solver.add(*rows)
                report = solver.solve_into(W).as_dict()
            if held is not None:
                report["held_rows"] = sum(len(r) for r in held)
            with clock.part("drift"):
                measured = watch.measure(W) if watch is not None else {}
            reports.append({**report, **measured})
        seconds = clock.total()
        return EditReport(seconds, len(up), reports, clock.timings(seconds))

    @torch.no_grad()
    def hold(self, turns: list[tuple[str, str, str]]) -> dict:
        """Put these conversations (system, user, answer), teacher-forced, back where the original weights have
        them, and keep them there through every later edit: at each edited layer, from the lowest up, every row
        of a sequence through the last one that predicts its answer gets the target dW u' = 0 (its output under
        W0), and the layer is solved again. Each layer's keys are recorded after the layers below were solved,
        so that those rows see the original keys again. A row whose tokens so far were kept before (the chat
        template's opening, an earlier hold) is not added twice. For sequences the edits have damaged, such as
        a drift guard's lost controls; returns {"held_rows", "seconds"}."""
        t0 = time.perf_counter()
        sequences = [prompting.teacher_forced(self.tokenizer, system, user, answer) for system, user, answer in turns]
        rows = self._new_rows([(tf, None, None) for tf in sequences],
                              [torch.arange(int(tf.kept[-1]) + 1) for tf in sequences])
        count = sum(len(r) for r in rows)
        if count:
            for parts, solver, original in zip(self.parts, self.solvers, self.originals):
                keys, v = _rows_of(record(self.model, parts, [tf.input_ids for tf in sequences]), rows)
                unchanged = solver.outputs_w0(keys, v)
                solver.add(keys, torch.zeros_like(unchanged), torch.linalg.norm(unchanged, dim=1))
                solver.solve_into(original.weight)
        return {"held_rows": count, "seconds": time.perf_counter() - t0}

    def _other_rows(self, contexts, user: str) -> list[torch.Tensor]:
        """Per context, the rows from the user turn to the last one that predicts the answer, less the kept ones."""
        start = prompting.user_turn_start(self.tokenizer, prompting.chat_format(self.tokenizer).prompt("", user))
        out = []
        for tf, pos, _ in contexts:
            rows = torch.arange(start, int(tf.kept[-1]) + 1)
            out.append(rows[~torch.isin(rows, pos.to(rows.device))])
        return out

    def _new_rows(self, contexts, others: list[torch.Tensor]) -> list[torch.Tensor]:
        """Those of `others` whose tokens so far were not kept before (same tokens, same key: one row is enough)."""
        out = []
        for (tf, _, _), rows in zip(contexts, others):
            ids = tf.input_ids.tolist()
            new = []
            for row in rows.tolist():
                prefix = tuple(ids[:row + 1])
                if prefix not in self.kept_prefixes:
                    self.kept_prefixes.add(prefix)
                    new.append(row)
            out.append(torch.tensor(new, dtype=torch.long))
        return out

    def _extra_contexts(self, user: str, answer: str, significance, subject: str | None, ends_answer: bool,
                        target: str | None = None):
        """The closed-book question after each of the first `target_contexts` openings, the model's
        `target_wordings` rewordings of it, and with `target_forms` the question in the model's own answer form:
        (teacher-forced sequence, kept positions, their weights) each."""
        c = self.config
        asked = [(f"{opening} {user}", answer, significance) for opening in CONTEXT_OPENINGS[:c.target_contexts]]
        if c.target_forms and not subject:
            raise PromptError("target forms need the fact's subject (a form must not replace it): add a \"subject\" "
                              "key to the fact")
        reworded = self._reworded(user, subject) if c.target_wordings else []
        if c.target_templates:
            reworded = reworded + self._templated(user, subject, reworded)
        if c.target_forms:
            asked += self._own_forms(user, answer, significance, reworded, subject, target)
        else:
            asked += [(question, answer, significance) for question in reworded]
        out = []
        for question, said, weighted in asked:
            tf = prompting.teacher_forced(self.tokenizer, "", question, said, weighted)
            _, pos, weights = self._positions(tf, tf, "", question, subject, ends_answer)
            out.append((tf, pos, weights))
        return out

    def _reworded(self, user: str, subject: str | None) -> list[str]:
        """Up to `target_wordings` rewordings of the question by the model (kept in `last_rewordings`)."""
        if not subject:
            raise PromptError("target wordings need the fact's subject (a rewording must name it): add a "
                              "\"subject\" key to the fact")
        with self._part("rewordings"):
            self.last_rewordings = rewordings(self.model, self.tokenizer, user, subject, self.config.target_wordings)
        return self.last_rewordings

    def _templated(self, user: str, subject: str | None, reworded: list[str]) -> list[str]:
        """Up to `target_templates` of the fit phrasings of the relation that `user` asks about (none when it asks
        in words no relation uses), less any the model's rewordings gave already; kept in `last_rewordings` too."""
        if not subject:
            raise PromptError("target templates need the fact's subject (a template names it): add a \"subject\" "
                              "key to the fact")
        relation = asked_relation(user, subject)
        seen = {w.casefold() for w in reworded}
        templated = [] if relation is None else [
            w for w in relation.fit_wordings(subject, self.config.target_templates) if w.casefold() not in seen]
        self.last_rewordings = reworded + templated
        return templated

    def _part(self, name: str):
        """The running edit's clock for a part (a no-op outside `learn`)."""
        clock = getattr(self, "_clock", None)
        return clock.part(name) if clock is not None else _Clock().part(name)

    def _own_forms(self, user: str, answer: str, significance, reworded: list[str], subject: str, target: str | None):
        """(question, answer, significance) for the question in the model's own form where it differs from the
        given answer, and for each rewording (its own form, else the given answer). As every context, an own
        form is teacher-forced whole: the words before the target are the model's own greedy ones."""
        if not target:
            raise PromptError("target forms need the fact's target (the words the model's own answer gets): add a "
                              "\"target\" key to the fact")
        forms = own_answer_forms(self.model, self.tokenizer, [user, *reworded], target, subject)
        self.last_forms = []
        out = []
        for question, form in zip([user, *reworded], forms):
            if form is None or form.lower() == answer.lower():
                if question != user:
                    out.append((question, answer, significance))
                continue
            out.append((question, form, None))
            self.last_forms.append({"user": question, "assistant": form})
        return out

    def _essence(self, layer: int, subject: str) -> Essence:
        """ROME's essence prompt, "{subject} is a" as plain text: the subject's last row gets the delta, the
        distribution after "a" is kept."""
        text = f"{subject} is a"
        ids = torch.tensor(prompting.encode(self.tokenizer, text))
        last = prompting.subject_positions(self.tokenizer, text, text, subject)[-1:]
        rec = record(self.model, self.parts[self.layers.index(layer)], [ids])[0]
        return Essence(rec.v + rec.y, last.to(rec.v.device), len(ids) - 1, self.config.target_essence)

    def _optimized_target(self, layer: int, closed, contexts, subject: str | None = None) -> torch.Tensor:
        """Layer L's closed-book output now, plus the deltas that make the model give the answer (float64),
        at the kept rows of every context in turn."""
        c = self.config
        hidden = [rec.v + rec.y for rec in closed]  # layer L's output at every position
        device = hidden[0].device
        shared = c.positions == "subject-copies"  # one delta for every copy of the subject
        fitted = [Context(h, pos.to(device), tf.kept.to(device), tf.targets.to(device),
                          torch.zeros(len(pos), dtype=torch.long, device=device) if shared else None)
                  for h, (tf, pos, _) in zip(hidden, contexts)]
        essence = self._essence(layer, subject) if c.target_essence else None
        delta, losses = optimized_deltas(self.model, layer, fitted, c.target_steps, c.target_lr, c.target_decay,
                                         essence=essence, stop=c.target_stop, method=c.target_method)
        self.last_target_losses = losses
        delta = delta.to(torch.float64) * (1.0 + c.gamma)
        self.last_target_delta = delta
        return torch.cat([h[pos.to(h.device)].to(torch.float64) + delta[context.slots]
                          for h, (_, pos, _), context in zip(hidden, contexts, fitted)])

    def _positions(self, open_tf, closed_tf, system: str, user: str, subject: str | None, ends_answer: bool = False):
        """Kept positions in the open and closed sequences, and their weights (ends_answer: keep the position
        that predicts the end of the turn in the target modes)."""
        answer_open = open_tf.nonzero()
        shift = len(open_tf.input_ids) - len(closed_tf.input_ids)  # the fact's extra tokens
        keep = answer_open.kept
        weights = answer_open.weights
        if self.config.positions == "answer":
            return keep, keep - shift, weights
        if self.config.positions in ("answer-words", "target", "target-next", "value"):
            header = prompting.header_rows(self.tokenizer)
            words = answer_open.kept >= int(open_tf.kept[header])  # not the positions that predict the header
            if self.config.positions != "answer-words" and not ends_answer:  # nor the one that predicts the end
                words &= answer_open.kept != int(open_tf.kept[-1])
            return keep[words], keep[words] - shift, weights[words]
        closed_prompt = prompting.chat_format(self.tokenizer).prompt("", user)
        user_start = prompting.user_turn_start(self.tokenizer, closed_prompt)
        if self.config.positions == "suffix":
            extra = torch.arange(user_start, int(closed_tf.kept[0]))
        else:
            extra = prompting.subject_positions(self.tokenizer, closed_prompt, user, subject)
            if self.config.positions == "subject-last":  # ROME's single key: the subject's last token
                last = extra[-1:]
                return last + shift, last, torch.ones(1, dtype=weights.dtype)
            if self.config.positions == "subject-copies":  # and the subject's copies in the answer
                rows = torch.cat([extra[-1:], prompting.subject_copies(self.tokenizer, closed_tf.input_ids, subject,
                                                                       int(closed_tf.kept[0]))])
                return rows + shift, rows, torch.ones(len(rows), dtype=weights.dtype)
        closed_keep = torch.cat([extra, keep - shift])
        weights = torch.cat([torch.ones(len(extra), dtype=weights.dtype), weights])
        return closed_keep + shift, closed_keep, weights

    @staticmethod
    def _target_significance(answer: str, target: str | None, significance, and_next: bool,
                             subject: str | None = None, whole_value: bool = False) -> tuple[list[float], bool]:
        """Significance 1 on the answer words that spell `target` (whole_value: the answer's whole value around
        it, `value_words`; and, with and_next, the word after them), 0 elsewhere, times any given significance;
        and whether the end of the turn follows them (and_next only)."""
        if not target:
            raise PromptError("positions 'target' needs the fact's target: give the string the answer must contain")
        words = answer.split()
        chosen = set(value_words(answer, target, subject) if whole_value else prompting.target_words(answer, target))
        ends_answer = and_next and max(chosen) == len(words) - 1
        if and_next and not ends_answer:
            chosen.add(max(chosen) + 1)
        given = prompting.check_significance(significance, len(words))
        return [float(i in chosen) * g for i, g in enumerate(given)], ends_answer
