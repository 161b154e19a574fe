"""DIR/summary.json from DIR/cases.jsonl: the run's fractions and costs.

efficacy: questions answered with the target after the (last) edit; paraphrase: the same for the
paraphrased questions (paraphrase_unseen: only those that are not, word for word, one of the rewordings an
edit was fitted on, with --target-wordings); specificity: controls the unedited model answered right that are still answered
right (split into controls about the facts' relations and the rest); leak: control answers that name
an edited fact's target; fluency: mean n-gram entropy of free answers to open prompts. Fractions are in
0..1. In the sequential protocol "final" scores come after the last edit, "immediate" right after each.
"""

from __future__ import annotations

from transformers_qf.bench.data import FactsFile
from transformers_qf.bench.metrics import fraction, gives, mean
from transformers_qf.bench.run import Cases


def summarize(cases: Cases, data: FactsFile, header: dict) -> dict:
    rows = cases.rows
    n = len(data.facts)
    protocol = header["options"]["protocol"]
    answered_before = {r["control"] for r in cases.with_prefix("before/control/") if r["gives"]}
    edits = [rows[f"edit/{i}"] for i in range(n) if f"edit/{i}" in rows]
    if protocol == "single":
        after = cases.with_prefix("after/")
        questions = [r for r in after if r.get("kind") == "question"]
        paraphrases = [r for r in after if r.get("kind") == "paraphrase"]
        controls = [r for r in after if r.get("kind") == "control"]
        leaked = [_leaks(r, [data.facts[int(r["key"].split("/")[1])].target]) for r in controls]
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
        leaked = [_leaks(r, targets) for r in controls]
        fluency_after = mean(rows["final/fluency"]["entropy"]) if "final/fluency" in rows else None
        logprob_after = mean(rows["final/logprob"]["logprob"]) if "final/logprob" in rows else None
        delta_rel = edits[-1].get("delta_rel") if edits else None
        immediate = cases.with_prefix("after/")
        extra = {
            "efficacy_immediate": fraction(r["gives"] for r in immediate if r["kind"] == "question"),
            "paraphrase_immediate": fraction(r["gives"] for r in immediate if r["kind"] == "paraphrase"),
            "checkpoints": _checkpoints(cases, data, answered_before, header),
            # editor's drift.py, after the last edit: how far layer L moved at earlier facts' unconstrained rows
            "drift_earlier": (edits[-1].get("solves") or [{}])[0].get("drift_earlier") if edits else None,
        }
    kept = [r for r in controls if r["control"] in answered_before]
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
        "specificity": fraction(r["gives"] for r in kept),
        "specificity_same_relation": fraction(r["gives"] for r in kept if r["same_relation"]),
        "specificity_other": fraction(r["gives"] for r in kept if not r["same_relation"]),
        "leak": fraction(leaked),
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
        **extra,
        "model": header["model"],
        "dtype": header["dtype"],
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


def _leaks(row: dict, targets: list[str]) -> bool:
    """Whether a control's answer names one of the edited facts' targets (and not its own)."""
    return not row["gives"] and any(gives(row["answer"], t) for t in targets)


def _checkpoints(cases: Cases, data: FactsFile, answered_before: set, header: dict) -> list[dict]:
    out = []
    counts = sorted({int(k.split("/")[1]) for k in cases.rows if k.startswith("checkpoint/")})
    for count in counts:
        rows = cases.with_prefix(f"checkpoint/{count}/")
        questions = [r for r in rows if r.get("kind") == "question"]
        controls = [r for r in rows if r.get("kind") == "control" and r["control"] in answered_before]
        targets = [f.target for f in data.facts[:count]]
        out.append({
            "edits": count,
            "efficacy": fraction(r["gives"] for r in questions),
            "specificity": fraction(r["gives"] for r in controls),
            "leak": fraction(_leaks(r, targets) for r in rows if r.get("kind") == "control"),
            # the first facts learned, retained after this many edits
            "efficacy_first10": fraction(r["gives"] for r in questions if r["fact"] < 10),
        })
    return out
