"""DIR/summary.json from DIR/cases.jsonl: the run's fractions and costs.

efficacy: questions answered with the target after the (last) edit; paraphrase: the same for the
paraphrased questions (paraphrase_unseen: only those that are not, word for word, one of the rewordings an
edit was fitted on, with --target-wordings); specificity: controls the unedited model answered right that are still answered
right, still give their own target and name no edited fact's value (split into controls about the facts'
relations and the rest; specificity_target_only: the earlier score, own target only); leak: control answers
that name an edited fact's value (a value that is the control's own target, that its question names, or that
the unedited model's answer to it named already, is not counted); control_changed: control answers that differ from the unedited model's; fluency: mean n-gram entropy of free answers to open prompts. Fractions are in
0..1. In the sequential protocol "final" scores come after the last edit, "immediate" right after each.

A run writes its summary when it finishes; for one that is still going, or was stopped, write it from the
checkpoints it has scored so far ("complete": false, the final scores empty):

    python -m transformers_qf.bench.summary runs/benchmark/NAME [...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformers_qf.bench.data import FactsFile, FactsFileError, read_facts
from transformers_qf.bench.metrics import changed, fraction, kept, leaked_values, mean
from transformers_qf.bench.run import Cases
from transformers_qf.core.report import write_json


def summarize(cases: Cases, data: FactsFile, header: dict) -> dict:
    rows = cases.rows
    n = len(data.facts)
    protocol = header["options"]["protocol"]
    before = {r["control"]: r for r in cases.with_prefix("before/control/")}
    answered_before = {j for j, r in before.items() if r["gives"]}
    edits = [rows[f"edit/{i}"] for i in range(n) if f"edit/{i}" in rows]
    if protocol == "single":
        after = cases.with_prefix("after/")
        questions = [r for r in after if r.get("kind") == "question"]
        paraphrases = [r for r in after if r.get("kind") == "paraphrase"]
        controls = [r for r in after if r.get("kind") == "control"]

        def values_of(row: dict) -> list[str]:  # a single edit: only its own fact was edited
            return [data.facts[int(row["key"].split("/")[1])].target]

        fluency_after = mean(mean(r["entropy"]) for r in after if r["key"].endswith("/fluency"))
        logprob_after = mean(r["logprob"][0] for r in after if r["key"].endswith("/logprob"))
        delta_rel = mean(e.get("delta_rel") for e in edits)
        extra = {}
    else:
        final = f"checkpoint/{n}/"
        last = cases.with_prefix(final)
        questions = [r for r in last if r.get("kind") == "question"]
        paraphrases = [r for r in last if r.get("kind") == "paraphrase"]
        controls = [r for r in last if r.get("kind") == "control"]
        targets = [f.target for f in data.facts]

        def values_of(row: dict) -> list[str]:  # every fact was edited by the final checkpoint
            return targets

        fluency_after = mean(rows["final/fluency"]["entropy"]) if "final/fluency" in rows else None
        logprob_after = mean(rows["final/logprob"]["logprob"]) if "final/logprob" in rows else None
        kept = [e for e in edits if not e.get("refused")]  # a refused edit was withdrawn: the last kept one is in force
        delta_rel = kept[-1].get("delta_rel") if kept else None
        immediate = cases.with_prefix("after/")
        extra = {
            "efficacy_immediate": fraction(r["gives"] for r in immediate if r["kind"] == "question"),
            "paraphrase_immediate": fraction(r["gives"] for r in immediate if r["kind"] == "paraphrase"),
            "checkpoints": _checkpoints(cases, data, before),
            # editor's drift.py, after the last edit: how far layer L moved at earlier facts' unconstrained rows
            "drift_earlier": (kept[-1].get("solves") or [{}])[0].get("drift_earlier") if kept else None,
            # the drift guard (--guard-max-drop/-lost): the edits it withdrew, the largest drop and loss it measured
            "refused_edits": [e["fact"] for e in edits if e.get("refused")],
            "guard_drop_max": max((e["guard_drop"] for e in edits if "guard_drop" in e), default=None),
            "guard_lost_max": max((e["guard_lost"] for e in edits if "guard_lost" in e), default=None),
            # --guard-resolve: the edits solved again with their lost guard controls held
            "guard_resolved_edits": [e["fact"] for e in edits if e.get("guard_lost_first")],
            "deepest_layer": _deepest_layer(kept),
        }
    edits_by_fact = {e["fact"]: e for e in edits}
    fluency_before = mean(rows["before/fluency"]["entropy"]) if "before/fluency" in rows else None
    layers = header["method_config"].get("layers") or []
    summary = {
        "n_facts": n,
        "method": header["method"],
        "protocol": protocol,
        "layer": layers[0] if len(layers) == 1 else (layers or None),
        "efficacy": fraction(r["gives"] for r in questions),
        "paraphrase": fraction(r["gives"] for r in paraphrases),
        "paraphrase_unseen": fraction(r["gives"] for r in paraphrases if not fitted_on(r, edits_by_fact)),
        **control_scores(controls, values_of, before),
        "fluency_before": fluency_before,
        "fluency_after": fluency_after,
        "fluency_drop": None if not (fluency_before and fluency_after) else 1 - fluency_after / fluency_before,
        "seconds_per_edit": mean(e["seconds"] for e in edits) if header["method"] not in ("none", "in-context") else 0.0,
        "logprob_before": mean(rows["before/logprob"]["logprob"]) if "before/logprob" in rows else None,
        "logprob_after": logprob_after,
        "delta_rel": delta_rel,
        "residual_max": max((e["residual"] for e in edits if e.get("residual") is not None), default=None),
        "n_controls": len(data.controls),
        "n_controls_answered_before": len(answered_before),
        "n_questions_scored": len(questions),
        "n_paraphrases_scored": len(paraphrases),
        "complete": len(edits) == n or header["method"] in ("none", "in-context"),
        "edits_made": len(edits),
        **extra,
        "model": header["model"],
        "dtype": header["dtype"],
        "device": header.get("device"),  # the device the run started on (not recorded before 2026-12-07)
        "method_config": header["method_config"],
        "options": header["options"],
        "facts_file": header["facts_file"],
        "commit": header.get("commit"),
        "edits_from": header.get("edits_from"),  # --edits-from: the run whose edits this one scored
        "command": header.get("command"),
    }
    return summary


def fitted_on(row: dict, edits_by_fact: dict) -> bool:
    """Whether a paraphrase is word for word one of the model's rewordings that its fact's edit was fitted on."""
    reworded = edits_by_fact.get(row["fact"], {}).get("rewordings") or []
    return row["user"].strip().lower() in {r.strip().lower() for r in reworded}


def control_scores(controls: list[dict], values_of, before: dict[int, dict]) -> dict:
    """Specificity, leak and the share of changed answers over control rows; `values_of(row)`: the values of
    the facts edited when the row was answered; `before`: the unedited model's row of each control."""
    answered_before = [r for r in controls if before.get(r["control"], {}).get("gives")]

    def unedited(row: dict) -> str:
        return before.get(row["control"], {}).get("answer", "")

    def leaks(row: dict) -> list[str]:
        return leaked_values(row["answer"], values_of(row), row["target"], row.get("user", ""), unedited(row))

    def ok(row: dict) -> bool:
        return kept(row["answer"], row["target"], values_of(row), row.get("user", ""), unedited(row))

    return {
        "specificity": fraction(ok(r) for r in answered_before),
        "specificity_same_relation": fraction(ok(r) for r in answered_before if r["same_relation"]),
        "specificity_other": fraction(ok(r) for r in answered_before if not r["same_relation"]),
        "specificity_target_only": fraction(r["gives"] for r in answered_before),
        "leak": fraction(bool(leaks(r)) for r in controls),
        "control_changed": fraction(changed(r["answer"], before[r["control"]]["answer"])
                                    for r in controls if r["control"] in before),
    }


def _deepest_layer(edits: list[dict]) -> dict | None:
    """The last edited layer's rows and ‖ΔW‖/‖W0‖ after each kept edit (its solve is the edit's last), for the
    scale plot: where the rows pass d_mlp the change grows. None for a method that reports no solves."""
    solved = [e for e in edits if e.get("solves")]
    if not solved:
        return None
    return {"edits": [e["fact"] + 1 for e in solved], "rows": [e["solves"][-1]["rows"] for e in solved],
            "delta_rel": [e["solves"][-1]["delta_rel"] for e in solved]}


def _checkpoints(cases: Cases, data: FactsFile, before: dict[int, dict]) -> list[dict]:
    out = []
    counts = sorted({int(k.split("/")[1]) for k in cases.rows if k.startswith("checkpoint/")})
    for count in counts:
        rows = cases.with_prefix(f"checkpoint/{count}/")
        questions = [r for r in rows if r.get("kind") == "question"]
        targets = [f.target for f in data.facts[:count]]
        scores = control_scores([r for r in rows if r.get("kind") == "control"], lambda r: targets, before)
        out.append({
            "edits": count,
            "efficacy": fraction(r["gives"] for r in questions),
            "specificity": scores["specificity"],
            "specificity_target_only": scores["specificity_target_only"],
            "leak": scores["leak"],
            "control_changed": scores["control_changed"],
            # the first facts learned, retained after this many edits
            "efficacy_first10": fraction(r["gives"] for r in questions if r["fact"] < 10),
        })
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transformers_qf.bench.summary",
                                     description="write DIR/summary.json from DIR/cases.jsonl (a run that has not "
                                                 "finished: from the checkpoints it has scored)")
    parser.add_argument("runs", nargs="+", metavar="DIR", help="a run folder (its cases.jsonl names its facts file)")
    args = parser.parse_args(argv)
    for run in map(Path, args.runs):
        path = run / "cases.jsonl"
        try:
            if not path.is_file():
                raise FactsFileError(f"{path} does not exist: give the folder of a benchmark run")
            cases = Cases.read(path)
            header = cases.rows.get("header")
            if header is None:
                raise FactsFileError(f"{path} has no header row: it is not a benchmark run's cases file")
            data = read_facts(header["facts_file"])
        except FactsFileError as e:
            print(f"summary: error: {e}", file=sys.stderr)
            return 2
        data = FactsFile(data.facts[:header["n_facts"]], data.controls, data.meta)  # a run made with --limit
        summary = summarize(cases, data, header)
        write_json(run / "summary.json", summary)
        done = len([k for k in cases.rows if k.startswith("edit/")])
        points = ", ".join(f"{c['edits']}: {c['efficacy']:.2f} / {c['specificity']:.2f}" for c in summary.get("checkpoints", [])
                           if c["efficacy"] is not None and c["specificity"] is not None)
        print(f"{run / 'summary.json'}: {done} of {header['n_facts']} edits; efficacy / specificity at {points or 'no checkpoint yet'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
