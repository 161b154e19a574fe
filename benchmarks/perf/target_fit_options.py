"""How fast the intact editor's gradient target is fitted, by optimiser, learning rate and stop.

    python benchmarks/perf/target_fit_options.py [--n 3] [--variants adam:0.1:60:0,adam:0.5:60:0.05,lbfgs:1:30:0.05]

For each of the first N facts of benchmarks/facts/facts_100.jsonl, the intact configuration's editor (layers
4-8, the target fitted at layer 8 on the question, its copies of the subject and up to 5 rewordings) is run up
to its fit, from the model as loaded (no edit is made): the fit's inputs are recorded once and each variant
METHOD:LR:STEPS:STOP[:DECAY] fits them again (`targets.optimized_deltas`). Reports, per variant, the fit's evaluations
(a forward and a backward each) and seconds until its answer loss (mean NLL a token) is below the stop (or the
last), that loss, and |delta| / |h| at the subject's row. Writes results/perf/target_fit_options.md and .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from transformers_qf.bench.cli import key_metrics, load
from transformers_qf.bench.data import read_facts
from transformers_qf.core.report import git_commit
from transformers_qf.editing import editor as editor_module
from transformers_qf.editing.editor import EditConfig, Editor

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # perf_report beside it
from perf_report import write_report  # noqa: E402
INTACT = EditConfig(layers=(4, 5, 6, 7, 8), positions="subject-copies", covariance=True, cov_corpus="generic+facts",
                    target="optimized", target_steps=60, target_wordings=5, keep_context=True)


class _Captured(Exception):
    pass


def fit_inputs(editor: Editor, fact) -> tuple[tuple, dict]:
    """The arguments the editor's fit is called with for this fact (the fit itself is not run)."""
    seen = {}
    original = editor_module.optimized_deltas

    def capture(*args, **kwargs):
        seen["call"] = (args, kwargs)
        raise _Captured

    editor_module.optimized_deltas = capture
    try:
        editor.learn(fact.system, fact.user, fact.answer, fact.significance, fact.subject, fact.target)
    except _Captured:
        pass
    finally:
        editor_module.optimized_deltas = original
    editor.reset()
    return seen["call"]


def _earlier(out: Path, rerun: set[str], n: int) -> list[dict]:
    """The rows of an earlier report (same facts) whose variants this run did not fit again, with their command."""
    path = out / "target_fit_options.json"
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text(encoding="utf-8"))
    return [{**r, "command": r.get("command", earlier["command"]), "commit": r.get("commit", earlier["commit"])}
            for r in earlier["rows"] if r["variant"] not in rerun and r["fact"] < n]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--variants", default="adam:0.1:60:0,adam:0.5:60:0.05,lbfgs:1:30:0.05")
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--out", default="results/perf")
    args = parser.parse_args(argv)
    data = read_facts(ROOT / "benchmarks/facts/facts_100.jsonl")
    lm = load(args.model, "cpu", args.dtype)
    metrics = key_metrics(lm, INTACT, 256, [c.user for c in data.controls])
    editor = Editor(lm.model, lm.tokenizer, INTACT, metrics)
    variants = [v.split(":") for v in args.variants.split(",")]
    rows = []
    for i, fact in enumerate(data.facts[:args.n]):
        (model, layer, contexts, steps, lr, decay), kwargs = fit_inputs(editor, fact)
        scale = float(torch.linalg.norm(contexts[0].hidden[contexts[0].positions[0]].float()))
        for method, v_lr, v_steps, v_stop, *rest in variants:
            v_decay = float(rest[0]) if rest else decay
            t0 = time.perf_counter()
            delta, losses = editor_module.optimized_deltas(model, layer, contexts, int(v_steps), float(v_lr), v_decay,
                                                           essence=kwargs.get("essence"), stop=float(v_stop),
                                                           method=method)
            seconds = time.perf_counter() - t0
            below = next((j + 1 for j, x in enumerate(losses) if float(v_stop) and x < float(v_stop)), len(losses))
            rows.append({"fact": i, "contexts": len(contexts), "variant": f"{method}:{v_lr}:{v_steps}:{v_stop}:{v_decay:g}",
                         "evaluations": len(losses), "to_stop": below, "seconds": seconds,
                         "seconds_per_evaluation": seconds / len(losses), "loss_last": losses[-1],
                         "loss_min": min(losses), "delta_ratio": float(torch.linalg.norm(delta[0])) / scale,
                         "losses": [round(x, 4) for x in losses]})
            print(f"fact {i}: {rows[-1]['variant']} {len(losses)} evaluations, {seconds:.1f} s, loss {losses[-1]:.3f}, "
                  f"|delta|/|h| {rows[-1]['delta_ratio']:.2f}", file=sys.stderr, flush=True)
    command = "python benchmarks/perf/target_fit_options.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = ROOT / args.out
    rows = [*_earlier(out, {r["variant"] for r in rows}, args.n), *rows]
    out.mkdir(parents=True, exist_ok=True)
    data_out = {"commit": git_commit(), "command": command.strip(), "threads": torch.get_num_threads(),
                "dtype": args.dtype, "rows": rows}
    lines = ["# The intact editor's target fit, by optimiser", "",
             f"Written by `{data_out['command']}` at commit {data_out['commit']}, CPU, {data_out['threads']} threads, "
             f"{args.dtype}. The first {args.n} facts of benchmarks/facts/facts_100.jsonl, each from the model as "
             "loaded; variant = method:lr:most evaluations:stop:decay (loss = the answer's mean NLL a token; an evaluation "
             "is one forward and backward of layers 9-27 over every context).", "",
             "| variant | evaluations (mean) | seconds (mean) | s / evaluation | last loss (max) | |delta|/|h| (mean) |",
             "|---|---|---|---|---|---|"]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        lines.append(f"| {variant} | {statistics.fmean(r['evaluations'] for r in mine):.1f} | "
                     f"{statistics.fmean(r['seconds'] for r in mine):.1f} | "
                     f"{statistics.fmean(r['seconds_per_evaluation'] for r in mine):.2f} | "
                     f"{max(r['loss_last'] for r in mine):.3f} | {statistics.fmean(r['delta_ratio'] for r in mine):.2f} |")
    earlier = sorted({f"`{r['command']}` (commit {r['commit']}): {r['variant']}" for r in rows if "command" in r})
    if earlier:
        lines += ["", "Rows kept from earlier runs of this script:", *[f"- {e}" for e in earlier]]
    write_report(out, "target_fit_options", data_out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
