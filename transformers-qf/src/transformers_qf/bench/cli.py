"""python -m transformers_qf.bench --facts FILE.jsonl --method qf --protocol sequential --out DIR [options]

Writes DIR/cases.jsonl (every answer, appended as it comes; a stopped run resumes from it),
DIR/summary.json, and in the sequential protocol DIR/state.safetensors (the edits' state, so that a resumed
run need not make them again). Mistakes print one line, `bench: error: ...`, and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from pathlib import Path

from transformers_qf.solve import keystats
from transformers_qf.editing.editor import COV_CORPORA, PAPER, POSITIONS, RECOMMENDED, TARGETS, EditConfig
from transformers_qf.editing.targets import FIT_METHODS
from transformers_qf.editing.presets import PRESETS, SOURCE, get_preset
from transformers_qf.core.errors import USER_ERRORS
from transformers_qf.solve.keyed import KeyMetric
from transformers_qf.core.models import LoadedModel, load_model
from transformers_qf.core.report import git_commit, write_json
from transformers_qf.core.scriptargs import add_model_args, parse_layers
from transformers_qf.bench.answering import Answerer
from transformers_qf.bench.data import FactsFile, FactsFileError, read_facts
from transformers_qf.editing.methods import FineTune, InContext, NoEdit, QFEdit
from transformers_qf.bench.run import PROTOCOLS, Cases, CasesFileError, Runner, RunOptions, adopt_edits, finished_edits, read_header
from transformers_qf.bench.state import STATE_FILE
from transformers_qf.bench.summary import summarize

METHODS = ("none", "in-context", "qf", "ft")
DEFAULT_QF = RECOMMENDED  # results/bench/benchmark.md; --paper gives the paper's settings


def load(spec: str | None, device: str | None, dtype: str | None) -> LoadedModel:
    """How the bench gets its model (tests replace this to inject a tiny one)."""
    print(f"bench: loading {spec or 'the default model'} ...", file=sys.stderr, flush=True)
    return load_model(spec, device, dtype)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"bench: error: {message} (see --help)\n")


def device_name(model) -> str:
    """Where the model runs, for the report: "cpu (2 threads)" or "cuda (NVIDIA H100 80GB HBM3)"."""
    import torch

    device = next(model.parameters()).device
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({torch.get_num_threads()} threads)"


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def _counts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad list {text!r}: give numbers like 10,30,100") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m transformers_qf.bench", description=__doc__.splitlines()[0],
                epilog=f"presets (measured: {SOURCE}): " + "; ".join(
                    f"{x.name}: {x.what} {x.cost}; {x.scores}" for x in PRESETS.values()))
    p.add_argument("--facts", required=True, help="facts file (JSON lines; see transformers_qf.bench.data)")
    p.add_argument("--method", choices=METHODS, default=None, help="the method (or give --preset)")
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="a named preset (editing/presets.py): its method and options; the qf and ft options below "
                   "change it (its layers are placed by the model's depth unless --layer/--layers)")
    p.add_argument("--protocol", required=True, choices=PROTOCOLS)
    p.add_argument("--out", required=True, help="run directory: cases.jsonl and summary.json")
    add_model_args(p)
    p.add_argument("--limit", type=_positive, default=None, help="use only the first N facts")
    p.add_argument("--max-new-tokens", type=_positive, default=24, help="answer length cap (default 24)")
    p.add_argument("--batch-size", type=_positive, default=32, help="prompts per generate call (default 32)")
    p.add_argument("--checkpoints", type=_counts, default=(10, 30, 100, 300),
                   help="sequential: score every fact learned so far after these many edits (default 10,30,100,300)")
    p.add_argument("--fluency-tokens", type=_positive, default=64, help="length of the free answers for fluency")
    p.add_argument("--no-immediate", action="store_true",
                   help="sequential: do not score each fact right after its edit (only at the checkpoints)")
    p.add_argument("--paraphrases", type=_positive, default=None,
                   help="score only each fact's first N paraphrases (default: all; fewer answers, less CPU)")
    p.add_argument("--controls-per-edit", type=_positive, default=4, help="single: controls scored per edit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--state-every", type=_seconds, default=300.0, metavar="SECONDS",
                   help="sequential: save the edits' state to DIR/state.safetensors at every checkpoint and at least "
                        "this often, so that a resumed run goes on from it (default 300; 0: after every edit)")
    p.add_argument("--no-state", action="store_true",
                   help="sequential: keep no state file (a resumed run makes every edit again)")
    p.add_argument("--guard-max-drop", type=float, default=None, metavar="NATS",
                   help="sequential: after each edit, score the first --guard-controls controls the unedited model "
                        "answers (teacher-forced log p of their answers) and withdraw an edit that lowers their mean "
                        "by more than NATS; the edit's row says refused, the summary lists refused_edits")
    p.add_argument("--guard-max-lost", type=int, default=None, metavar="N",
                   help="sequential: the same guard, withdrawing an edit after which more than N of those controls "
                        "no longer have their target as the greedy continuation of their answer (0: none may be lost)")
    p.add_argument("--guard-resolve", action="store_true",
                   help="sequential, qf: an edit after which guard controls are lost is solved again with those "
                        "controls held where the unedited model has them, then checked again (and withdrawn only if "
                        "it still passes --guard-max-drop/-lost); the edit's row says guard_lost_first and "
                        "guard_held_rows")
    p.add_argument("--guard-controls", type=_positive, default=16, help="the drift guard's controls (default 16)")
    p.add_argument("--guard-set", choices=("held-out", "scored"), default="held-out",
                   help="the guard's controls: held-out (default), real facts the facts file's controls leave out "
                        "and the unedited model answers right, so that specificity is not scored on what the guard "
                        "protects; scored, the first controls of the facts file the unedited model answers")
    p.add_argument("--before-from", default=None, metavar="DIR",
                   help="reuse the unedited model's answers from another run's folder (same model, dtype, facts)")
    p.add_argument("--edits-from", default=None, metavar="DIR",
                   help="sequential: take a finished run's edits (its state after the last edit) and only score, "
                        "e.g. on more paraphrases (same model, dtype, facts and method options; with "
                        "--no-immediate and --checkpoints N_FACTS)")
    qf = p.add_argument_group("qf and ft options", "qf's default: layer 23, target positions, the exact solve in the "
                              "covariance of generic and real-entity text (made once per model and layer, cached); "
                              "--paper: the paper's settings")
    qf.add_argument("--layer", type=int, default=None, help="layer to edit")
    qf.add_argument("--layers", type=parse_layers, default=None, help="qf: several layers edited in turn, e.g. 20,23,27")
    qf.add_argument("--paper", action="store_true", help="qf: the paper's settings (layer 23, answer positions, exact, plain metric)")
    qf.add_argument("--positions", choices=POSITIONS, default=None, help="qf: which positions are constrained")
    qf.add_argument("--gamma", type=float, default=None, help="qf: push the target past the open-book output")
    qf.add_argument("--ridge", type=float, default=None,
                    help="qf: ridge lambda (0: exact); > 0 meets the rows in least squares with lambda |dW|^2 in the "
                         "key metric, which keeps the change bounded once a layer's rows near d_mlp (with "
                         "--incremental too)")
    qf.add_argument("--ridge-relative", action="store_true", default=None,
                    help="qf: --ridge is a multiple of each edited layer's mean |u|^2 in its key metric (over its "
                         "first edit's rows), so that one value weighs the change alike at every layer")
    qf.add_argument("--covariance", action=argparse.BooleanOptionalAction, default=None,
                    help="qf: weight the solve by the key covariance of generic text (EMMET/MEMIT form)")
    qf.add_argument("--cov-shrink", type=float, default=None, help="qf: shrink the covariance towards its mean "
                    "variance, in (0, 1]")
    qf.add_argument("--cov-corpus", choices=COV_CORPORA, default=None,
                    help="qf: the text of that covariance: generic requests, or those plus the model's own answers "
                    "about real entities (the facts file's control subjects left out)")
    qf.add_argument("--cov-answer-weight", type=float, default=None, metavar="W",
                    help="qf, generic+facts: add W times the covariance of the real-entity answers' own positions "
                    "(the keys that spell names and numbers)")
    qf.add_argument("--null-space", type=float, default=None, metavar="T",
                    help="qf, with --covariance: confine each change to the key directions whose variance in that "
                    "covariance is below T times the mean (AlphaEdit's null-space projection), instead of weighting "
                    "by its inverse")
    qf.add_argument("--target", choices=TARGETS, default=None,
                    help="qf: the layer output to aim at: the open-book pass (QF) or one optimised by gradient "
                    "descent (ROME/MEMIT's v*)")
    qf.add_argument("--target-steps", type=_positive, default=None)
    qf.add_argument("--target-lr", type=float, default=None)
    qf.add_argument("--target-decay", type=float, default=None)
    qf.add_argument("--target-contexts", type=_positive, default=None, metavar="N",
                    help="qf, optimized target: fit it on the question and on N copies after other openings "
                    "(ROME's prefixes; each adds its rows to the solve)")
    qf.add_argument("--target-wordings", type=_positive, default=None, metavar="N",
                    help="qf: up to N rewordings of the question by the model itself too, each adding its rows to "
                    "the solve (open-book target: asked open and closed book, as the question; optimized: sharing "
                    "its deltas). No wording is taken from the facts file")
    qf.add_argument("--target-templates", type=_positive, default=None, metavar="N",
                    help="qf, optimized target: fit it on up to N other phrasings of the question's relation too "
                    "(worldfacts' fit_questions: the possessive and the subject first among them; the facts files "
                    "never ask them)")
    qf.add_argument("--target-essence", type=float, default=None, metavar="W",
                    help="qf, optimized target at subject-last/-copies: W x KL of the next token after \"{subject} is a\", "
                    "edited against unedited (ROME's essence term; ROME uses 0.0625)")
    qf.add_argument("--target-forms", action="store_true",
                    help="qf, optimized target: fit it where the model answers the question (and each rewording) in "
                    "its own words too, the target put where the model names its value")
    qf.add_argument("--keep-context", action="store_true",
                    help="qf: every other row of the sequences the target is fitted on (user turn and answer) keeps "
                    "its layer output, in this edit and every later one")
    qf.add_argument("--target-stop", type=float, default=None, metavar="NLL",
                    help="qf, optimized target: end the fit once the answer's mean NLL a token is below NLL "
                    "(0: always run --target-steps)")
    qf.add_argument("--target-method", choices=FIT_METHODS, default=None,
                    help="qf, optimized target: Adam steps (default), adam-warm (Adam on the question alone until "
                    "its loss is below --target-stop, then on every context) or L-BFGS with a line search")
    qf.add_argument("--incremental", action="store_true",
                    help="qf: extend each layer's factorisation by the new rows instead of re-factorising every "
                    "row of every edit (the same solve; the state keeps only the rows)")
    qf.add_argument("--drift-rows", type=int, default=None, metavar="N",
                    help="qf, optimized target: the drift watch keeps N unconstrained rows a context (0: all)")
    qf.add_argument("--cov-texts", type=_positive, default=256, help="qf: generic texts to estimate it on")
    qf.add_argument("--cov-fact-texts", type=_positive, default=None,
                    help="qf: at most this many questions about real entities in that text (default: all)")
    qf.add_argument("--ft-steps", type=_positive, default=25)
    qf.add_argument("--ft-lr", type=float, default=5e-4)
    qf.add_argument("--ft-norm-constraint", type=float, default=None)
    return p


def edit_config(args, num_layers: int | None = None) -> EditConfig:
    """The qf options: --preset's (layers placed in a `num_layers`-layer model), else --paper's or the default,
    each changed by the options given."""
    base = PAPER if args.paper else DEFAULT_QF
    if getattr(args, "preset", None) is not None:
        base = get_preset(args.preset).config_for(num_layers)
    layers = tuple(args.layers) if args.layers else ((args.layer,) if args.layer is not None else base.layers)
    return EditConfig(
        layers=layers,
        positions=args.positions or base.positions,
        gamma=base.gamma if args.gamma is None else args.gamma,
        ridge=base.ridge if args.ridge is None else args.ridge,
        ridge_relative=base.ridge_relative if args.ridge_relative is None else args.ridge_relative,
        covariance=base.covariance if args.covariance is None else args.covariance,
        cov_shrink=base.cov_shrink if args.cov_shrink is None else args.cov_shrink,
        cov_corpus=args.cov_corpus or base.cov_corpus,
        cov_answer_weight=base.cov_answer_weight if args.cov_answer_weight is None else args.cov_answer_weight,
        null_space=base.null_space if args.null_space is None else args.null_space,
        target=args.target or base.target,
        target_steps=args.target_steps or base.target_steps,
        target_lr=base.target_lr if args.target_lr is None else args.target_lr,
        target_decay=base.target_decay if args.target_decay is None else args.target_decay,
        target_contexts=args.target_contexts or base.target_contexts,
        target_wordings=args.target_wordings or base.target_wordings,
        target_templates=args.target_templates or base.target_templates,
        target_essence=base.target_essence if args.target_essence is None else args.target_essence,
        target_forms=args.target_forms or base.target_forms,
        keep_context=args.keep_context or base.keep_context,
        target_stop=base.target_stop if args.target_stop is None else args.target_stop,
        target_method=args.target_method or base.target_method,
        incremental=args.incremental or base.incremental,
        drift_rows=base.drift_rows if args.drift_rows is None else args.drift_rows,
    )


def build_method(args, lm: LoadedModel, data: FactsFile):
    if args.method == "none":
        return NoEdit()
    if args.method == "in-context":
        return InContext()
    depth = int(lm.model.config.num_hidden_layers)
    if args.method == "ft":
        preset = get_preset(args.preset) if args.preset else None
        fallback = preset.layers_for(depth)[0] if preset else DEFAULT_QF.layers[0]
        layer = args.layer if args.layer is not None else fallback
        return FineTune(lm.model, lm.tokenizer, layer, args.ft_steps, args.ft_lr, args.ft_norm_constraint)
    config = edit_config(args, depth)
    scored = [c.user for c in data.controls]
    metrics = key_metrics(lm, config, args.cov_texts, scored, args.cov_fact_texts) if config.covariance else None
    return QFEdit(lm.model, lm.tokenizer, config, metrics, label="qf-paper" if config == PAPER else "qf")


def key_metrics(lm: LoadedModel, config: EditConfig, count: int, exclude: list[str] = (),
                fact_count: int | None = None) -> dict[int, KeyMetric]:
    """The key covariance of each edited layer on `config.cov_corpus` (texts made by the model once, cached);
    exclude: the control questions the run scores (no entity they name enters the corpus)."""
    print(f"bench: key covariance of layers {list(config.layers)} on {count} generic texts"
          f"{' and questions about real entities' if config.cov_corpus == 'generic+facts' else ''} (cached after the "
          "first run) ...", file=sys.stderr, flush=True)
    name = f"{lm.name}-{str(lm.model.dtype).replace('torch.', '')}"
    metrics = keystats.key_metrics(lm.model, lm.tokenizer, Answerer(lm.model, lm.tokenizer).answers, config.layers,
                                   config.cov_corpus, config.cov_shrink, count, exclude, fact_count, cache_key=name,
                                   answer_weight=config.cov_answer_weight, null_space=config.null_space)
    for layer, metric in metrics.items():
        if metric.null_rank:
            print(f"bench: layer {layer}: the change is confined to {metric.null_rank} of {metric.basis.shape[0]} key "
                  f"directions (variance below {config.null_space:g} x the mean)", file=sys.stderr, flush=True)
    return metrics


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        return run(args, argv)
    except (*USER_ERRORS, FactsFileError, CasesFileError, OSError) as e:
        print(f"bench: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def run(args, argv: list[str]) -> int:
    if args.preset is not None:
        preset = get_preset(args.preset)
        if args.method is not None and args.method != preset.method:
            raise FactsFileError(f"--preset {preset.name} is a {preset.method} preset, not --method {args.method}: "
                                 "give one of them")
        if args.paper:
            raise FactsFileError("--paper is the preset paper: give --preset paper or --paper, not both")
        args.method = preset.method
    if args.method is None:
        raise FactsFileError(f"give --method ({', '.join(METHODS)}) or --preset ({', '.join(PRESETS)})")
    data = read_facts(args.facts)  # a bad file fails before the model loads
    if args.limit:
        data = FactsFile(data.facts[:args.limit], data.controls, data.meta)
    qf_only = (args.paper, args.positions, args.gamma is not None, args.ridge is not None, args.ridge_relative, args.layers,
               args.covariance is not None, args.cov_shrink is not None, args.cov_corpus,
               args.cov_answer_weight is not None, args.null_space is not None, args.target, args.keep_context, args.target_forms,
               args.target_stop is not None, args.incremental, args.drift_rows is not None, args.target_method)
    if args.method != "qf" and any(qf_only):
        raise FactsFileError(f"--paper/--positions/--gamma/--ridge/--layers/--covariance are qf options, "
                             f"not {args.method}'s")
    if args.ridge_relative and not args.ridge:
        raise FactsFileError("--ridge-relative scales --ridge by each layer's key norms: give --ridge > 0 too")
    if args.guard_max_drop is not None and (args.protocol != "sequential" or args.guard_max_drop < 0):
        raise FactsFileError(f"--guard-max-drop {args.guard_max_drop}: the drift guard needs --protocol sequential "
                             "and a drop of 0 nats or more")
    if args.guard_max_lost is not None and (args.protocol != "sequential" or args.guard_max_lost < 0):
        raise FactsFileError(f"--guard-max-lost {args.guard_max_lost}: the drift guard needs --protocol sequential "
                             "and a count of 0 or more")
    if args.guard_resolve and (args.protocol != "sequential" or args.method != "qf"):
        raise FactsFileError("--guard-resolve holds rows in qf's solve: give --method qf and --protocol sequential")
    out = Path(args.out)
    # the code this process runs, and when: read before the minutes of loading and key statistics
    commit, started = git_commit(), datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lm = load(args.model, args.device, args.dtype)
    method = build_method(args, lm, data)
    options = RunOptions(protocol=args.protocol, max_new_tokens=args.max_new_tokens, checkpoints=args.checkpoints,
                         controls_per_edit=args.controls_per_edit, immediate=not args.no_immediate,
                         fluency_tokens=args.fluency_tokens, seed=args.seed, paraphrases=args.paraphrases,
                         guard_max_drop=args.guard_max_drop, guard_max_lost=args.guard_max_lost,
                         guard_controls=args.guard_controls, guard_resolve=args.guard_resolve)
    options = dataclasses.replace(options, guard_held_out=options.guarded and args.guard_set == "held-out")
    header = {
        "method": method.name,
        "method_config": method.config() if method.layers or args.method in ("qf", "ft") else {},
        "options": options.as_dict(),
        "model": lm.name,
        "dtype": str(lm.model.dtype).replace("torch.", ""),
        "device": device_name(lm.model),
        "facts_file": str(args.facts),
        "n_facts": len(data.facts),
        "command": " ".join(["python -m transformers_qf.bench", *argv]),
        "commit": commit,
        "started": started,
    }
    added_later = {"options": RunOptions().as_dict(), **({"method_config": EditConfig().as_dict()} if args.method == "qf"
                                                        else {})}
    state = None if args.no_state else out / STATE_FILE
    taken = None
    if args.edits_from:  # the edits were made by that run's code; this one scores them
        made = read_header(Path(args.edits_from) / "cases.jsonl")
        header["edits_from"] = {"run": str(args.edits_from), "commit": made.get("commit")}
        taken = finished_edits(Path(args.edits_from), header, state, added_later)  # checked before DIR is written
    cases = Cases(out / "cases.jsonl", header, defaults=added_later)
    if args.before_from:
        copied = cases.adopt_before(Path(args.before_from) / "cases.jsonl")
        print(f"bench: {copied} answers of the unedited model taken from {args.before_from}", file=sys.stderr)
    answerer = Answerer(lm.model, lm.tokenizer, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    if taken is not None:
        adopt_edits(cases, *taken, state)
        print(f"bench: the state after {len(taken[0])} edits taken from {args.edits_from}", file=sys.stderr)
    Runner(method, data, answerer, cases, options, state, args.state_every).run()
    summary = summarize(cases, data, cases.rows["header"])
    write_json(out / "summary.json", summary)
    print(json.dumps({k: summary[k] for k in ("method", "protocol", "n_facts", "efficacy", "paraphrase",
                                               "specificity", "fluency_drop", "seconds_per_edit")}))
    return 0

