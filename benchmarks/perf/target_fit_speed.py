"""How long the optimised target's fit takes with its contexts in one padded batch, and one by one.

    python benchmarks/perf/target_fit_speed.py [--n 2] [--steps 10] [--contexts 2] [--layer 8] [--out results/perf]

The layer-8 edit of the `variant-L8-rome-60-copies-ctx2` bench run (subject-copies, the question and
--contexts openings before it) is made for each of the first N facts from the model as loaded, twice: the
fit's forwards batched (the package's way) and one context at a time (`optimized_deltas(batched=False)`).
Reports the fit's seconds per step and the edit's seconds each way, and the answer's loss at the last step
(the two ways fit the same deltas up to rounding). Writes results/perf/target_fit_speed.md and .json.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "probes"))  # the probes' shared model and editor setup
from probe_setup import load, probe_parser, rome_editor
from transformers_qf.editing import editor as editor_module
from transformers_qf.core.report import git_commit, write_json


def timed_fit(fit, seconds: list[float], batched: bool):
    """`fit` (gradtarget.optimized_deltas), timed, with the contexts batched or not."""

    @functools.wraps(fit)
    def run(*args, **kwargs):
        t0 = time.perf_counter()
        out = fit(*args, **kwargs, batched=batched)
        seconds.append(time.perf_counter() - t0)
        return out

    return run


def main(argv=None) -> int:
    parser = probe_parser(__doc__, n=2, out="results/perf")
    parser.set_defaults(steps=10)
    parser.add_argument("--contexts", type=int, default=2, help="openings before the question (extra contexts)")
    args = parser.parse_args(argv)
    data, lm = load(args)
    editor = rome_editor(lm, data, args, positions="subject-copies", target_contexts=args.contexts)
    rows, original = [], editor_module.optimized_deltas
    for i, fact in enumerate(data.facts[:args.n]):
        for batched in (True, False):
            fits: list[float] = []
            editor_module.optimized_deltas = timed_fit(original, fits, batched)
            try:
                report = editor.learn(fact.system, fact.user, fact.answer, fact.significance, fact.subject,
                                      fact.target)
            finally:
                editor_module.optimized_deltas = original
            editor.reset()
            rows.append({"fact": i, "batched": batched, "fit_seconds": fits[0],
                         "fit_seconds_per_step": fits[0] / args.steps, "edit_seconds": report.seconds, "target_loss": editor.last_target_losses[-1]})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    mean = {b: sum(r["fit_seconds"] for r in rows if r["batched"] == b) / args.n for b in (True, False)}
    result = {"command": " ".join(["python benchmarks/perf/target_fit_speed.py", *(argv or sys.argv[1:])]),
              "commit": git_commit(), "model": lm.name, "dtype": args.dtype, "threads": torch.get_num_threads(),
              "layer": args.layer, "steps": args.steps, "contexts": 1 + args.contexts, "rows": rows,
              "fit_seconds_batched": mean[True], "fit_seconds_one_by_one": mean[False],
              "speedup": mean[False] / mean[True]}
    out = Path(args.out)
    write_json(out / "target_fit_speed.json", result)
    lines = [f"# The optimised target's fit: {1 + args.contexts} contexts batched or one by one", "",
             f"Written by `{result['command']}` at commit {result['commit']}, model {lm.name} ({args.dtype}), "
             f"{result['threads']} CPU threads, layer {args.layer}, {args.steps} steps.", "",
             "| fact | contexts | fit s | s / step | edit s | last-step loss |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['fact']} | {'batched' if r['batched'] else 'one by one'} | {r['fit_seconds']:.1f} | "
              f"{r['fit_seconds_per_step']:.2f} | {r['edit_seconds']:.1f} | {r['target_loss']:.3f} |" for r in rows]
    lines += ["", f"Mean fit: {mean[True]:.1f} s batched, {mean[False]:.1f} s one by one "
              f"({result['speedup']:.2f}x)."]
    (out / "target_fit_speed.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out / 'target_fit_speed.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
