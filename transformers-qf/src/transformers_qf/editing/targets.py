"""Layer-output targets found by gradient descent, as ROME / MEMIT find theirs (the "v*" of those papers).

QF takes the target of a kept position from the open-book pass. The alternative here asks the model
directly: add a vector delta_t to layer L's output at each kept position of the closed-book pass and
move the deltas (Adam) until the rest of the model predicts the teacher-forced answer, with a decay
that keeps each |delta_t| small against |h_t|, the output it is added to:

    minimise  mean_c -log p(answer | context c, h_t + delta_t at kept t)  +  decay sum_t |delta_t|^2 / |h_t|^2

Several contexts (the question, the question after other openings as ROME's random prefixes, the question
in other words) share the deltas: the kept rows of every context map to slots, and a row of slot t gets
delta_t, so the deltas must work wherever the question is asked, not only in the one sequence they were
fitted on. Several rows of one context may share a slot (every copy of the subject gets the same delta).
An `Essence` sequence adds ROME's essence term: essence_weight * KL(unedited || edited) of the next-token
distribution after "{subject} is a", with the deltas at the subject's rows there, so that what the model
says the subject *is* stays as it was.
Only layers L+1.. run in the loop, from the recorded outputs of layer L (nothing below L is repeated), every
context in one right-padded batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transformers_qf.core.capture import layer_slice

FIT_METHODS = ("adam", "adam-warm", "lbfgs")


@dataclass
class Context:
    """One closed-book sequence: layer L's output at every position [n, d_model], the rows that get the
    deltas [r], and the rows that predict the answer [m] with the answer's tokens [m]. slots [r]: which delta
    each kept row gets (default: the i-th row gets delta_i)."""

    hidden: torch.Tensor
    positions: torch.Tensor
    loss_positions: torch.Tensor
    targets: torch.Tensor
    slots: torch.Tensor | None = None

    def __post_init__(self):
        if self.slots is None:
            self.slots = torch.arange(len(self.positions), device=self.positions.device)
        if len(self.slots) != len(self.positions):
            raise ValueError(f"{len(self.slots)} slots for {len(self.positions)} kept rows: give one slot per row")


@dataclass
class Essence:
    """A sequence whose next-token distribution at `row` must not move: layer L's output at every position
    [n, d_model], the rows that get the deltas [k], and the KL's weight."""

    hidden: torch.Tensor
    positions: torch.Tensor
    row: int
    weight: float


def optimized_deltas(model, layer: int, contexts: list[Context], steps: int = 20, lr: float = 0.1,
                     decay: float = 0.5, max_ratio: float = 4.0, essence: Essence | None = None,
                     batched: bool = True, stop: float = 0.0, method: str = "adam",
                     prefix: bool = True) -> tuple[torch.Tensor, list[float]]:
    """delta: [k, d_model] (float32), one per slot, shared by the kept rows of every context, and the answer's
    loss (mean NLL over the contexts) at each step. lr is relative: a step moves delta_t by about lr |h_t|,
    with |h_t| at slot t's first row in the first context. |delta_t| is kept below max_ratio * |h_t|, as ROME's
    clamp_norm_factor. batched=False runs one forward per context (the same result; for timing the two).
    stop > 0: end the fit after the first step whose loss (the answer's mean NLL a token, averaged over the
    contexts, before that step's update) is below `stop`; that step's update is still made. prefix: the rows before
    the first delta row of every context run through layers L+1.. once, not at every step (`_Prefix`; the same
    result; False for timing the two).
    method "adam-warm": Adam on the first context alone until its loss is below `stop`, then, from there and with
    the same moments, on every context until their mean is below it (a step on one short sequence costs a fraction
    of a step on all; the losses are the first context's, then the mean's; `steps` counts both). Needs stop > 0.
    method "lbfgs": L-BFGS with a strong-Wolfe line search on the same loss instead of Adam (lr is then its
    step scale, 1 by default in torch); `steps` counts the loss's evaluations (a forward and a backward each,
    as an Adam step), the losses are those of every evaluation, and with `stop` the deltas returned are those
    of the first evaluation below it (else of the lowest loss seen). No clamp: the decay term bounds |delta_t|
    (a projection would break the curvature pairs L-BFGS keeps).
    """
    if method not in FIT_METHODS:
        raise ValueError(f"unknown fit method {method!r}: use one of {', '.join(FIT_METHODS)}")
    if method == "adam-warm" and stop <= 0:
        raise ValueError("the warm-started fit moves on from the first context once its loss is below the stop: "
                         "give a stop > 0")
    first = contexts[0]
    k = int(first.slots.max()) + 1
    if sorted(set(first.slots.tolist())) != list(range(k)):
        raise ValueError("the first context must have a row for every slot (its rows set each delta's scale)")
    if any(int(c.slots.max()) >= k for c in contexts) or (essence is not None and len(essence.positions) != k):
        raise ValueError(f"every context's slots must be among the first context's {k} (they share the deltas)")
    # each sequence cut after its last scored row: under the causal mask nothing after it changes the loss
    contexts = [Context(c.hidden[:int(max(c.loss_positions.max(), c.positions.max())) + 1].detach(), c.positions,
                        c.loss_positions, c.targets, c.slots) for c in contexts]
    firsts = [int((first.slots == t).nonzero()[0]) for t in range(k)]
    scale = torch.linalg.norm(first.hidden[first.positions[firsts]].float(), dim=1, keepdim=True)  # [k, 1]
    # delta = eps |h_t| / sqrt(d): an Adam step of lr moves each delta_t by about lr |h_t|, on any model
    unit = scale / first.hidden.shape[1] ** 0.5
    eps = torch.zeros(k, first.hidden.shape[1], dtype=torch.float32, device=first.hidden.device,
                      requires_grad=True)
    losses: list[float] = []
    lm_head = model.get_output_embeddings()
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)  # gradients for the deltas only
        with torch.enable_grad(), layer_slice(model, layer + 1) as base:
            kept = None
            if essence is not None:
                with torch.no_grad():
                    kept = (essence, _next_logp(base, lm_head, essence.hidden.detach(), essence.row))
            if method == "lbfgs":
                return _lbfgs(base, lm_head, _Forward(base, contexts, batched, prefix), eps, unit, decay, kept, steps,
                              lr, stop)
            optimiser = torch.optim.Adam([eps], lr=lr)
            stages = [contexts[:1], contexts] if method == "adam-warm" and len(contexts) > 1 else [contexts]
            for stage in map(lambda cs: _Forward(base, cs, batched, prefix), stages):
                while len(losses) < steps:
                    losses.append(_step(base, lm_head, stage, eps, unit, decay, max_ratio, optimiser, kept))
                    if losses[-1] < stop:
                        break
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    return (eps * unit).detach(), losses


def _right_padded(sequences: list[torch.Tensor]) -> torch.Tensor:
    """[n_i, d] -> [b, max n_i, d], zeros after each sequence: one forward for every context. Under the causal
    mask no real position attends to the padding after it, and positions count from 0 as unbatched."""
    longest = max(len(x) for x in sequences)
    return torch.stack([torch.nn.functional.pad(x, (0, 0, 0, longest - len(x))) for x in sequences])


def _causal_mask(base, queries: int, before: int, like: torch.Tensor) -> torch.Tensor | None:
    """The causal mask [1, 1, queries, before + queries] of `queries` rows that follow `before` cached ones, in the
    form the attention implementation takes (sdpa: True where a row may attend; eager: 0 or the dtype's minimum);
    None for another implementation."""
    allowed = torch.ones(queries, before + queries, dtype=torch.bool, device=like.device).tril(diagonal=before)
    kind = getattr(base.config, "_attn_implementation", None)
    if kind == "sdpa":
        return allowed[None, None]
    if kind == "eager":
        return torch.zeros(allowed.shape, dtype=like.dtype, device=like.device).masked_fill(
            ~allowed, torch.finfo(like.dtype).min)[None, None]
    return None


class _Prefix:
    """The first `length` rows of a batch of sequences, run through the sliced layers once: nothing before the first
    delta row depends on the deltas. Passed to the base model as its past_key_values, it records each layer's keys
    and values of those rows, then puts them before every later call's own (keeping nothing of those calls)."""

    def __init__(self, base, batch: torch.Tensor, length: int, mask: torch.Tensor):
        self.length = length
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._recording = True
        with torch.no_grad():
            base(inputs_embeds=batch[:, :length], attention_mask=mask, past_key_values=self,
                 position_ids=torch.arange(length, device=batch.device)[None], use_cache=False)
        self._recording = False

    @classmethod
    def of(cls, base, contexts: list[Context]) -> "_Prefix | None":
        """The prefix shared by these contexts' padded batch (up to their earliest delta row), or None where there is
        none or the attention implementation takes no mask of ours."""
        length = min(int(c.positions.min()) for c in contexts)
        batch = _right_padded([c.hidden for c in contexts])
        mask = _causal_mask(base, length, 0, batch) if length > 0 else None
        return cls(base, batch, length, mask) if mask is not None else None

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self._recording:
            self.kv[layer_idx] = (keys.detach(), values.detach())
            return keys, values
        k, v = self.kv[layer_idx]
        return torch.cat([k, keys], dim=-2), torch.cat([v, values], dim=-2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def run(self, base, batch: torch.Tensor) -> torch.Tensor:
        """The last hidden state of `batch`'s rows from `length` on [b, n - length, d]."""
        rest = batch[:, self.length:]
        return base(inputs_embeds=rest, attention_mask=_causal_mask(base, rest.shape[1], self.length, rest),
                    past_key_values=self, use_cache=False,
                    position_ids=torch.arange(self.length, batch.shape[1], device=batch.device)[None]).last_hidden_state


class _Forward:
    """Layers L+1.. over contexts with the deltas added: one right-padded batch (batched) or one forward a context,
    each group's shared prefix run once (`_Prefix`, with `prefix`)."""

    def __init__(self, base, contexts: list[Context], batched: bool = True, prefix: bool = True):
        self.base, self.contexts = base, contexts
        groups = [contexts] if batched else [[c] for c in contexts]
        self.groups = [(group, _Prefix.of(base, group) if prefix else None) for group in groups]

    def __len__(self) -> int:
        return len(self.contexts)

    def outputs(self, deltas: torch.Tensor) -> list[torch.Tensor]:
        """Each context's last hidden state at its loss positions [m_i, d], with deltas [k, d] at its kept rows."""
        out = []
        for group, prefix in self.groups:
            edited = [c.hidden.index_add(0, c.positions, deltas[c.slots].to(c.hidden.dtype)) for c in group]
            batch = _right_padded(edited)
            if prefix is None:
                states, shift = self.base(inputs_embeds=batch, use_cache=False).last_hidden_state, 0
            else:
                states, shift = prefix.run(self.base, batch), prefix.length
            out += [state[c.loss_positions - shift] for state, c in zip(states, group)]
        return out


def _next_logp(base, lm_head, hidden: torch.Tensor, row: int) -> torch.Tensor:
    state = base(inputs_embeds=hidden[None], use_cache=False).last_hidden_state[0, row]
    return torch.log_softmax(lm_head(state).float(), dim=-1)


class _Done(Exception):
    """Raised from an L-BFGS evaluation to end the fit (its loss is below the stop, or the budget is spent)."""


def _lbfgs(base, lm_head, forward: "_Forward", eps, unit, decay, kept, evaluations: int, lr: float,
           stop: float) -> tuple[torch.Tensor, list[float]]:
    losses: list[float] = []
    best: list = [float("inf"), None]  # the lowest answer loss evaluated (the first below `stop`), and its eps
    optimiser = torch.optim.LBFGS([eps], lr=lr, max_iter=evaluations, max_eval=evaluations + 1, history_size=10,
                                  tolerance_grad=0.0, tolerance_change=0.0, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss, nll = _loss(base, lm_head, forward, eps, unit, decay, kept)
        losses.append(float(nll.detach()))
        if losses[-1] < best[0]:
            best[0], best[1] = losses[-1], eps.detach().clone()
        if losses[-1] < stop or len(losses) >= evaluations:
            raise _Done
        loss.backward()
        return loss

    try:
        optimiser.step(closure)
    except _Done:
        pass
    return (best[1] * unit).detach(), losses


def _loss(base, lm_head, forward: _Forward, eps, unit, decay, kept=None):
    """(the fitted loss, the answer's mean NLL a token) at eps; kept: (Essence, its unedited next-token log p)."""
    contexts = forward.contexts
    nll = sum(torch.nn.functional.cross_entropy(lm_head(o).float(), c.targets)
              for o, c in zip(forward.outputs(eps * unit), contexts)) / len(contexts)
    d = eps.shape[1]
    loss = nll + decay * (eps ** 2).sum(dim=1).mean() / d
    if kept is not None:
        essence, before = kept
        edited = essence.hidden.detach().index_add(0, essence.positions, (eps * unit).to(essence.hidden.dtype))
        after = _next_logp(base, lm_head, edited, essence.row)
        loss = loss + essence.weight * (before.exp() * (before - after)).sum()
    return loss, nll


def _step(base, lm_head, forward: _Forward, eps, unit, decay, max_ratio, optimiser, kept=None) -> float:
    """One Adam step on eps; |delta_t|^2 / |h_t|^2 = |eps_t|^2 / d, kept below max_ratio^2.
    kept: (Essence, its unedited next-token log p) or None."""
    optimiser.zero_grad()
    loss, nll = _loss(base, lm_head, forward, eps, unit, decay, kept)
    d = eps.shape[1]
    loss.backward()
    optimiser.step()
    with torch.no_grad():
        norms = torch.linalg.norm(eps, dim=1, keepdim=True)
        eps.mul_(torch.clamp(max_ratio * d ** 0.5 / norms.clamp_min(1e-12), max=1.0))
    return float(nll.detach())
