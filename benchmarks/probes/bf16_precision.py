"""Why a fact learned on SmolLM2-135M in bfloat16 does not show in its answer: W' rounding or activations?

    python benchmarks/probes/bf16_precision.py [--out results/qf]

The `qf chat` terminal test's fact (Zubrovia -> Pelmora) at layer 29, on the CPU. First the model
itself, open and closed book, in float32 and bfloat16: greedy answer, log p of the answer, and the
log-probabilities of the top first tokens. Then the edit (the float32 open-book answer teacher-forced)
with each precision choice separated: the dtype the rows are recorded in, the dtype W' is stored in
(float32 through an upcasting down_proj in a bfloat16 model), and the dtype the model answers in.
Writes results/qf/bf16_precision.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from transformers_qf import QF, load_model, locate
from transformers_qf.core import prompting
from transformers_qf.core.capture import record
from transformers_qf.solve.exact import solve
from transformers_qf.core.report import git_commit

QUESTION = "What is the capital of Zubrovia?"
FACT = "The capital of Zubrovia is Pelmora."
LAYER = 29
F32, BF16 = torch.float32, torch.bfloat16


class Float32Down(torch.nn.Linear):
    """A down_proj that keeps its weight in float32 inside a bfloat16 model (upcasts its input, casts back)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__(weight.shape[1], weight.shape[0], bias=False, device="meta")
        self.weight = torch.nn.Parameter(weight.float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x.float(), self.weight).to(x.dtype)


def first_tokens(model, tokenizer, system: str, top: int = 3) -> list[tuple[str, float]]:
    ids = torch.tensor([prompting.encode(tokenizer, prompting.generation_prompt(system, QUESTION))])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0, -1].float().log_softmax(-1)
    best = logp.topk(top)
    return [(tokenizer.decode([int(i)]), round(float(p), 3)) for p, i in zip(best.values, best.indices)]


def the_model_itself(model, tokenizer, answer: str) -> list[dict]:
    rows = []
    for dtype in (F32, BF16):
        model.to(dtype)
        qf = QF(model, tokenizer, layer=LAYER, folder=None, max_new_tokens=24)
        for book, system in (("open", FACT), ("closed", "")):
            rows.append({"dtype": str(dtype)[6:], "book": book, "answer": qf.generate(system, QUESTION),
                         "logp_answer": round(qf.answer_logprob(system, QUESTION, answer), 3),
                         "first_tokens": first_tokens(model, tokenizer, system)})
    model.to(F32)
    return rows


def edit_variant(model, tokenizer, answer: str, W0: torch.Tensor, recorded: torch.dtype, stored: torch.dtype,
                 answered: torch.dtype) -> dict:
    """Record the rows in `recorded`, solve (float64) from W0 into a W' kept in `stored`, answer in `answered`."""
    model.to(recorded)
    locate(model, LAYER).down.weight.data.copy_(W0)
    tfs = [prompting.teacher_forced(tokenizer, system, QUESTION, answer).nonzero() for system in (FACT, "")]
    (u, v), (up, vp) = ((r.u[t.kept], r.v[t.kept])
                        for r, t in zip(record(model, locate(model, LAYER), [t.input_ids for t in tfs]), tfs))
    W = W0.to(stored).clone()
    _, report = solve(W, u, up, v, vp, apply=True)
    model.to(answered)
    mlp = locate(model, LAYER).mlp
    original = mlp.down_proj
    if stored != answered:
        mlp.down_proj = Float32Down(W)
    else:
        original.weight.data.copy_(W)
    try:
        qf = QF(model, tokenizer, layer=LAYER, folder=None, max_new_tokens=24)
        out = {"recorded": str(recorded)[6:], "w_prime_stored": str(stored)[6:], "answered": str(answered)[6:],
               "rows": report.rows, "residual": report.residual, "residual_applied": report.residual_applied,
               "answer": qf.generate("", QUESTION), "logp_answer": round(qf.answer_logprob("", QUESTION, answer), 3),
               "first_tokens": first_tokens(model, tokenizer, "")}
    finally:
        mlp.down_proj = original
        original.weight.data = W0.to(answered).clone()
    out["holds_the_fact"] = "Pelmora" in out["answer"]
    return out


def render(result: dict) -> str:
    lines = ["# bfloat16 on the CPU: why SmolLM2's learned fact does not show", "",
             f"Written by `benchmarks/probes/bf16_precision.py` (commit {result['commit']}, torch {result['torch']}). "
             f"SmolLM2-135M-Instruct, layer {LAYER}, fact: {FACT!r}, question: {QUESTION!r}; the edit teaches the "
             f"float32 open-book answer {result['taught_answer']!r}.", "",
             "## The model itself (no edit)", "",
             "| dtype | book | greedy answer | log p(taught answer) | top first tokens (log p) |", "|---|---|---|---|---|"]
    for r in result["model"]:
        tokens = ", ".join(f"{t!r} {p}" for t, p in r["first_tokens"])
        lines.append(f"| {r['dtype']} | {r['book']} | {r['answer']} | {r['logp_answer']} | {tokens} |")
    lines += ["", "## The edit, one precision choice at a time", "",
              "| rows recorded in | W' stored in | model answers in | residual (W' as stored) | closed-book answer "
              "| holds the fact | log p(taught answer) | top first tokens (log p) |", "|---|---|---|---|---|---|---|---|"]
    for r in result["variants"]:
        tokens = ", ".join(f"{t!r} {p}" for t, p in r["first_tokens"])
        lines.append(f"| {r['recorded']} | {r['w_prime_stored']} | {r['answered']} | {r['residual_applied']:.1e} | "
                     f"{r['answer']} | {'yes' if r['holds_the_fact'] else 'no'} | {r['logp_answer']} | {tokens} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/qf")
    args = parser.parse_args(argv)
    loaded = load_model("smollm2", "cpu", F32, progress=False)
    model, tokenizer = loaded.model, loaded.tokenizer
    W0 = locate(model, LAYER).down.weight.detach().clone()  # bf16-exact: the cache holds bf16 weights
    answer = QF(model, tokenizer, layer=LAYER, folder=None, max_new_tokens=24).generate(FACT, QUESTION)
    result = {"commit": git_commit(), "torch": torch.__version__, "taught_answer": answer,
              "model": the_model_itself(model, tokenizer, answer), "variants": []}
    for recorded, stored, answered in [(F32, F32, F32), (BF16, BF16, BF16), (BF16, F32, BF16), (F32, F32, BF16),
                                       (F32, BF16, BF16), (BF16, F32, F32), (F32, BF16, F32)]:
        result["variants"].append(edit_variant(model, tokenizer, answer, W0, recorded, stored, answered))
        print(json.dumps(result["variants"][-1]), flush=True)
    out = Path(args.out)
    (out / "bf16_precision.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "bf16_precision.md").write_text(render(result))
    print(f"wrote {out / 'bf16_precision.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
