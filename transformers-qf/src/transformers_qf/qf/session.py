"""The four qfmodes of the original, on a model loaded by stock transformers.

- QF-instruct:  teacher-force the answer with the fact as system prompt; record u, v at layer L.
- QF-update:    the same without the fact (system empty); record u', v'.
- QF-infer-w:   greedy generation with the weights currently in the model.
- QF-infer-wp:  load the latest W' into down_proj (once), then generate. The weight stays
                replaced, as in the original; `revert()` puts W back.

Rows accumulate in the parameters folder across rounds, and every solve starts from the W saved
at the first QF-instruct, so a second fact is solved together with the first.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass

import torch

from transformers_qf.core import prompting
from transformers_qf.core.architectures import locate
from transformers_qf.core.models import model_identity
from transformers_qf.core.capture import GraphedRecorder, check_finite, finite_flags, record
from transformers_qf.core.generation import greedy_answers
from transformers_qf.solve.weights import OriginalWeight
from transformers_qf.solve.exact import Accumulator, GraphedSolver, SolveError, SolveReport, solve
from transformers_qf.core.store import ParametersError, ParametersFolder


class QFMode(str, enum.Enum):
    INSTRUCT = "QF-instruct"
    UPDATE = "QF-update"
    INFER_W = "QF-infer-w"
    INFER_WP = "QF-infer-wp"


@dataclass
class Captured:
    """The rows one pass recorded. u: [k, d_mlp], v: [k, d_model]; targets/weights: [k]."""

    u: torch.Tensor
    v: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor


class Respond:
    """The original's single entry point, shared by QF and QF2: `respond(..., qfmode=...)` dispatches to
    instruct / update / apply + generate / generate."""

    def respond(self, system: str, user: str, answer: str = "", significance=None, qfmode: str = "QF-infer-w"):
        """Dispatch on `qfmode` (QF-instruct, QF-update, QF-infer-w, QF-infer-wp)."""
        try:
            mode = QFMode(qfmode)
        except ValueError:
            raise ValueError(f"unknown qfmode {qfmode!r}: use one of {[m.value for m in QFMode]}") from None
        if mode is QFMode.INSTRUCT:
            return self.instruct(system, user, answer, significance)
        if mode is QFMode.UPDATE:
            return self.update(user, answer, significance, system=system)
        if mode is QFMode.INFER_WP:
            self.apply()
        return self.generate(system, user)


class QF(Respond):
    """qfmode for one layer of a loaded causal LM.

    model, tokenizer: as loaded by transformers; identity: a dict naming the model (recorded in the
    folder's manifest; defaults to its config's shape); folder: the parameters folder, or None to keep
    the rows in memory only.
    """

    def __init__(
        self,
        model,
        tokenizer,
        layer: int = 23,
        folder: str | os.PathLike | None = "parameters",
        identity: dict | None = None,
        fresh: bool = False,
        original_tokenization: bool = False,
        ridge: float = 0.0,
        max_new_tokens: int = 48,
        open_answer_turn: bool = True,
        cuda_graphs: bool = True,
        compile_capture: bool = False,
        incremental: bool = False,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.parts = locate(model, layer)
        self.layer = self.parts.index
        self.original_tokenization = original_tokenization
        self.ridge = ridge
        self.max_new_tokens = max_new_tokens
        self.open_answer_turn = open_answer_turn
        identity = identity or model_identity(model)
        self.folder = ParametersFolder(folder, self.layer, identity, method="QF", fresh=fresh)
        self._original: OriginalWeight | None = None  # down_proj and W as loaded (at the first round), to revert
        self.applied_rounds = 0  # rounds whose W' is in the model now (0: W)
        self.last_report: SolveReport | None = None
        self.cuda_graphs = cuda_graphs
        self.compile_capture = compile_capture
        self._graphed: GraphedRecorder | None = None
        self._solver: GraphedSolver | None = None
        self._one_device: bool | None = None
        self.incremental = incremental  # learn(): extend W' round by round instead of re-solving from W
        self._accumulator: Accumulator | None = None

    # -- the four modes ---------------------------------------------------------------------------
    def instruct(self, system: str, user: str, answer: str, significance=None) -> Captured:
        """Open-book pass: record u, v; save W at the first round. An empty fact is refused (FactError)."""
        prompting.check_fact_text(system)
        self._require_no_pending_round()
        cap = self._capture(system, user, answer, significance)
        self._save_original_weight()
        self.folder.append({"u": cap.u, "v": cap.v}, self._round_entry(system, user, answer, significance, cap))
        return cap

    def _round_entry(self, system, user, answer, significance, cap: Captured) -> dict:
        return {
            "new_round": True,
            "system": system,
            "user": user,
            "answer": answer,
            "significance": None if significance is None else [float(s) for s in significance],
            "original_tokenization": self.original_tokenization,
            "targets": cap.targets.tolist(),
            "weights": cap.weights.tolist(),
            "instruct_rows": int(cap.u.shape[0]),
            "update_rows": None,
        }

    def update(self, user: str, answer: str, significance=None, system: str = "") -> Captured:
        """Closed-book pass: record u', v' for the pending instruct round."""
        pending = self.folder.rounds[-1] if self.folder.rounds else None
        if pending is None or pending.get("update_rows") is not None:
            raise ParametersError("QF-update has no matching QF-instruct rows: run QF-instruct with the fact first")
        cap = self._capture(system, user, answer, significance)
        if cap.targets.tolist() != pending["targets"] or cap.weights.tolist() != pending["weights"]:
            raise ParametersError(
                "QF-update's answer tokens or significances differ from its QF-instruct's: "
                "give the same answer and significance to both"
            )
        self.folder.append({"up": cap.u, "vp": cap.v}, {"update_rows": int(cap.u.shape[0]), "update_system": system})
        return cap

    def learn(self, system: str, user: str, answer: str, significance=None) -> SolveReport:
        """One QF round the fast way: both passes in one forward, the solve on the weight's device,
        W' written straight into down_proj. Same rows, folder entries and W' as
        instruct() + update() + solve() + apply(). Nothing is kept unless the whole round succeeds:
        on any error the folder is as it was and down_proj holds what it held. An empty fact is refused."""
        prompting.check_fact_text(system)
        self._require_no_pending_round()
        open_tf, closed_tf = (tf.nonzero() for tf in prompting.teacher_forced_many(
            self.tokenizer, [system, ""], user, answer, significance, self.original_tokenization
        ))
        # no sync until the solve's: the finiteness of the recordings is read back after it
        recs = self._recorder([open_tf.through_last_kept(), closed_tf.through_last_kept()], check=False, copy=False)
        finite = finite_flags(recs)
        open_cap, closed_cap = _kept(recs[0], open_tf), _kept(recs[1], closed_tf)
        new = {"u": open_cap.u, "up": closed_cap.u, "v": open_cap.v, "vp": closed_cap.v}
        weight = self.parts.down.weight.data
        try:
            try:
                report = self._solve_with(new, open_cap.weights, weight)
            finally:
                check_finite(recs, self.layer, finite)  # non-finite recordings are the error to report
        except BaseException:
            self._put_back(weight)
            raise
        self._save_original_weight()
        f = self.folder
        f.append({"u": open_cap.u, "v": open_cap.v}, self._round_entry(system, user, answer, significance, open_cap))
        f.append({"up": closed_cap.u, "vp": closed_cap.v}, {"update_rows": int(closed_cap.u.shape[0]), "update_system": "",
                                                            "solve": report.as_dict()})
        f.manifest["w_prime_rounds"] = len(f.rounds)
        f.save("w_prime", weight)
        self.applied_rounds = len(f.rounds)
        self.last_report = report
        return report

    def solve(self) -> SolveReport:
        """Eq. 3 over every recorded row, from the W saved at the first instruct; saves w_prime."""
        f = self.folder
        if f.rows("u") != f.rows("up"):
            raise ParametersError(
                f"{f.rows('u')} instruct rows but {f.rows('up')} update rows: finish the pending round with QF-update"
            )
        W = f.load("weight")  # becomes W' in place
        weights = torch.cat([torch.tensor(r["weights"], dtype=torch.float64) for r in f.rounds])
        _, report = solve(W, f.load("u"), f.load("up"), f.load("v"), f.load("vp"), weights=weights,
                          ridge=self.ridge, apply=True)
        f.rounds[-1]["solve"] = report.as_dict()
        f.manifest["w_prime_rounds"] = len(f.rounds)
        f.save("w_prime", W)
        self.last_report = report
        return report

    def _solve_with(self, new: dict[str, torch.Tensor], new_weights: torch.Tensor, weight: torch.Tensor) -> SolveReport:
        """W' over the folder's rows and the `new` round's (u, up, v, vp) into the model's `weight`;
        nothing recorded. Incremental sessions extend the W' in the model when they can."""
        report = self._extend(weight, new) if self.incremental and not self.ridge else None
        if report is not None:
            return report
        self._accumulator = None
        f = self.folder
        names = ("u", "up", "v", "vp")
        rows = [torch.cat([f.load(n).to(new[n].device), new[n].to(torch.float32)]) if f.has(n) else new[n]
                for n in names]
        self._down().restore()  # every solve starts from the original W
        if not self.ridge and self._graphed_solver is not None:
            return self._graphed_solver(*rows)[1]
        weights = torch.cat([torch.tensor(r["weights"], dtype=torch.float64) for r in f.rounds] + [new_weights])
        return solve(weight, *rows, weights=weights, ridge=self.ridge, apply=True)[1]

    def _extend(self, weight: torch.Tensor, new: dict[str, torch.Tensor]) -> SolveReport | None:
        """Add the `new` round to the W' in the model (Accumulator); None when a full re-solve is needed."""
        if self._accumulator is None or self.applied_rounds != len(self.folder.rounds):
            if self.folder.rounds:
                return None  # the model does not hold the previous rounds' W': re-solve them all once
            self._down().restore()
            self._accumulator = Accumulator(self._weight_as_loaded())
        try:
            return self._accumulator.add(weight, new["u"], new["up"], new["v"], new["vp"])
        except SolveError:
            return None

    def _put_back(self, weight: torch.Tensor) -> None:
        """After a failed round: down_proj holds again the W' of the rounds applied before it (or W)."""
        self._accumulator = None
        if self.applied_rounds and self.folder.has("w_prime"):
            self._down().load(self.folder.load("w_prime"))
        elif self._original is not None:
            self._original.restore()

    def apply(self) -> None:
        """Put the latest W' into down_proj (once per solve); the original W is kept for revert()."""
        solved_rounds = self.folder.manifest.get("w_prime_rounds", 0)
        if not solved_rounds or not self.folder.has("w_prime"):
            raise ParametersError("no W' yet: run QF-instruct, QF-update and solve() before QF-infer-wp")
        if self.applied_rounds == solved_rounds:
            return
        self._down().load(self.folder.load("w_prime"))
        self.applied_rounds = solved_rounds

    def revert(self) -> None:
        """Put the original W back."""
        self._accumulator = None
        if self._original is not None:
            self._original.restore()
        self.applied_rounds = 0

    def reset(self) -> None:
        """Forget every round: W back in the model, the folder emptied (a fresh start)."""
        self.revert()
        self.folder = ParametersFolder(self.folder.path, self.layer, self.folder.identity, method="QF", fresh=True)

    @property
    def weights_name(self) -> str:
        """W, W', W'', ... for the weights in the model now."""
        return "W" + "'" * self.applied_rounds

    # -- generation and scoring -------------------------------------------------------------------
    def generate(self, system: str, user: str, max_new_tokens: int | None = None) -> str:
        """Greedy answer of the model as it is now."""
        return greedy_answers(self.model, self.tokenizer, [(system, user)], max_new_tokens or self.max_new_tokens,
                              self.open_answer_turn)[0]

    def answer_logprob(self, system: str, user: str, answer: str) -> float:
        """Sum of log p of the answer's tokens, teacher-forced after the answer turn's header."""
        return answer_logprob(self.model, self.tokenizer, system, user, answer, self.original_tokenization)

    # -- internals -------------------------------------------------------------------------------
    @property
    def _device(self):
        return next(self.model.parameters()).device

    def _teacher_forced(self, system, user, answer, significance) -> prompting.TeacherForced:
        return prompting.teacher_forced(self.tokenizer, system, user, answer, significance, self.original_tokenization)

    def _capture(self, system, user, answer, significance) -> Captured:
        tf = self._teacher_forced(system, user, answer, significance)
        return _kept(record(self.model, self.parts, tf.input_ids)[0], tf.nonzero())

    def _require_no_pending_round(self) -> None:
        if self.folder.rounds and self.folder.rounds[-1].get("update_rows") is None:
            raise ParametersError("the last QF-instruct has no QF-update yet: run QF-update for it first")

    def _save_original_weight(self) -> None:
        """W goes into the folder once, at the first round; every solve starts from it."""
        if not self.folder.has("weight"):
            self.folder.set_dtype(self.parts.down.weight.dtype)
            self.folder.save("weight", self._weight_as_loaded())

    def _weight_as_loaded(self) -> torch.Tensor:
        """W as loaded, kept on the weight's device (one extra copy of one matrix)."""
        return self._down().original

    def _down(self) -> OriginalWeight:
        """down_proj's weight, with W as it was at the first round (taken then)."""
        if self._original is None:
            self._original = OriginalWeight(self.parts.down)
        return self._original

    @property
    def _on_one_device(self) -> bool:
        """A model sharded over several GPUs (accelerate's device_map) runs eagerly: a CUDA graph
        captures the work of one device only."""
        if self._one_device is None:
            self._one_device = len({p.device for p in self.model.parameters()}) == 1
        return self._one_device

    @property
    def _graphs_usable(self) -> bool:
        return self.cuda_graphs and self._device.type == "cuda" and self._on_one_device

    @property
    def _graphed_solver(self) -> GraphedSolver | None:
        """The solve into down_proj replayed from CUDA graphs, where the capture is (None elsewhere)."""
        if not self._graphs_usable:
            return None
        if self._solver is None:
            self._solver = GraphedSolver(self.parts.down.weight.data)
        return self._solver

    @property
    def _recorder(self):
        """How a batch of sequences is recorded: a CUDA graph replay on CUDA (when enabled), else eager."""
        if self._graphs_usable:
            if self._graphed is None:
                self._graphed = GraphedRecorder(self.model, self.parts, compile=self.compile_capture)
            return self._graphed
        return lambda seqs, check=True, copy=True: record(self.model, self.parts, seqs, check=check)


def _kept(rec, tf: prompting.TeacherForced) -> Captured:
    """The kept rows of a recording: a slice when they are consecutive (no significance 0), which needs
    no index tensor on the device (copying one there from pageable memory waits for the GPU)."""
    first, last = (int(tf.kept[0]), int(tf.kept[-1])) if len(tf.kept) else (0, -1)
    if last - first + 1 == len(tf.kept):
        pos = slice(first, last + 1)
    else:
        pos = tf.kept.to(rec.u.device)
    return Captured(u=rec.u[pos], v=rec.v[pos], targets=tf.targets, weights=tf.weights)


@torch.no_grad()
def answer_logprob(model, tokenizer, system: str, user: str, answer: str, original_tokenization: bool = False) -> float:
    """Sum of log p of the answer's tokens, teacher-forced after the answer turn's header (in the tokenizer's
    chat format; ChatML: `<|im_start|>assistant\\n`)."""
    tf = prompting.teacher_forced(tokenizer, system, user, answer, None, original_tokenization)
    device = next(model.parameters()).device
    logits = model(input_ids=tf.input_ids.view(1, -1).to(device), use_cache=False).logits[0]
    header = prompting.header_rows(tokenizer)
    pos, tgt = tf.kept[header:-1], tf.targets[header:-1]  # answer tokens only
    logp = torch.log_softmax(logits[pos.to(logits.device)].float(), dim=-1)
    return float(logp[torch.arange(len(tgt)), tgt.to(logits.device)].sum())
