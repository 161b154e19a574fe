"""Teach a loaded model facts, and forget them, one layer at a time.

A `Learner` keeps the down_proj weight of one layer equal to

    W' = W + A B      (the QF solve, from the original W, over the rows of every fact kept)

in QF's plain metric (B = U', the smallest ||W' - W||_F) or, given a `SolveMetric`, in the metric of the
layer's key covariance C (B = U' C^-1, the smallest ||(W' - W) C^1/2||_F: the change falls least on the
keys of generic text and of the model's answers about real entities, as in the benchmark's default).

Learning records a fact's rows (the open-book and closed-book passes in one forward that stops
after the layer) and re-solves all facts from W; forgetting drops a fact's rows and re-solves the
rest, which gives exactly what learning the rest from scratch gives. Applying an edits file puts
its stored factors into the weight without solving again. The rows are those that predict the answer
turn (positions "answer", the paper's), or only those that predict the fact's value in it ("target").

Every fact passes `check_teaches` here: an empty fact, or one whose open-book rows equal its
closed-book rows (the edit would be zero), is refused with a FactError before anything is changed.

`make_learner` gives the learner of a preset (editing/presets.py): this `Learner` for the presets that
keep one layer's rows (paper, qf-fast), a `MethodLearner` around the benchmark's method for the others
(intact, ft, in-context), whose edits file holds the method's state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transformers_qf.core import prompting
from transformers_qf.core.architectures import locate
from transformers_qf.core.capture import record
from transformers_qf.core.facts import Fact
from transformers_qf.core.generation import greedy_answers
from transformers_qf.core.prompting import FactError, check_fact_text
from transformers_qf.editing.presets import Preset, get_preset
from transformers_qf.teach.edits import Edits, EditsError, LearnedFact, weight_digest
from transformers_qf.teach.sentence import subject_of, value_of
from transformers_qf.solve.keyed import KeyMetric
from transformers_qf.solve.weights import OriginalWeight
from transformers_qf.qf.session import answer_logprob
from transformers_qf.solve.exact import GraphedSolver, SolveReport, solve

POSITIONS = ("answer", "target")
SAME_PASSES = 1e-6  # open-book rows this close (relative) to the closed-book ones teach nothing


def default_layer(model) -> int:
    """The last decoder layer. On SmolLM2-135M only the last layer made the closed-book answer equal
    the open-book one (of layers 10-29, three facts); on the bundled 1.5B model the sweep in
    results/qf/qf_sweep.md finds the same (7 of 8 steps hold at layer 27, 4 of 8 at every other layer swept)."""
    return int(model.config.num_hidden_layers) - 1


@dataclass(frozen=True)
class SolveMetric:
    """A key covariance metric for the solve (keystats.key_metrics of the unedited model) and how it was made."""

    keys: KeyMetric
    corpus: str  # keystats corpus, e.g. "generic+facts"
    texts: int  # how many generic texts it was estimated on

    def describe(self) -> dict:
        return {"corpus": self.corpus, "shrink": self.keys.shrink, "texts": self.texts}


def resolve_layer(model, layer: int | None, edits: Edits | None) -> int:
    """The layer a Learner edits: `layer`, else the edits file's, else `default_layer`."""
    return layer if layer is not None else edits.layer if edits is not None else default_layer(model)


class Learner:
    """One layer of a loaded causal LM, kept equal to its original weight plus the QF update of `edits`.

    identity: the model's identity (LoadedModel.identity), recorded in and checked against edits files;
    layer: the layer to edit (default: `default_layer`, or the layer of `edits`); edits: facts learned
    before (checked to fit this model, then applied); metric: solve in a key covariance metric (None: QF's
    plain one); positions: "answer" or "target" (the rows that predict the fact's value; a file's own wins);
    preset: the preset's name, recorded in a new file. Edits solved in a metric are applied, and their facts
    forgotten, without it (their rows of B are stored); learning more needs the same metric again. The weight
    in the model at construction is taken as the original W.
    """

    def __init__(self, model, tokenizer, identity: dict, layer: int | None = None, edits: Edits | None = None,
                 max_new_tokens: int = 48, metric: SolveMetric | None = None, positions: str = "answer",
                 preset: str | None = None):
        if edits is not None:
            edits.check_fits(identity)  # the model first: the edits' layer may not exist in another one
            if not edits.keeps_rows:
                raise EditsError(f"{edits.source or 'these edits'} hold a {edits.preset} state, not rows: "
                                 "open them with make_learner")
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.parts = locate(model, resolve_layer(model, layer, edits))
        self.layer = self.parts.index
        self.weight = OriginalWeight(self.parts.down)
        self.original = self.weight.original  # W, [d_model, d_mlp]
        digest = weight_digest(self.original)
        if edits is None:
            if positions not in POSITIONS:
                raise prompting.PromptError(f"unknown positions {positions!r}: use one of {', '.join(POSITIONS)}")
            edits = Edits(identity, self.layer, list(self.original.shape), digest, preset=preset, positions=positions)
        else:
            edits.check_fits(identity, self.layer, digest)
        self.metric = metric
        self._check_metric(edits)
        self.edits = edits
        # on one CUDA device the plain solve is replayed from CUDA graphs (QF's fast path; the same W')
        one_cuda = self.weight.weight.is_cuda and len({q.device for q in model.parameters()}) == 1
        self._graphed = GraphedSolver(self.weight.weight) if one_cuda else None
        self._put_factors()

    # -- answering ---------------------------------------------------------------------------------
    def ask(self, question: str, fact: str = "") -> str:
        """Greedy answer of the model as it is now; `fact` goes in the system turn (open book)."""
        return greedy_answers(self.model, self.tokenizer, [(fact, question)], self.max_new_tokens)[0]

    def logprob(self, question: str, answer: str) -> float:
        """log p(answer | question) closed-book, with the weights as they are now."""
        return answer_logprob(self.model, self.tokenizer, "", question, answer)

    # -- learning and forgetting -----------------------------------------------------------------------
    def learn(self, fact: str, question: str, answer: str, significance=None, target: str | None = None,
              subject: str | None = None) -> tuple[LearnedFact, SolveReport]:
        """Consolidate `answer` to `question` given `fact` into the weight; returns the fact and the solve.
        target: the answer's value (positions "target"; default: derived from the fact and the question)."""
        new = self.record(fact, question, answer, significance, target, subject)
        report = self._resolve(self.edits.facts + [new])
        new.solve = report.as_dict()
        return new, report

    def forget(self, index: int) -> tuple[LearnedFact, SolveReport | None]:
        """Drop fact `index` (0-based) and re-solve the others from the original weight."""
        n = len(self.edits.facts)
        if not 0 <= index < n:
            raise EditsError(f"there is no fact {index + 1}: {n} fact{'s' * (n != 1)} learned (numbered from 1)")
        gone = self.edits.facts[index]
        report = self._resolve(self.edits.facts[:index] + self.edits.facts[index + 1:])
        return gone, report

    def is_original(self) -> bool:
        """Whether the weight in the model is the original W, bit for bit (checked by sha256)."""
        return weight_digest(self.parts.down.weight) == self.edits.weight_sha256

    @property
    def describe(self) -> str:
        """e.g. "layer 27, covariance metric" for the CLI's lines."""
        metric = "" if self.edits.metric is None else ", covariance metric"
        return f"layer {self.layer}{metric}"

    # -- internals ---------------------------------------------------------------------------------
    def _check_metric(self, edits: Edits) -> None:
        """The metric given must be the one the edits were solved in (a fileless or empty edits takes it)."""
        where = f"{edits.source}'s facts were" if edits.source else "these facts were"
        if self.metric is None:
            return
        if not edits.facts:
            edits.metric = self.metric.describe()
            return
        if edits.metric is None:
            raise EditsError(f"{where} solved in QF's plain metric: leave out --covariance, or start another edits file")
        if edits.metric != self.metric.describe():
            raise EditsError(f"{where} solved in the key covariance {edits.metric}, not {self.metric.describe()}: "
                             "use the same corpus and shrink, or start another edits file")
        first = edits.facts[0]
        again = self.metric.keys.apply(first.up).cpu()
        if float(torch.linalg.norm(again - first.b) / torch.linalg.norm(first.b)) > 1e-4:
            raise EditsError(f"{where} solved with another key covariance of this layer (the cached one changed?): "
                             "learn them again, or start another edits file")

    def _require_metric(self) -> None:
        if self.edits.metric is not None and self.metric is None:
            raise EditsError(f"these facts were solved in a key covariance metric ({self.edits.metric}): "
                             "learning needs it too (qf learn / qf chat --covariance)")

    def record(self, fact: str, question: str, answer: str, significance=None, target: str | None = None,
               subject: str | None = None) -> LearnedFact:
        """The rows of one fact: both passes in one forward cut after the layer (no weight changes)."""
        check_fact_text(fact)
        self._require_metric()
        given = significance
        if self.edits.positions == "target":
            from transformers_qf.editing.editor import Editor  # the target's words, as the benchmark's editor picks them

            target = target or value_of(fact, question)
            significance = Editor._target_significance(answer, target, significance, False)[0]
        tfs = [prompting.teacher_forced(self.tokenizer, system, question, answer, significance) for system in (fact, "")]
        if self.edits.positions == "target":
            header = prompting.header_rows(self.tokenizer)
            tfs = [tf.answer_words(header) for tf in tfs]
        tfs = [tf.nonzero() for tf in tfs]
        recs = record(self.model, self.parts, [tf.input_ids for tf in tfs])
        (u, v), (up, vp) = ((rec.u[tf.kept.to(rec.u.device)], rec.v[tf.kept.to(rec.v.device)]) for rec, tf in zip(recs, tfs))
        u, v, up, vp = (t.detach().to("cpu", torch.float32) for t in (u, v, up, vp))
        check_teaches(u, up, v, vp)
        basis = None if self.metric is None else self.metric.keys.apply(up).cpu()
        said = Fact(fact, question, answer, None if given is None else [float(s) for s in given],
                    target=target if self.edits.positions == "target" else None, subject=subject)
        return LearnedFact(said, tfs[0].targets.tolist(), tfs[0].weights.tolist(), u, v, up, vp, b=basis)

    def _resolve(self, facts: list[LearnedFact]) -> SolveReport | None:
        """Make the weight W + the solve over `facts`, and make `facts` the edits' facts. On any error
        (an interrupt included) the weight and the facts are left as they were."""
        try:
            weight = self.weight.restore()
            if not facts:
                update, report = None, None
            elif self._graphed is not None and self.edits.metric is None:
                update, report = self._graphed(*self.edits.stacked(facts)[:4])
            else:
                update, report = solve(weight, *self.edits.stacked(facts), apply=True, basis=self.edits.basis(facts))
        except BaseException:
            self._put_factors()
            raise
        if update is not None:
            for fact, a in zip(facts, torch.split(update.A.cpu(), [f.rows for f in facts], dim=1)):
                fact.a = a.contiguous()
        self.edits.facts = facts
        self.edits.solve = None if report is None else report.as_dict()
        return report

    @torch.no_grad()
    def _put_factors(self) -> None:
        """Weight = W + the stored factors of the edits (the arithmetic of the solve that made them)."""
        weight = self.weight.restore()
        update = self.edits.update()
        if update is not None:
            update.apply_(weight)


def check_teaches(u: torch.Tensor, up: torch.Tensor, v: torch.Tensor, vp: torch.Tensor) -> None:
    """Refuse a fact whose open-book rows (u, v) equal its closed-book rows (u', v'): the edit would be zero."""
    if not len(u):
        raise FactError("the fact keeps no rows (every significance is 0?): nothing to learn (nothing was written)")
    diff = max(float(torch.linalg.norm(a - b) / torch.linalg.norm(a).clamp_min(1e-30)) for a, b in ((u, up), (v, vp)))
    if diff < SAME_PASSES:
        raise FactError("the fact changes nothing: with and without it the model reads the question the same "
                        "way, so the edit would be zero; give a fact that says something (nothing was written)")


def parse_significance(text: str) -> list[float]:
    """'0,1,1,1' -> [0.0, 1.0, 1.0, 1.0]: one number per word of the answer."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise prompting.PromptError(
            f"bad significance {text!r}: give one number per word of the answer, comma-separated, e.g. 0,1,1,1"
        ) from None


class MethodLearner:
    """The learner of a preset that keeps no rows a fact (intact, ft, in-context): the benchmark's method for it
    (editing/presets.build_method), its state kept in a format-3 edits file. Facts cannot be forgotten one by
    one (the method re-solves from no per-fact record), except in-context ones, which are only text.

    layers: the edited layers in this model (default: the preset's, placed by `Preset.layers_for`);
    metrics: {layer: SolveMetric} for a covariance preset."""

    def __init__(self, model, tokenizer, identity: dict, preset: Preset, edits: Edits | None = None,
                 max_new_tokens: int = 48, metrics: dict | None = None, layers: tuple[int, ...] | None = None):
        from transformers_qf.editing.presets import build_method

        if edits is not None:
            edits.check_fits(identity)
            layers = tuple(edits.config["layers"]) if edits.config and "layers" in edits.config else layers
        self.model, self.tokenizer, self.preset, self.max_new_tokens = model, tokenizer, preset, max_new_tokens
        keys = {layer: m.keys for layer, m in (metrics or {}).items()} or None
        self.method = build_method(preset, model, tokenizer, keys, layers)
        self.layers = tuple(self.method.layers)
        self.layer = self.layers[0] if self.layers else None
        config = self.method.config()
        if edits is None:
            first = locate(model, self.layers[0]).down.weight if self.layers else None
            edits = Edits(identity, -1 if first is None else self.layers[0],
                          [] if first is None else list(first.shape), "" if first is None else weight_digest(first),
                          preset=preset.name, state={}, config=config)
        else:
            if edits.preset != preset.name or (edits.config or {}) != config:
                raise EditsError(f"{edits.source or 'these edits'} were made with preset {edits.preset} "
                                 f"({edits.config}), not {preset.name} ({config}): leave out --preset, or start "
                                 "another edits file")
            if self.layers:  # the same checkpoint: the state holds whole weights, which would replace other ones
                edits.check_fits(identity, None, weight_digest(locate(model, self.layers[0]).down.weight))
            self.method.load_state_dict(edits.state or {})
        self.edits = edits

    @property
    def describe(self) -> str:
        return f"preset {self.preset.name}" + (f", layers {','.join(map(str, self.layers))}" if self.layers else "")

    def _context(self, fact: str) -> str:
        """The system turn: in context, every fact learned so far (and `fact`); else `fact`."""
        if self.preset.method != "in-context":
            return fact
        return " ".join([f.fact.system for f in self.edits.facts] + ([fact] if fact else []))

    def ask(self, question: str, fact: str = "") -> str:
        return greedy_answers(self.model, self.tokenizer, [(self._context(fact), question)], self.max_new_tokens)[0]

    def logprob(self, question: str, answer: str) -> float:
        return answer_logprob(self.model, self.tokenizer, self._context(""), question, answer)

    def learn(self, fact: str, question: str, answer: str, significance=None, target: str | None = None,
              subject: str | None = None) -> tuple[LearnedFact, dict]:
        """Teach one fact with the preset's method; returns the fact and the method's report (a dict)."""
        check_fact_text(fact)
        self._check_passes_differ(fact, question, answer)
        target, subject = target or value_of(fact, question), subject or subject_of(fact, question)
        said = Fact(fact, question, answer, significance, target=target, subject=subject)
        report = self.method.edit(said)
        report = {k: v for k, v in report.items() if isinstance(v, (int, float, str))}
        learned = LearnedFact.text_only(said, report)
        self.edits.facts.append(learned)
        self.edits.state = self.method.state_dict()
        return learned, report

    def forget(self, index: int):
        n = len(self.edits.facts)
        if not 0 <= index < n:
            raise EditsError(f"there is no fact {index + 1}: {n} fact{'s' * (n != 1)} learned (numbered from 1)")
        if self.preset.method != "in-context":
            raise EditsError(f"preset {self.preset.name} keeps no rows a fact, so one fact cannot be forgotten: "
                             "start again from an earlier edits file")
        return self.edits.facts.pop(index), None

    def is_original(self) -> bool:
        return not self.edits.facts

    def _check_passes_differ(self, fact: str, question: str, answer: str) -> None:
        """`check_teaches` at the preset's first layer (the last one for in-context)."""
        parts = locate(self.model, self.layers[0] if self.layers else int(self.model.config.num_hidden_layers) - 1)
        tfs = [prompting.teacher_forced(self.tokenizer, system, question, answer).nonzero() for system in (fact, "")]
        recs = record(self.model, parts, [tf.input_ids for tf in tfs])
        (u, v), (up, vp) = ((rec.u[tf.kept.to(rec.u.device)].float().cpu(), rec.v[tf.kept.to(rec.v.device)].float().cpu())
                            for rec, tf in zip(recs, tfs))
        check_teaches(u, up, v, vp)


def keeps_rows(preset: Preset) -> bool:
    """Whether `Learner` can run `preset`: QF at one layer, open-book targets, answer or target rows."""
    c = preset.config
    return (preset.method == "qf" and len(c.layers) == 1 and c.target == "open-book" and c.positions in POSITIONS
            and not c.keep_context and not c.target_wordings and c.gamma == 0 and c.ridge == 0)


def make_learner(model, tokenizer, identity: dict, preset: str | None = None, edits: Edits | None = None,
                 layer: int | None = None, max_new_tokens: int = 48, metrics: dict | None = None,
                 covariance: bool | None = None):
    """The learner for `preset` (a name in editing/presets.py; None: the edits file's, else the default).

    metrics: {layer: SolveMetric} (made by the caller, see `metric_layers`) for the presets that solve in a key
    covariance; covariance: force QF's covariance metric on or off for a single-layer QF preset."""
    if edits is not None and preset is not None and edits.preset is not None and preset != edits.preset:
        raise EditsError(f"{edits.source or 'these edits'} were made with preset {edits.preset}, not {preset}: "
                         "leave out --preset, or start another edits file")
    if edits is not None and edits.preset is None:  # a file written before presets: a row-keeping QF file
        p = None
    else:
        p = get_preset(preset if preset is not None else edits.preset if edits is not None else None)
    if p is None or keeps_rows(p):
        if edits is None:
            layer = layer if layer is not None else p.layers_for(int(model.config.num_hidden_layers))[0]
        keys = (metrics or {}).get(resolve_layer(model, layer, edits))
        use = covariance if covariance is not None else (p is not None and p.uses_covariance)
        metric = keys if (use or (edits is not None and edits.metric is not None)) else None
        return Learner(model, tokenizer, identity, layer, edits, max_new_tokens, metric,
                       positions=p.config.positions if p is not None else "answer", preset=p.name if p else None)
    if layer is not None:
        p.config_for(layer=layer)  # a one-line refusal for a multi-layer preset
    layers = (layer,) if layer is not None else None
    return MethodLearner(model, tokenizer, identity, p, edits, max_new_tokens, metrics, layers)


def metric_layers(model, preset: str | None, edits: Edits | None, layer: int | None = None,
                  covariance: bool | None = None, learning: bool = True) -> list[int]:
    """The layers whose key covariance `make_learner` needs for these arguments ([] when none; each layer is
    checked to exist first). learning=False: only to answer (a row-keeping file applies its factors without)."""
    if layer is not None:
        locate(model, layer)  # a one-line refusal before the minutes a covariance may take
    if edits is not None and edits.preset is None:
        return [resolve_layer(model, layer, edits)] if learning and (edits.metric is not None or covariance) else []
    p = get_preset(preset if preset is not None else edits.preset if edits is not None else None)
    if edits is not None and edits.config is not None:
        layers = list(edits.config.get("layers", []))
    elif edits is not None:
        layers = [edits.layer]
    elif layer is not None:
        layers = [layer]
    else:
        layers = list(p.layers_for(int(model.config.num_hidden_layers)))
    for index in layers:
        locate(model, index)
    if keeps_rows(p):
        use = covariance if covariance is not None else p.uses_covariance
        return layers if learning and (use or (edits is not None and edits.metric is not None)) else []
    return layers if p.uses_covariance else []
