"""How far does a weight edit move the rows its target was fitted with but that it does not constrain?

    python benchmarks/probes/context_drift.py [--n 4] [--layer 8] [--steps 60] [--out results/bench]

The layer-8 edit of `sequential50-qf-L8-rome-60-copies` (subject-copies, optimised target, generic+facts key
metric) is applied to the first N facts in turn, twice: as it is, and with `--keep-context` (every other row
of the fitted sequences held at its output). After each edit, the editor's drift watch (drift.py) gives
|W' u + v - y| / |y| at the unconstrained rows, the user turn and the answer: those of the fact just edited
(drift_own) and those of every earlier fact, as they were when that fact was fitted (mean and max). Also the
edit's ||W' - W0|| / ||W0||, its rows and the largest residual at a constrained row. Writes
results/bench/context_drift.md and .json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from probe_setup import load, probe_parser, rome_editor
from transformers_qf.core.report import git_commit

FIELDS = ("rows", "held_rows", "residual", "delta_rel", "drift_own", "drift_earlier", "drift_earlier_max")


def edits(editor, facts) -> list[dict]:
    """Each fact in turn; the editor's report of each solve. The editor is reset afterwards."""
    out = []
    for i, fact in enumerate(facts):
        report = editor.learn(fact.system, fact.user, fact.answer, fact.significance, fact.subject, fact.target)
        solve = report.layers[0]
        out.append({"edit": i + 1, "seconds": report.seconds, **{k: solve.get(k) for k in FIELDS}})
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    editor.reset()
    return out


def render(result: dict) -> str:
    lines = [f"# Drift of the unconstrained rows under the layer-{result['layer']} edit", "",
             f"`{result['command']}` at {result['commit']}, {result['model']}, {result['n_facts']} facts in turn, "
             f"{result['steps']} target steps, subject-copies, generic+facts key metric. Drift: |W' u + v - y| / |y| "
             "of layer L's output at the rows of the user turn and the answer that the edit does not constrain, "
             "against their output when their fact was fitted.", ""]
    for name, rows in result["runs"].items():
        lines += [f"## {name}", "", "| edit | rows | held | residual | ‖ΔW‖/‖W‖ | drift, this fact | drift, earlier "
                  "facts (mean) | (max) | s |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            cells = [r["edit"], r["rows"], r["held_rows"] if r["held_rows"] is not None else "–",
                     f"{r['residual']:.0e}", f"{r['delta_rel']:.3f}", _pct(r["drift_own"]), _pct(r["drift_earlier"]),
                     _pct(r["drift_earlier_max"]), f"{r['seconds']:.0f}"]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
        lines.append("")
    return "\n".join(lines)


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f} %"


def main(argv=None) -> int:
    args = probe_parser(__doc__, n=4).parse_args(argv)
    data, lm = load(args)
    t0 = time.perf_counter()
    runs = {}
    for keep in (False, True):
        editor = rome_editor(lm, data, args, positions="subject-copies", keep_context=keep)
        runs["other rows held (--keep-context)" if keep else "as fitted"] = edits(editor, data.facts[:args.n])
    result = {"command": "python benchmarks/probes/context_drift.py " + " ".join(argv or sys.argv[1:]),
              "commit": git_commit(), "model": lm.name, "n_facts": args.n, "layer": args.layer, "steps": args.steps,
              "seconds": time.perf_counter() - t0, "runs": runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "context_drift.json").write_text(json.dumps(result, indent=1))
    (out / "context_drift.md").write_text(render(result))
    print(f"wrote {out / 'context_drift.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
