"""Why does a ROME-style edit answer its own question and not the paraphrases? Key or target.

    python benchmarks/probes/paraphrase_transfer.py [--n 10] [--layer 8] [--steps 60] [--out results/bench]
        [--positions subject-copies] [--wordings N] [--name paraphrase_transfer-NAME]

For each fact, on the unedited model, the editor fits the subject-last target (ROME's v* = h + delta at
layer L, `--target optimized --positions subject-last`) and solves the weight edit in the generic+facts key
metric, as the `variant-L8-rome-60` bench run does. The question and its paraphrases are then answered
(greedy) three ways:

- added, question row: no weight edit; delta is added to layer L's output at the subject's last row of
  the prompt only. This asks whether the target itself carries the fact to other wordings.
- added, every row: the same at every occurrence of the subject's last token, the answer's own copy of the
  subject included ("Steitum Motors was founded by ..."), which is where a weight edit also acts.
- weight edit: the solved down_proj.

and, for the weight edit, the share of delta that the edited weight delivers at each subject-last key,
(dW k') . delta / |delta|^2 (1 at the key it was solved for). If the added delta answers a paraphrase and the
weight edit does not, the paraphrase's key is missed (a key problem); if the added delta does not answer it
either, the target does not transfer (a target problem). `--positions subject-copies` and `--wordings N` probe
the editor's remedies (the delta fitted at the answer's copies of the subject too; on N rewordings of the
question by the model); a paraphrase that is word for word one of those rewordings is marked and counted apart.
Writes results/bench/NAME.md and .json (NAME: paraphrase_transfer unless --name).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from probe_setup import load, probe_parser, rome_editor
from transformers_qf.core import prompting
from transformers_qf.bench.answering import _forced_target
from transformers_qf.bench.metrics import gives
from transformers_qf.core.capture import record
from transformers_qf.editing.editor import Editor
from transformers_qf.core.report import git_commit

MODES = ("added-question-row", "added-every-row", "weight-edit")


class SubjectDelta:
    """Adds `delta` to one decoder layer's output at chosen rows of the current forward (a hook)."""

    def __init__(self, model, layer: int, delta: torch.Tensor):
        self.delta = delta
        self.rows: list[int] = []
        self.handle = model.model.layers[layer].register_forward_hook(self._add)

    def _add(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if self.rows:
            hidden[0, self.rows] += self.delta.to(hidden.dtype)
        return output

    def remove(self) -> None:
        self.handle.remove()


def copies(tokenizer, ids, subject: str) -> list[int]:
    """Every position where a copy of the subject ends (prompt and answer)."""
    return prompting.subject_copies(tokenizer, ids, subject).tolist()


@torch.no_grad()
def greedy(model, tokenizer, prompt_ids: list[int], adder: SubjectDelta | None, rows_of, max_new: int = 24) -> str:
    """Greedy answer with the KV cache; before each forward, adder.rows = rows_of(ids so far) within the chunk."""
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids, chunk, past, out = list(prompt_ids), list(prompt_ids), None, []
    for _ in range(max_new):
        start = len(ids) - len(chunk)
        if adder is not None:
            adder.rows = [p - start for p in rows_of(ids) if p >= start]
        result = model(input_ids=torch.tensor([chunk]), past_key_values=past, use_cache=True)
        past = result.past_key_values
        token = int(result.logits[0, -1].argmax())
        if token == end_id:
            break
        ids.append(token)
        out.append(token)
        chunk = [token]
    return tokenizer.decode(out, skip_special_tokens=True).strip()


@torch.no_grad()
def target_logp(model, tokenizer, user: str, answer: str, target: str, adder: SubjectDelta | None, rows_of) -> float:
    ids, positions = _forced_target(tokenizer, "", user, answer, target)
    if adder is not None:
        adder.rows = rows_of(ids)
    logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
    logp = torch.log_softmax(logits[[p - 1 for p in positions]], dim=-1)
    return float(logp[torch.arange(len(positions)), torch.tensor([ids[p] for p in positions])].sum())


def delivered(parts, W0: torch.Tensor, model, ids: list[int], rows: list[int], delta: torch.Tensor) -> list[float]:
    """(dW k) . delta / |delta|^2 at each row (k: the down_proj input there)."""
    u = record(model, parts, [torch.tensor(ids)])[0].u[rows].to(torch.float64)
    response = u @ (parts.down.weight.detach().to(torch.float64) - W0).T
    return (response @ delta / (delta @ delta)).tolist()


def probe_fact(lm, editor: Editor, fact, layer: int, paraphrases: int) -> dict:
    model, tokenizer = lm.model, lm.tokenizer
    parts = editor.parts[0]
    W0 = parts.down.weight.detach().to(torch.float64).clone()
    report = editor.learn(fact.system, fact.user, fact.answer, None, fact.subject, fact.target)
    delta = editor.last_target_delta[0]
    edited = parts.down.weight.detach().clone()
    questions = [fact.user] + list(fact.paraphrases[:paraphrases])
    fitted_on = {q.strip().lower() for q in editor.last_rewordings} if editor.config.target_wordings else set()
    row = {"subject": fact.subject, "target": fact.target, "final_loss": editor.last_target_losses[-1],
           "delta_rel": report.delta_rel, "rewordings": sorted(fitted_on), "questions": []}
    for q in questions:
        prompt = prompting.generation_prompt("", q)
        prompt_ids = prompting.encode(tokenizer, prompt)
        question_row = [int(prompting.subject_positions(tokenizer, prompt, q, fact.subject)[-1])]
        case = {"question": q, "fitted_on": q.strip().lower() in fitted_on}
        ways = {"added-question-row": lambda ids, r=question_row: r,
                "added-every-row": lambda ids: copies(tokenizer, ids, fact.subject)}
        parts.down.weight.data.copy_(W0.to(edited.dtype))
        for mode, rows_of in ways.items():
            adder = SubjectDelta(model, layer, delta)
            try:
                case[mode] = {"answer": greedy(model, tokenizer, prompt_ids, adder, rows_of),
                              "logp": target_logp(model, tokenizer, q, fact.answer, fact.target, adder, rows_of)}
            finally:
                adder.remove()
        case["unedited_logp"] = target_logp(model, tokenizer, q, fact.answer, fact.target, None, None)
        parts.down.weight.data.copy_(edited)
        answer = greedy(model, tokenizer, prompt_ids, None, None)
        case["weight-edit"] = {"answer": answer,
                               "logp": target_logp(model, tokenizer, q, fact.answer, fact.target, None, None)}
        forced_ids, _ = _forced_target(tokenizer, "", q, fact.answer, fact.target)
        rows = copies(tokenizer, forced_ids, fact.subject)
        case["delivered"] = dict(zip(("question", "answer"), delivered(parts, W0, model, forced_ids, rows, delta)))
        for mode in MODES:
            case[mode]["gives"] = gives(case[mode]["answer"], fact.target)
        row["questions"].append(case)
    editor.reset()
    return row


def summarize(rows: list[dict]) -> dict:
    out = {}
    for kind, pick in (("question", lambda r: r["questions"][:1]), ("paraphrase", lambda r: r["questions"][1:]),
                       ("paraphrase, unseen", lambda r: [c for c in r["questions"][1:] if not c["fitted_on"]])):
        cases = [c for r in rows for c in pick(r)]
        out[kind] = {"n": len(cases), "unedited_logp": sum(c["unedited_logp"] for c in cases) / len(cases)}
        for mode in MODES:
            out[kind][mode] = {"gives": sum(c[mode]["gives"] for c in cases) / len(cases),
                               "logp": sum(c[mode]["logp"] for c in cases) / len(cases)}
        for where in ("question", "answer"):
            values = [c["delivered"][where] for c in cases if where in c["delivered"]]
            out[kind][f"delivered_{where}"] = sum(values) / len(values) if values else None
    paraphrases = [c for r in rows for c in r["questions"][1:]]
    out["paraphrase_cases"] = {
        "added answers, weight edit does not": sum(c["added-every-row"]["gives"] and not c["weight-edit"]["gives"]
                                                    for c in paraphrases),
        "weight edit answers, added does not": sum(c["weight-edit"]["gives"] and not c["added-every-row"]["gives"]
                                                    for c in paraphrases),
        "neither": sum(not c["weight-edit"]["gives"] and not c["added-every-row"]["gives"] for c in paraphrases),
        "both": sum(c["weight-edit"]["gives"] and c["added-every-row"]["gives"] for c in paraphrases),
    }
    return out


def render(result: dict) -> str:
    s = result["summary"]
    lines = [
        "# Paraphrase transfer of a subject-last edit: key or target?",
        "",
        f"Written by `{result['command']}` at commit {result['commit']}, model {result['model']}, "
        f"{result['n_facts']} facts, layer {result['layer']}, {result['positions']}, {result['steps']} target steps"
        f"{', up to %d rewordings' % result['wordings'] if result['wordings'] else ''}; {result['seconds']:.0f} s.",
        "",
        "Share of questions answered with the target (greedy), and mean log p of the target's tokens "
        "(teacher-forced answer):",
        "",
        "| questions | n | unedited log p | added at the question row | added at every subject row | weight edit |",
        "|---|---|---|---|---|---|",
    ]
    kinds = ("question", "paraphrase", "paraphrase, unseen") if result["wordings"] else ("question", "paraphrase")
    for kind in kinds:
        k = s[kind]
        cells = [f"{k[m]['gives']:.2f} ({k[m]['logp']:.1f})" for m in MODES]
        lines.append(f"| {kind} | {k['n']} | {k['unedited_logp']:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "Share of delta that the weight edit delivers at the subject's last row, (dW k') . delta / |delta|^2:",
              "", "| questions | question row | the answer's copy of the subject |", "|---|---|---|"]
    for kind in kinds:
        k = s[kind]
        cells = [f"{k[f'delivered_{w}']:.2f}" if k[f"delivered_{w}"] is not None else "" for w in ("question", "answer")]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += ["", "Paraphrases, added delta (every row) against the weight edit:", ""]
    lines += [f"- {name}: {count}" for name, count in s["paraphrase_cases"].items()]
    lines += ["", "## Answers", "", "| question | target | added (question row) | added (every row) | weight edit | delivered |",
              "|---|---|---|---|---|---|"]
    for r in result["facts"]:
        for c in r["questions"]:
            cells = [c[m]["answer"].replace("|", "/") for m in MODES]
            mark = " (fitted on)" if c["fitted_on"] else ""
            lines.append(f"| {c['question']}{mark} | {r['target']} | " + " | ".join(cells)
                         + f" | {c['delivered'].get('question', float('nan')):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = probe_parser(__doc__, n=10)
    parser.add_argument("--paraphrases", type=int, default=3)
    parser.add_argument("--positions", choices=("subject-last", "subject-copies"), default="subject-last")
    parser.add_argument("--wordings", type=int, default=0)
    parser.add_argument("--name", default="paraphrase_transfer")
    args = parser.parse_args(argv)
    data, lm = load(args)
    editor = rome_editor(lm, data, args, positions=args.positions, target_wordings=args.wordings)
    t0 = time.perf_counter()
    rows = []
    for i, fact in enumerate(data.facts[:args.n]):
        rows.append(probe_fact(lm, editor, fact, args.layer, args.paraphrases))
        print(f"{i + 1}/{args.n} {fact.subject}: " + "; ".join(
            f"{c['weight-edit']['gives']:d}{c['added-every-row']['gives']:d}" for c in rows[-1]["questions"]),
            file=sys.stderr, flush=True)
    result = {"command": "python benchmarks/probes/paraphrase_transfer.py " + " ".join(argv or sys.argv[1:]),
              "commit": git_commit(), "model": lm.name, "n_facts": len(rows), "layer": args.layer,
              "steps": args.steps, "positions": args.positions, "wordings": args.wordings, "seconds": time.perf_counter() - t0, "summary": summarize(rows), "facts": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{args.name}.md").write_text(render(result))
    print(render(result).split("## Answers")[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
