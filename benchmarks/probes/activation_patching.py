"""Where does the open-book pass hold the fact? Activation patching, open book into closed book.

    python benchmarks/probes/activation_patching.py [--n 10] [--layers 4,8,12,16,20,23] [--out results/qf]

For each fact, the closed-book pass (no fact in the system turn) is run again with the residual stream
after layer L replaced, at one set of positions, by the open-book pass's residual at the same tokens.
The score is log p of the target's tokens in the teacher-forced answer. If a set of positions at some
layer carries the fact, patching it lifts the closed-book log p to the open-book one; that is the most
any edit can get from open-book targets at those rows (the residual there is all that later layers see).

Position sets, in the closed-book sequence (the open-book one is the same tokens, shifted by the fact):
subject (the subject's tokens in the question), subject-last, user (the whole user turn), answer (every
row of the teacher-forced answer turn), shared (user turn and answer turn).
Writes results/qf/activation_patching.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from transformers_qf import load_model
from transformers_qf.core import prompting
from transformers_qf.bench.data import read_facts
from transformers_qf.core.report import git_commit

SETS = ("subject", "subject-last", "user", "answer", "shared")


def target_rows(tf: prompting.TeacherForced) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows that predict the target's tokens (weight > 0, not the answer header's two rows or the closing)."""
    inner = slice(2, len(tf.kept) - 1)
    chosen = tf.weights[inner] > 0
    return tf.kept[inner][chosen], tf.targets[inner][chosen]


def position_sets(tokenizer, user: str, subject: str, first_answer_row: int, length: int) -> dict[str, torch.Tensor]:
    prompt = prompting.chatml_prompt("", user)
    subject_rows = prompting.subject_positions(tokenizer, prompt, user, subject)
    user_start = prompting.user_turn_start(tokenizer, prompt)
    return {"subject": subject_rows, "subject-last": subject_rows[-1:],
            "user": torch.arange(user_start, first_answer_row), "answer": torch.arange(first_answer_row, length),
            "shared": torch.arange(user_start, length)}


class Patcher:
    """Runs the model, recording or overwriting the output of decoder layers (hooks; the model is unchanged).

    Layer outputs are taken by hooks, not from `output_hidden_states`: transformers applies the final norm to
    the last entry of those."""

    def __init__(self, model):
        self.model = model
        self.layers = model.model.layers

    @staticmethod
    def _hidden(output):
        return output[0] if isinstance(output, tuple) else output

    @torch.no_grad()
    def run(self, ids: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor, record: list[int] = (),
            patch: tuple[int, torch.Tensor, torch.Tensor] | None = None) -> tuple[float, dict[int, torch.Tensor]]:
        """Summed log p of `targets` at `rows`, and the outputs of the `record` layers ([n, d_model] each).
        patch = (layer, positions, values): that layer's output at those positions is replaced by values."""
        recorded: dict[int, torch.Tensor] = {}
        handles = []

        def keep(layer):
            return lambda module, args, output: recorded.__setitem__(layer, self._hidden(output)[0].clone())

        def overwrite(module, args, output):
            layer, positions, values = patch
            self._hidden(output)[0, positions] = values.to(self._hidden(output).dtype)
            return output

        handles += [self.layers[layer].register_forward_hook(keep(layer)) for layer in record]
        if patch is not None:
            handles.append(self.layers[patch[0]].register_forward_hook(overwrite))
        try:
            logits = self.model(input_ids=ids[None], use_cache=False).logits[0, rows].float()
        finally:
            for handle in handles:
                handle.remove()
        logp = torch.log_softmax(logits, dim=-1)
        return float(logp[torch.arange(len(rows)), targets].sum()), recorded


def patch_fact(patcher: Patcher, tokenizer, fact, layers: list[int]) -> dict:
    chosen = set(prompting.target_words(fact.answer, fact.target))
    significance = [float(i in chosen) for i in range(len(fact.answer.split()))]
    open_tf, closed_tf = prompting.teacher_forced_many(tokenizer, [fact.system, ""], fact.user, fact.answer,
                                                       significance)
    shift = len(open_tf.input_ids) - len(closed_tf.input_ids)
    open_rows, targets = target_rows(open_tf)
    closed_rows = open_rows - shift
    open_logp, open_outputs = patcher.run(open_tf.input_ids, open_rows, targets, record=layers)
    closed_logp, _ = patcher.run(closed_tf.input_ids, closed_rows, targets)
    sets = position_sets(tokenizer, fact.user, fact.subject, int(closed_tf.kept[0]), len(closed_tf.input_ids))
    row = {"subject": fact.subject, "target": fact.target, "open": open_logp, "closed": closed_logp}
    for layer in layers:
        for name, positions in sets.items():
            patch = (layer, positions, open_outputs[layer][positions + shift])
            row[f"L{layer}/{name}"], _ = patcher.run(closed_tf.input_ids, closed_rows, targets, patch=patch)
    return row


def summarize(rows: list[dict], layers: list[int]) -> dict:
    mean = {key: sum(r[key] for r in rows) / len(rows) for key in rows[0] if key not in ("subject", "target")}
    gap = mean["open"] - mean["closed"]
    recovered = {f"L{layer}/{name}": (mean[f"L{layer}/{name}"] - mean["closed"]) / gap
                 for layer in layers for name in SETS}
    return {"mean_logp": mean, "recovered": recovered}


def render(result: dict) -> str:
    layers, mean, recovered = result["layers"], result["summary"]["mean_logp"], result["summary"]["recovered"]
    lines = [
        "# Activation patching: where the open-book pass holds the fact",
        "",
        f"Written by `{result['command']}` at {result['commit']}: model {result['model']} ({result['dtype']}), "
        f"the first {len(result['facts'])} facts of `{result['facts_file']}`.",
        "",
        f"Mean log p of the target's tokens (teacher-forced): open book {mean['open']:.2f}, "
        f"closed book {mean['closed']:.2f}.",
        "Each cell: the closed-book pass with layer L's output replaced by the open-book one at those positions; "
        "the fraction of the open/closed gap it recovers (1 = open book, 0 = closed book), then the mean log p.",
        "",
        "| layer | " + " | ".join(SETS) + " |",
        "|---|" + "---|" * len(SETS),
    ]
    for layer in layers:
        cells = [f"{recovered[f'L{layer}/{s}']:+.2f} ({mean[f'L{layer}/{s}']:.1f})" for s in SETS]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines += ["", "Per fact (log p): open, closed, and each patch are in activation_patching.json.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", default="benchmarks/facts/facts_100.jsonl")
    parser.add_argument("--n", type=int, default=10, help="how many of the file's facts (the first N)")
    parser.add_argument("--layers", default="4,8,12,16,20,23")
    parser.add_argument("--model", default=None, help="model spec (default: the bundled model)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--out", default="results/qf")
    args = parser.parse_args(argv)
    layers = [int(x) for x in args.layers.split(",")]
    facts = [f for f in read_facts(args.facts).facts if f.subject][: args.n]
    if not facts:
        sys.exit(f"error: {args.facts} has no fact with a \"subject\"; patching needs the subject's tokens")
    lm = load_model(args.model, dtype=args.dtype, progress=False)
    patcher = Patcher(lm.model)
    rows = []
    for fact in facts:
        rows.append(patch_fact(patcher, lm.tokenizer, fact, layers))
        print(f"{fact.subject}: open {rows[-1]['open']:.1f}, closed {rows[-1]['closed']:.1f}", flush=True)
    result = {"command": "python benchmarks/probes/activation_patching.py " + " ".join(argv or sys.argv[1:]),
              "commit": git_commit(), "model": lm.name, "dtype": args.dtype, "facts_file": args.facts,
              "layers": layers, "facts": rows, "summary": summarize(rows, layers)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "activation_patching.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "activation_patching.md").write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
