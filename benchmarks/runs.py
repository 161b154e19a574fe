"""The runs behind results/bench/benchmark.md, each one `python -m transformers_qf.bench ...` (resumable).

    python benchmarks/runs.py --list                     # the runs and their commands
    python benchmarks/runs.py --only sweep --minutes 18  # run (or resume) some, stop starting new ones after 18 min
    python -m transformers_qf.bench.report runs/benchmark --out results/bench

Runs write runs/benchmark/NAME/{cases.jsonl,summary.json}; a finished run is skipped, a stopped one
resumes. All runs use the bundled 1.5B model in bfloat16 (2.5x faster generation on this CPU).
Sequential runs are scored at their checkpoints (every fact learned so far, and the controls), not right
after each edit (--no-immediate), and on one paraphrase per fact (--paraphrases 1): on 2 shared CPU cores
an answer costs ~0.5-3 s, and scoring every paraphrase right after every edit would take ~40 minutes a run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FACTS = "benchmarks/facts/facts_{n}.jsonl"
COMMON = ["--dtype", "bfloat16"]
SWEEP_LAYERS = (23, 27, 25, 22, 21, 18, 12)  # in the order they run (layers 24, 26, 20, 16 and 8 never had the CPU time)
SWEEP_FACTS = 20
COVFACTS = ["--covariance", "--cov-corpus", "generic+facts"]
VARIANTS = {  # on the sweep's facts and scoring, from the paper's settings: what moves specificity
    "L23-cov": ["--layer", "23", "--covariance"],
    "L23-covfacts": ["--layer", "23", *COVFACTS],
    "L23-covfacts-s0.01": ["--layer", "23", *COVFACTS, "--cov-shrink", "0.01"],
    "L25-covfacts": ["--layer", "25", *COVFACTS],
    "L27-covfacts": ["--layer", "27", *COVFACTS],
    # ROME's form at QF's layer: one key (the subject's last token), v* optimised by gradient, covariance metric
    "L23-rome": ["--layer", "23", *COVFACTS, "--positions", "subject-last", "--target", "optimized"],
    "L8-rome": ["--layer", "8", *COVFACTS, "--positions", "subject-last", "--target", "optimized"],  # ROME's depth
    # 20 steps leave the answer's loss at ~1.6 nats a token at layer 8; 60 take it to ~0.01 (6 single edits)
    "L8-rome-60": ["--layer", "8", *COVFACTS, "--positions", "subject-last", "--target", "optimized",
                   "--target-steps", "60"],
    # the same target fitted on the question after 2 other openings too (ROME's prefixes): for paraphrases
    "L8-rome-40-ctx2": ["--layer", "8", *COVFACTS, "--positions", "subject-last", "--target", "optimized",
                        "--target-steps", "40", "--target-contexts", "2"],
    # and ROME's essence term: the paraphrases above garbled the subject ("X is the founder of the company.")
    "L8-rome-40-ctx2-kl": ["--layer", "8", *COVFACTS, "--positions", "subject-last", "--target", "optimized",
                           "--target-steps", "40", "--target-contexts", "2", "--target-essence", "0.0625"],
    # the target added straight at a paraphrase's subject row answers only 1 in 3 (paraphrase_transfer.md): fit it
    # on 2 rewordings by the model itself instead of openings, and at the answer's copy of the subject too
    "L8-rome-40-words2-copies": ["--layer", "8", *COVFACTS, "--positions", "subject-copies", "--target", "optimized",
                                 "--target-steps", "40", "--target-wordings", "2"],
    # which of the two did it: the answer's copies alone (one context, as L8-rome-60), the rewordings alone
    "L8-rome-60-copies": ["--layer", "8", *COVFACTS, "--positions", "subject-copies", "--target", "optimized",
                          "--target-steps", "60"],
    "L8-rome-40-words2": ["--layer", "8", *COVFACTS, "--positions", "subject-last", "--target", "optimized",
                          "--target-steps", "40", "--target-wordings", "2"],
    # the paraphrases it missed were answered in another form ("The founder of X is Jose." for "X was founded by"):
    # fit it on the model's own answer to a rewording too, the target put where it names its value. Measured: no
    # better (paraphrase .30 against .50); the misses are well-formed answers with another value, not another form
    "L8-rome-60-copies-forms1": ["--layer", "8", *COVFACTS, "--positions", "subject-copies", "--target", "optimized",
                                 "--target-steps", "60", "--target-wordings", "1", "--target-forms"],
    # the one target fitted in more contexts at the full 60 steps (words2-copies had 40): the model's rewordings,
    # or ROME's openings before the question
    "L8-rome-60-copies-words2": ["--layer", "8", *COVFACTS, "--positions", "subject-copies", "--target", "optimized",
                                 "--target-steps", "60", "--target-wordings", "2"],
    "L8-rome-60-copies-ctx2": ["--layer", "8", *COVFACTS, "--positions", "subject-copies", "--target", "optimized",
                               "--target-steps", "60", "--target-contexts", "2"],
    # the target added at every subject row answers only 0.57 of the paraphrases (paraphrase_transfer-copies.md):
    # the same edit earlier (ROME's layer 5 of GPT-J's 28) and later, scored on every paraphrase
    # (VARIANTS_ALL_PARAPHRASES)
    "L5-rome-60-copies": ["--layer", "5", *COVFACTS, "--positions", "subject-copies", "--target", "optimized",
                          "--target-steps", "60"],
    "L12-rome-60-copies": ["--layer", "12", *COVFACTS, "--positions", "subject-copies", "--target", "optimized",
                           "--target-steps", "60"],
    # layer 8's copies again, scored on all three paraphrases to compare with the two above; and fitted on up to 5
    # of the model's rewordings (2 gave 0.40 on one paraphrase a fact: too few questions to tell)
    "L8-rome-60-copies-3para": ["--layer", "8", *COVFACTS, "--positions", "subject-copies", "--target", "optimized",
                                "--target-steps", "60"],
    "L8-rome-60-copies-words5": ["--layer", "8", *COVFACTS, "--positions", "subject-copies", "--target", "optimized",
                                 "--target-steps", "60", "--target-wordings", "5"],
    # the package default (QF, no gradient), and the same with the model's own rewordings of each question asked
    # open and closed book as well: more answer rows a fact, from wordings the model chose
    "L23-covfacts-target-3para": ["--layer", "23", *COVFACTS, "--positions", "target"],
    "L23-covfacts-target-words3": ["--layer", "23", *COVFACTS, "--positions", "target", "--target-wordings", "3"],
    # 2 and 5 rewordings lifted the paraphrases from 0.25 to 0.43 and 0.55 (on 60): all 10 instructions
    "L8-rome-60-copies-words10": ["--layer", "8", *COVFACTS, "--positions", "subject-copies", "--target", "optimized",
                                  "--target-steps", "60", "--target-wordings", "10"],
    # the same after rewording.py keeps only questions, asked with its rewriter system turn (from 2026-11-25): 30 of
    # words10's 81 rewordings were answers; now 3.75 real ones a fact instead of 2.70 (results/bench/rewording_yield.md)
    "L8-rome-60-copies-words10-questions": ["--layer", "8", *COVFACTS, "--positions", "subject-copies",
                                            "--target", "optimized", "--target-steps", "60", "--target-wordings", "10"],
    # layer 5 answered more of the 60 paraphrases than layer 8 with the copies alone (0.40 against 0.25, with a
    # smaller change, 0.12 against 0.17): the same with the rewordings, and layer 3 further down
    "L5-rome-60-copies-words10": ["--layer", "5", *COVFACTS, "--positions", "subject-copies", "--target", "optimized",
                                  "--target-steps", "60", "--target-wordings", "10"],
    "L3-rome-60-copies": ["--layer", "3", *COVFACTS, "--positions", "subject-copies", "--target", "optimized",
                          "--target-steps", "60"],
    # the target fitted at layer 8 and spread over layers 4-8 as MEMIT spreads it (each layer carries a share, so
    # no layer carries the whole change), with the rewordings
    "L4-8-rome-60-copies-words10": ["--layers", "4,5,6,7,8", *COVFACTS, "--positions", "subject-copies",
                                    "--target", "optimized", "--target-steps", "60", "--target-wordings", "10"],
    # it lifted the unseen paraphrases from 0.36 to 0.56: the spread alone, without rewordings (layer 8 alone: 0.25)
    "L4-8-rome-60-copies": ["--layers", "4,5,6,7,8", *COVFACTS, "--positions", "subject-copies", "--target",
                            "optimized", "--target-steps", "60"],
}
# the edits of earlier runs (their state after the last edit), scored again on all three paraphrases: run name ->
# the run whose edits it scores (--edits-from; its answers of the unedited model are reused too)
RESCORED = {"variant-L8-rome-60-copies-ctx2-3para": "variant-L8-rome-60-copies-ctx2",
            "variant-L8-rome-60-copies-words2-3para": "variant-L8-rome-60-copies-words2"}
# one paraphrase a fact is 20 questions, too few to tell 0.4 from 0.5: these are scored on all three (60)
VARIANTS_ALL_PARAPHRASES = ("L5-rome-60-copies", "L12-rome-60-copies", "L8-rome-60-copies-3para",
                            "L8-rome-60-copies-words5", "L8-rome-60-copies-words10", "L23-covfacts-target-3para",
                            "L23-covfacts-target-words3", "L8-rome-60-copies-words10-questions",
                            "L5-rome-60-copies-words10", "L3-rome-60-copies", "L4-8-rome-60-copies-words10",
                            "L4-8-rome-60-copies")


def runs() -> dict[str, list[str]]:
    """name -> arguments of python -m transformers_qf.bench (without --out)."""
    plan: dict[str, list[str]] = {}
    for layer in SWEEP_LAYERS:
        plan[f"sweep-L{layer:02d}"] = ["--facts", FACTS.format(n=100), "--limit", str(SWEEP_FACTS), "--method", "qf",
                                       "--paper", "--layer", str(layer), "--protocol", "sequential", "--no-immediate",
                                       "--checkpoints", str(SWEEP_FACTS), "--fluency-tokens", "32", "--paraphrases", "1"]
    every_paraphrase = ["--facts", FACTS.format(n=100), "--limit", str(SWEEP_FACTS), "--protocol", "sequential",
                        "--no-immediate", "--checkpoints", str(SWEEP_FACTS), "--fluency-tokens", "32"]
    sweep_scoring = [*every_paraphrase, "--paraphrases", "1"]
    for name, options in VARIANTS.items():
        scoring = every_paraphrase if name in VARIANTS_ALL_PARAPHRASES else sweep_scoring
        plan[f"variant-{name}"] = [*scoring, "--method", "qf", "--paper", *options]
    for name, source in RESCORED.items():
        plan[name] = [*every_paraphrase, "--method", "qf", "--paper", *VARIANTS[source.removeprefix("variant-")]]
    # FT-L costs 18-22 s per edit here (25 Adam steps in bf16 on 2 cores): 20 facts fit the CPU time, 100 did not
    plan["variant-ft-L23"] = [*sweep_scoring, "--method", "ft", "--layer", "23"]
    methods = {  # in the order they run: the most telling first
        "qf-paper": ["--method", "qf", "--paper"],
        "qf-L27": ["--method", "qf", "--paper", "--layer", "27"],  # the qf CLI's layer (the model's last)
        # the paper's QF in the metric of preserved keys
        "qf-covfacts": ["--method", "qf", "--layer", "23", *COVFACTS, "--positions", "answer"],
        "qf-covfacts-ridge1000": ["--method", "qf", "--layer", "23", *COVFACTS, "--positions", "answer",
                                  "--ridge", "1000"],
        "qf-covfacts-target": ["--method", "qf", "--layer", "23", *COVFACTS, "--positions", "target"],
        # what `qf learn --covariance` does on the bundled model: its last layer, every answer position
        "qf-L27-covfacts": ["--method", "qf", "--layer", "27", *COVFACTS, "--positions", "answer"],
        "qf-covfacts-target-next": ["--method", "qf", "--layer", "23", *COVFACTS, "--positions", "target-next"],
        # the answers' own keys (names, numbers) weighted up in the covariance: specificity was lost there
        "qf-covfacts-target-aw1": ["--method", "qf", "--layer", "23", *COVFACTS, "--positions", "target",
                                   "--cov-answer-weight", "1"],
        "qf-covfacts-target-L27": ["--method", "qf", "--layer", "27", *COVFACTS, "--positions", "target"],
        "qf-covfacts-target-ridge100": ["--method", "qf", "--layer", "23", *COVFACTS, "--positions", "target",
                                        "--ridge", "100"],
        # the default with every other row of each fact's user turn and answer held where it is (the template rows
        # "The CEO of ... is", whose keys controls share, then cannot move)
        "qf-covfacts-target-keep": ["--method", "qf", "--layer", "23", *COVFACTS, "--positions", "target",
                                    "--keep-context"],
        # the default, each question's 3 rewordings by the model asked open and closed book too (at 20 facts:
        # efficacy 0.70 -> 0.85, paraphrase 0.70 -> 0.68, specificity 0.92 -> 0.86)
        "qf-covfacts-target-words3": ["--method", "qf", "--layer", "23", *COVFACTS, "--positions", "target",
                                      "--target-wordings", "3"],
        "in-context": ["--method", "in-context"],
        "ft": ["--method", "ft", "--layer", "23"],
        "none": ["--method", "none"],
    }
    unchanged = ("none", "in-context")  # the model never changes: one scoring after the last "edit" says it all
    for name, args in methods.items():
        scoring = ["--checkpoints", "100"] if name in unchanged else ["--checkpoints", "10,30,100"]
        plan[f"sequential100-{name}"] = ["--facts", FACTS.format(n=100), "--protocol", "sequential",
                                         "--no-immediate", "--paraphrases", "1", *scoring, *args]
    # the layer-8 edit that kept specificity at 20 facts, at 50 (51 s an edit here: 100 did not fit a session)
    plan["sequential50-qf-L8-rome-60-copies"] = ["--facts", FACTS.format(n=100), "--limit", "50", "--protocol",
                                                 "sequential", "--no-immediate", "--paraphrases", "1", "--checkpoints",
                                                 "10,30,50", "--method", "qf", "--paper", *VARIANTS["L8-rome-60-copies"]]
    # and at 100, every other row of the fitted sequences held (the 50-fact run's earlier facts fell away as later
    # edits moved those rows by 4 % on average, up to 50 %): checkpoint 50 compares with the run above
    plan["sequential100-qf-L8-rome-60-copies-keep"] = [
        "--facts", FACTS.format(n=100), "--protocol", "sequential", "--no-immediate", "--paraphrases", "1",
        "--checkpoints", "10,30,50,100", "--method", "qf", "--paper", *VARIANTS["L8-rome-60-copies"], "--keep-context"]
    # and fitted on up to 5 of the model's rewordings (at 20 facts, on all 60 paraphrases: 0.55 against 0.25 for
    # the copies alone, measured on one machine), scored on every paraphrase; 55 s an edit on 2 CPU cores, so it resumes across runs
    plan["sequential100-qf-L8-rome-60-copies-keep-words5"] = [
        "--facts", FACTS.format(n=100), "--protocol", "sequential", "--no-immediate", "--checkpoints", "10,30,50,100",
        "--method", "qf", "--paper", *VARIANTS["L8-rome-60-copies-words5"], "--keep-context"]
    # the target spread over layers 4-8 with up to 10 rewordings (at 20 facts: paraphrase 0.65, unseen 0.56, against
    # 0.36 at layer 8 alone), the fitted rows held: five solves of ~8,000 rows an edit by the end, so it resumes
    # across sessions
    plan["sequential100-qf-L4-8-rome-60-copies-keep-words10"] = [
        "--facts", FACTS.format(n=100), "--protocol", "sequential", "--no-immediate", "--checkpoints", "10,30,50,100",
        "--method", "qf", "--paper", *VARIANTS["L4-8-rome-60-copies-words10"], "--keep-context"]
    # the words10 run above costs ~200 s an edit here (each rewording is one more sequence in every one of the 60
    # steps; 4.4 kept a fact in its first 9 edits), 5.5 h for 100 facts. Five instructions keep ~2 a fact
    # (rewording_yield.md), and compare straight with the layer-8 words5 run at 100 facts
    plan["sequential100-qf-L4-8-rome-60-copies-keep-words5"] = [
        *plan["sequential100-qf-L4-8-rome-60-copies-keep-words10"][:-3], "--target-wordings", "5", "--keep-context"]
    for name in ("qf-covfacts-target", "qf-paper", "qf-L27"):
        plan[f"single100-{name}"] = ["--facts", FACTS.format(n=100), "--protocol", "single", "--paraphrases", "1",
                                     *methods[name]]
    for name in ("qf-covfacts-target", "qf-paper"):  # the default first; 2 h+ each on 2 cores
        plan[f"sequential1000-{name}"] = ["--facts", FACTS.format(n=1000), "--protocol", "sequential",
                                          "--no-immediate", "--paraphrases", "1", "--checkpoints", "10,100,300",
                                          *methods[name]]
    # where the backprop-free default collapses (efficacy or specificity below 0.6; the 1000-fact run above was at
    # 0.68 / 0.45 after 100 edits), and whether AlphaEdit's null-space projection moves that point: the change
    # confined to the key directions whose variance in the generic+facts covariance is below 1/100 of the mean
    collapse = ["--facts", FACTS.format(n=1000), "--limit", "200", "--protocol", "sequential", "--no-immediate",
                "--paraphrases", "1", "--checkpoints", "10,30,50,75,100,150,200"]
    plan["sequential200-qf-covfacts-target"] = [*collapse, *methods["qf-covfacts-target"]]
    plan["sequential200-qf-covfacts-target-null0.01"] = [*collapse, *methods["qf-covfacts-target"],
                                                          "--null-space", "0.01"]
    # the spread edit above with the speed options (results/perf/intact_edit_profile.md, first 10 facts: 25 s an edit
    # against 61 s, 1.00 / 0.87 / 1.00 against 1.00 / 0.63 / 1.00): the fit ends once the answer's loss is below
    # 0.05 (Adam lr 0.5), each layer's factor is extended by the round's rows, the drift watch keeps 8 rows a context.
    fast = ["--target-stop", "0.05", "--target-lr", "0.5", "--incremental"]
    intact = plan["sequential100-qf-L4-8-rome-60-copies-keep-words5"]
    plan["sequential100-qf-L4-8-rome-60-copies-keep-words5-fast"] = [*intact, *fast, "--drift-rows", "8"]
    # the same with the drift guard: an edit that lowers 16 real-entity controls' mean log p by more than 0.5 nats
    # (teacher-forced, after every edit) is withdrawn
    plan["sequential100-qf-L4-8-rome-60-copies-keep-words5-fast-guard"] = [
        *plan["sequential100-qf-L4-8-rome-60-copies-keep-words5-fast"], "--guard-max-drop", "0.5", "--guard-set",
        "scored"]
    # the guarded run above lost specificity between 50 and 100 edits (1.00 -> 0.80) where the slow one kept 1.00:
    # the same speed options at the slow run's step size (Adam lr 0.1), to tell the step size from the rest
    plan["sequential100-qf-L4-8-rome-60-copies-keep-words5-fast-lr0.1"] = [
        *intact, "--target-stop", "0.05", "--incremental", "--drift-rows", "8", "--guard-max-drop", "0.5",
        "--guard-set", "scored"]
    # the lr 0.5 run above fell to 0.80 specificity by 100 edits while its mean-drop guard never fired: the same
    # edits, each solved again with the guard controls it loses held where the unedited model has them. The 32 guard
    # controls are real facts that the scored controls leave out, so that specificity measures what the guard did not
    # see. Nothing is refused.
    # (made on an H100 beside the same run without the guard, reported as `...-fast-h100`)
    plan["sequential100-qf-L4-8-rome-60-copies-keep-words5-fast-resolve"] = [
        *plan["sequential100-qf-L4-8-rome-60-copies-keep-words5-fast"], "--guard-resolve", "--guard-controls", "32"]
    # the 1000-fact run with the intact preset's options (those of the lr 0.1 run above), checkpointed at 10, 100,
    # 300 and 1000; about 9 h on 2 CPU cores, resumable from its state file
    plan["sequential1000-qf-L4-8-rome-60-copies-keep-words5-fast-lr0.1"] = [
        "--facts", FACTS.format(n=1000), "--protocol", "sequential", "--no-immediate", "--paraphrases", "1",
        "--checkpoints", "10,100,300", *intact[intact.index("--method"):], "--target-stop", "0.05", "--incremental",
        "--drift-rows", "8"]
    # past about 125 facts the preset's layers hold more rows than d_mlp and the exact change grows fast
    # (results/perf/row_capacity.md): the same run with a ridge that leaves a median row 3 % (lambda 0.65) or
    # 10 % (6.5) short of its move at 100 facts. Scored at 10, 100 and 300 edits first; best made on a GPU
    # what the smaller ridge costs before the rows run out: the 100-fact lr 0.1 run (the intact preset) with it
    plan["sequential100-qf-L4-8-rome-60-copies-keep-words5-fast-lr0.1-ridge0.65"] = [
        *plan["sequential100-qf-L4-8-rome-60-copies-keep-words5-fast-lr0.1"], "--ridge", "0.65"]
    plan["sequential1000-qf-L4-8-rome-60-copies-keep-words5-fast-lr0.1-ridge0.65"] = [
        *plan["sequential1000-qf-L4-8-rome-60-copies-keep-words5-fast-lr0.1"], "--ridge", "0.65"]
    plan["sequential1000-qf-L4-8-rome-60-copies-keep-words5-fast-lr0.1-ridge6.5"] = [
        *plan["sequential1000-qf-L4-8-rome-60-copies-keep-words5-fast-lr0.1"], "--ridge", "6.5"]
    # and 25 % short at 100 facts: more rows share the same ridge as a run grows, so each is missed by less
    plan["sequential1000-qf-L4-8-rome-60-copies-keep-words5-fast-lr0.1-ridge65"] = [
        *plan["sequential1000-qf-L4-8-rome-60-copies-keep-words5-fast-lr0.1"], "--ridge", "65"]
    # an absolute lambda barely reaches layers 4-7: layer 4's mean |u|^2 in its metric is ~10,100, layer 8's 646.
    # The same ridges given relative to each layer's own (0.001 and 0.01 are 0.65 and 6.5 at layer 8), and 0.1
    for rel in ("0.001", "0.01", "0.1"):
        plan[f"sequential1000-qf-L4-8-rome-60-copies-keep-words5-fast-lr0.1-ridge{rel}rel"] = [
            *plan["sequential1000-qf-L4-8-rome-60-copies-keep-words5-fast-lr0.1"], "--ridge", rel, "--ridge-relative"]
    # the unseen paraphrases the intact preset misses most are possessive ("X's CEO"), which the model's own
    # rewordings rarely are: the same run fitted on up to 4 of the relation's other phrasings too (fit_questions)
    plan["sequential100-qf-L4-8-rome-60-copies-keep-words5-fast-lr0.1-templates4"] = [
        *plan["sequential100-qf-L4-8-rome-60-copies-keep-words5-fast-lr0.1"], "--target-templates", "4"]
    # the same pair on the first 10 facts (about 10 min each on 2 CPU cores), every paraphrase scored
    for name in ("fast-lr0.1", "fast-lr0.1-templates4"):
        hundred = plan[f"sequential100-qf-L4-8-rome-60-copies-keep-words5-{name}"]
        at = hundred.index("--checkpoints") + 1
        plan[f"sequential10-qf-L4-8-rome-60-copies-keep-words5-{name}"] = [
            *hundred[:at], "10", *hundred[at + 1:], "--limit", "10"]
    return plan


def donor(name: str) -> str:
    """The run whose unedited-model answers (controls, fluency, log p) this one reuses: the paper's QF run of the
    same size (in the sweep, its first layer), which runs first."""
    if name.startswith(("sweep-", "variant-")):
        return f"sweep-L{SWEEP_LAYERS[0]:02d}"
    if name.startswith("sequential50-"):
        return name  # no other run of 50 facts: it scores the unedited model itself
    if name.startswith("sequential200-"):
        return "sequential200-qf-covfacts-target"
    size = "1000" if "1000-" in name else "100"
    return f"sequential{size}-qf-paper"


def done(out: Path) -> bool:
    path = out / "summary.json"
    return path.is_file() and json.loads(path.read_text()).get("complete", False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default="runs/benchmark")
    parser.add_argument("--only", default="", help="run only the runs whose name starts with this (comma-separated)")
    parser.add_argument("--minutes", type=float, default=None, help="start no new run after this many minutes")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args(argv)
    prefixes = tuple(p for p in args.only.split(",") if p)
    chosen = {k: v for k, v in runs().items() if not prefixes or k.startswith(prefixes)}
    plan_file = ROOT / args.runs_dir / "plan.json"  # the report lists the planned runs that have not been made
    plan_file.parent.mkdir(parents=True, exist_ok=True)
    plan_file.write_text(json.dumps({k: " ".join(["python -m transformers_qf.bench", *v, *COMMON])
                                     for k, v in runs().items()}, indent=1))
    start = time.time()
    for name, run_args in chosen.items():
        out = ROOT / args.runs_dir / name
        command = [sys.executable, "-m", "transformers_qf.bench", *run_args, *COMMON, "--out", str(out)]
        source = ROOT / args.runs_dir / RESCORED.get(name, donor(name))
        if source != out and (source / "cases.jsonl").is_file():
            command += ["--before-from", str(source)]
        if name in RESCORED:
            command += ["--edits-from", str(ROOT / args.runs_dir / RESCORED[name])]
        if args.list:
            print(f"{name}{' (done)' if done(out) else ''}: {' '.join(command[1:])}")
            continue
        if done(out):
            continue
        if args.minutes is not None and time.time() - start > args.minutes * 60:
            print(f"stopping: {args.minutes} minutes used; run again to go on", file=sys.stderr)
            return 0
        print(f"== {name}", file=sys.stderr, flush=True)
        status = subprocess.call(command, cwd=ROOT)
        if status != 0:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
