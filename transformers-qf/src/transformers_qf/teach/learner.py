"""Teach a loaded model facts, and forget them, one layer at a time.

A `Learner` keeps the down_proj weight of one layer equal to

    W' = W + A B      (the QF solve, from the original W, over the rows of every fact kept)

in QF's plain metric (B = U', the smallest ||W' - W||_F) or, given a `SolveMetric`, in the metric of the
layer's key covariance C (B = U' C^-1, the smallest ||(W' - W) C^1/2||_F: the change falls least on the
keys of generic text and of the model's answers about real entities, as in the benchmark's default).

Learning records a fact's rows (the open-book and closed-book passes in one forward that stops
after the layer) and re-solves all facts from W; forgetting drops a fact's rows and re-solves the
rest, which gives exactly what learning the rest from scratch gives. Applying an edits file puts
its stored factors into the weight without solving again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transformers_qf.core import prompting
from transformers_qf.core.capture import record
from transformers_qf.teach.edits import Edits, EditsError, Fact, weight_digest
from transformers_qf.solve.keyed import KeyMetric
from transformers_qf.qf.session import QF
from transformers_qf.solve.exact import SolveReport, solve


def default_layer(model) -> int:
    """The last decoder layer. On SmolLM2-135M only the last layer made the closed-book answer equal
    the open-book one (of layers 10-29, three facts); on the bundled 1.5B model the sweep in
    results/qf_sweep.md finds the same (7 of 8 steps hold at layer 27, 4 of 8 at every other layer swept)."""
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
    plain one). Edits solved in a metric are applied, and their facts forgotten, without it (their rows of B
    are stored); learning more needs the same metric again. The weight in the model at construction is taken as the original W.
    """

    def __init__(self, model, tokenizer, identity: dict, layer: int | None = None, edits: Edits | None = None,
                 max_new_tokens: int = 48, metric: SolveMetric | None = None):
        if edits is not None:
            edits.check_fits(identity)  # the model first: the edits' layer may not exist in another one
        layer = resolve_layer(model, layer, edits)
        self.qf = QF(model, tokenizer, layer=layer, folder=None, identity=identity, max_new_tokens=max_new_tokens)
        self.tokenizer = tokenizer
        self.parts = self.qf.parts
        self.layer = self.qf.layer
        self.original = self.parts.down.weight.detach().clone()  # W, [d_model, d_mlp]
        digest = weight_digest(self.original)
        if edits is None:
            edits = Edits(identity, self.layer, list(self.original.shape), digest)
        else:
            edits.check_fits(identity, self.layer, digest)
        self.metric = metric
        self._check_metric(edits)
        self.edits = edits
        self._put_factors()

    # -- answering ---------------------------------------------------------------------------------
    def ask(self, question: str, fact: str = "") -> str:
        """Greedy answer of the model as it is now; `fact` goes in the system turn (open book)."""
        return self.qf.generate(fact, question)

    def logprob(self, question: str, answer: str) -> float:
        """log p(answer | question) closed-book, with the weights as they are now."""
        return self.qf.answer_logprob("", question, answer)

    # -- learning and forgetting -----------------------------------------------------------------------
    def learn(self, fact: str, question: str, answer: str, significance=None) -> tuple[Fact, SolveReport]:
        """Consolidate `answer` to `question` given `fact` into the weight; returns the fact and the solve."""
        new = self.record(fact, question, answer, significance)
        report = self._resolve(self.edits.facts + [new])
        new.solve = report.as_dict()
        return new, report

    def forget(self, index: int) -> tuple[Fact, SolveReport | None]:
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

    def record(self, fact: str, question: str, answer: str, significance=None) -> Fact:
        """The rows of one fact: both passes in one forward cut after the layer (no weight changes)."""
        self._require_metric()
        tfs = [prompting.teacher_forced(self.tokenizer, system, question, answer, significance).nonzero()
               for system in (fact, "")]
        recs = record(self.qf.model, self.parts, [tf.input_ids for tf in tfs])
        (u, v), (up, vp) = ((rec.u[tf.kept.to(rec.u.device)], rec.v[tf.kept.to(rec.v.device)]) for rec, tf in zip(recs, tfs))
        u, v, up, vp = (t.detach().to("cpu", torch.float32) for t in (u, v, up, vp))
        basis = None if self.metric is None else self.metric.keys.apply(up).cpu()
        return Fact(fact, question, answer, None if significance is None else [float(s) for s in significance],
                    tfs[0].targets.tolist(), tfs[0].weights.tolist(), u, v, up, vp, b=basis)

    def _resolve(self, facts: list[Fact]) -> SolveReport | None:
        """Make the weight W + the solve over `facts`, and make `facts` the edits' facts. On any error
        (an interrupt included) the weight and the facts are left as they were."""
        weight = self.parts.down.weight.data
        try:
            weight.copy_(self.original)
            if not facts:
                update, report = None, None
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
        weight = self.parts.down.weight.data
        weight.copy_(self.original)
        update = self.edits.update()
        if update is not None:
            update.apply_(weight)



def parse_significance(text: str) -> list[float]:
    """'0,1,1,1' -> [0.0, 1.0, 1.0, 1.0]: one number per word of the answer."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise prompting.PromptError(
            f"bad significance {text!r}: give one number per word of the answer, comma-separated, e.g. 0,1,1,1"
        ) from None
