"""Layer-output targets found by gradient descent, as ROME / MEMIT find theirs (the "v*" of those papers).

QF takes the target of a kept position from the open-book pass. The alternative here asks the model
directly: add a vector delta_t to layer L's output at each kept position of the closed-book pass and
move the deltas (Adam) until the rest of the model predicts the teacher-forced answer, with a decay
that keeps each |delta_t| small against |h_t|, the output it is added to:

    minimise  -log p(answer | closed-book prompt, h_t + delta_t at kept t)  +  decay sum_t |delta_t|^2 / |h_t|^2

Only layers L+1.. run in the loop, from the recorded outputs of layer L (nothing below L is repeated).
"""

from __future__ import annotations

import torch

from .capture import layer_slice


def optimized_deltas(model, layer: int, hidden: torch.Tensor, positions: torch.Tensor, loss_positions: torch.Tensor,
                     targets: torch.Tensor, steps: int = 20, lr: float = 0.1, decay: float = 0.5,
                     max_ratio: float = 4.0) -> tuple[torch.Tensor, list[float]]:
    """delta: [k, d_model] (float32) for the rows `positions` of `hidden` ([n, d_model], layer L's closed-book
    output at every position), and the answer's loss (mean NLL) at each step. lr is relative: a step
    moves delta_t by about lr |h_t|.

    loss_positions: [m] positions that predict the answer's tokens `targets` [m]. |delta_t| is kept
    below max_ratio * |h_t|, as ROME's clamp_norm_factor.
    """
    device = hidden.device
    h = hidden.detach()
    scale = torch.linalg.norm(h[positions].float(), dim=1, keepdim=True)  # [k, 1]
    # delta = eps |h_t| / sqrt(d): an Adam step of lr moves each delta_t by about lr |h_t|, on any model
    unit = scale / h.shape[1] ** 0.5
    eps = torch.zeros(len(positions), h.shape[1], dtype=torch.float32, device=device, requires_grad=True)
    optimiser = torch.optim.Adam([eps], lr=lr)
    losses: list[float] = []
    lm_head = model.get_output_embeddings()
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)  # gradients for the deltas only
        with torch.enable_grad(), layer_slice(model, layer + 1) as base:
            for _ in range(steps):
                losses.append(_step(base, lm_head, h, positions, eps, unit, loss_positions, targets, decay,
                                    max_ratio, optimiser))
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    return (eps * unit).detach(), losses


def _step(base, lm_head, h, positions, eps, unit, loss_positions, targets, decay, max_ratio, optimiser) -> float:
    """One Adam step on eps; |delta_t|^2 / |h_t|^2 = |eps_t|^2 / d, kept below max_ratio^2."""
    optimiser.zero_grad()
    edited = h.index_add(0, positions, (eps * unit).to(h.dtype))
    states = base(inputs_embeds=edited[None], use_cache=False).last_hidden_state[0, loss_positions]
    nll = torch.nn.functional.cross_entropy(lm_head(states).float(), targets)
    d = eps.shape[1]
    loss = nll + decay * (eps ** 2).sum(dim=1).mean() / d
    loss.backward()
    optimiser.step()
    with torch.no_grad():
        norms = torch.linalg.norm(eps, dim=1, keepdim=True)
        eps.mul_(torch.clamp(max_ratio * d ** 0.5 / norms.clamp_min(1e-12), max=1.0))
    return float(nll.detach())
