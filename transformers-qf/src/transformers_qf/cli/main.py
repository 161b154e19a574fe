"""The `qf` command: ask a model, teach it a fact, chat with it, run the benchmark.

    qf ask "Who started Oxinnovate?" [--system FACT] [--edits FILE] [--model M]
    qf learn "The capital of Zubrovia is Pelmora." --edits FILE [--preset NAME] [--model M]
    qf learn --system FACT --user QUESTION --assistant ANSWER --edits FILE [--significance 0,1,1] [--layer L]
             [--preset NAME] [--covariance] [--target VALUE] [--subject NAME]
    qf chat [--edits FILE] [--model M] [--preset NAME] [--covariance]
    qf bench ...                     (forwards to python -m transformers_qf.bench; takes --preset too)

Mistakes print one line on stderr, `qf: error: ...`, and exit 1 (2 for a bad command line or a fact that
teaches nothing; then nothing is written).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

from transformers_qf.core.architectures import UnsupportedModelError
from transformers_qf.editing.presets import DEFAULT_PRESET, PRESETS, SOURCE
from transformers_qf.teach.edits import Edits, EditsError
from transformers_qf.core.models import LoadedModel, ModelLoadError, load_model
from transformers_qf.core.prompting import FactError, PromptError, check_fact_text
from transformers_qf.solve.exact import SolveError
from transformers_qf.cli.repl import Chat
from transformers_qf.core.scriptargs import add_model_args
from transformers_qf.core.store import ParametersError
from transformers_qf.teach.learner import SolveMetric, make_learner, metric_layers, parse_significance
from transformers_qf.teach.sentence import derive

BENCH_MODULE = "transformers_qf.bench"
DEFAULT_METRIC = {"corpus": "generic+facts", "shrink": 0.1, "texts": 256}  # the benchmark's default (editor.RECOMMENDED)
EXPECTED = (ModelLoadError, EditsError, PromptError, SolveError, UnsupportedModelError, ParametersError,
            FloatingPointError, OSError)


def load(spec: str | None, device: str | None, dtype: str | None) -> LoadedModel:
    """How the CLI gets its model (tests replace this to inject a tiny one)."""
    print(f"qf: loading {spec or 'the default model'} ...", file=sys.stderr, flush=True)
    return load_model(spec, device, dtype)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _significance(text: str) -> list[float]:
    try:
        return parse_significance(text)
    except PromptError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def presets_epilog() -> str:
    """The presets for --help: what each does, what it cost and scored."""
    lines = [f"presets (measured: {SOURCE}):"]
    for p in PRESETS.values():
        default = " [default]" if p.name == DEFAULT_PRESET else ""
        lines.append(f"  {p.name}{default}: {p.what}\n      {p.cost}; {p.scores}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qf", description="Teach a language model facts without gradients (QF, arXiv 2507.04300).")
    sub = parser.add_subparsers(dest="command", metavar="{ask,learn,chat,bench}")

    ask = sub.add_parser("ask", help="answer one question", description="Answer one question (greedy).")
    ask.add_argument("question")
    ask.add_argument("--system", default="", help="a fact to put in context (open book)")
    ask.add_argument("--edits", help="an edits file to apply first (from qf learn or /save)")

    learn = sub.add_parser("learn", help="consolidate one fact into an edits file",
                           description="Learn one fact and append it to an edits file. One sentence is enough: the "
                           "question it answers and its value are derived (a template for 'The R of S is O.', else "
                           "the model rewrites it into a question); --system/--user/--assistant give full control.",
                           epilog=presets_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    learn.add_argument("sentence", nargs="?", default=None, help="the fact as one sentence")
    learn.add_argument("--system", default=None, help="the fact, given in context in the open-book pass "
                       "(default: the sentence)")
    learn.add_argument("--user", default=None, help="the question (default: derived from the fact)")
    learn.add_argument("--assistant", default=None, help="the answer to teacher-force (default: the fact)")
    learn.add_argument("--target", default=None, help="the answer's value, for the presets that edit its rows "
                       "(default: derived)")
    learn.add_argument("--subject", default=None, help="what the fact is about, for the intact preset (default: derived)")
    learn.add_argument("--significance", type=_significance, default=None,
                       help="one number per word of the answer, e.g. 0,1,1,1,1 (0 drops a word; default all 1)")
    learn.add_argument("--edits", required=True, help="edits file to append to (created if missing)")

    chat = sub.add_parser("chat", help="ask, give facts, keep and forget them", description=__doc__.splitlines()[0],
                          epilog=presets_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    chat.add_argument("--edits", help="edits file to start from (if it exists) and the default of /save")

    for p in (ask, learn, chat):
        add_model_args(p)
    for p in (learn, chat):
        p.add_argument("--preset", choices=list(PRESETS), default=None, metavar="{" + ",".join(PRESETS) + "}",
                       help=f"how to teach (default: the edits file's, else {DEFAULT_PRESET}; listed below)")
        p.add_argument("--layer", type=int, default=None,
                       help="layer to edit (default: the edits file's, else the preset's)")
        p.add_argument("--covariance", action="store_true", default=None,
                       help="solve in the metric of the layer's key covariance (generic text and the model's answers "
                            "about real entities, made once per model and layer and cached: minutes on a CPU), as "
                            "preset qf-fast does; implied by an edits file solved that way")
    for p in (ask, chat):
        p.add_argument("--max-new-tokens", type=_positive, default=48, help="answer length cap (default 48)")
    sub.add_parser("bench", help=f"run the benchmark (python -m {BENCH_MODULE})", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":
        return bench(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.error("choose a command: ask, learn, chat or bench")
    except SystemExit as e:
        return int(e.code or 0)
    try:
        return {"ask": run_ask, "learn": run_learn, "chat": run_chat}[args.command](args)
    except FactError as e:  # bad input: nothing was written
        print(f"qf: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except EXPECTED as e:
        print(f"qf: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qf: interrupted", file=sys.stderr)
        return 130


def _one_line(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, OSError) and e.filename:
        text = f"{e.strerror or text}: {e.filename}"
    return text


def _learner(args, edits: Edits | None, layer: int | None = None, max_new_tokens: int = 48,
             covariance: bool | None = None, preset: str | None = None, learning: bool = True):
    lm = load(args.model, args.device, args.dtype)
    if edits is not None:
        edits.check_fits(lm.identity, layer if edits.keeps_rows else None)  # before the minutes a metric may take
    layers = metric_layers(lm.model, preset, edits, layer, covariance, learning)
    metrics = solve_metrics(lm, layers, edits.metric if edits is not None else None) if layers else None
    return make_learner(lm.model, lm.tokenizer, lm.identity, preset, edits, layer, max_new_tokens, metrics, covariance)


def solve_metrics(lm: LoadedModel, layers: list[int], recorded: dict | None = None) -> dict[int, SolveMetric]:
    """The key covariance metric of each of `layers` of the model as loaded (before any edit is applied): the
    recorded one of an edits file (its corpus, shrink and number of texts), else the presets' (DEFAULT_METRIC)."""
    from transformers_qf.solve import keystats
    from transformers_qf.bench.answering import Answerer

    spec = recorded or DEFAULT_METRIC
    which = f"layer {layers[0]}" if len(layers) == 1 else f"layers {','.join(map(str, layers))}"
    print(f"qf: key covariance of {which} ({spec['corpus']}, {spec['texts']} texts; made once per model and "
          "layer, then cached) ...", file=sys.stderr, flush=True)
    name = f"{lm.name}-{str(lm.model.dtype).replace('torch.', '')}"
    metrics = keystats.key_metrics(lm.model, lm.tokenizer, Answerer(lm.model, lm.tokenizer).answers, list(layers),
                                   spec["corpus"], spec["shrink"], spec["texts"], cache_key=name)
    return {layer: SolveMetric(keys, spec["corpus"], spec["texts"]) for layer, keys in metrics.items()}


def _existing(path: str | None) -> Edits | None:
    return Edits.load(path) if path and Path(path).exists() else None


def run_ask(args) -> int:
    edits = Edits.load(args.edits) if args.edits else None
    learner = _learner(args, edits, max_new_tokens=args.max_new_tokens, learning=False)
    print(learner.ask(args.question, args.system))
    return 0


def run_learn(args) -> int:
    if args.sentence is None and args.system is None:
        raise FactError("give the fact as one sentence (qf learn \"The capital of Zubrovia is Pelmora.\" --edits F), "
                        "or --system FACT --user QUESTION --assistant ANSWER")
    if args.sentence is not None and args.system is not None:
        raise FactError("give the fact once: as the sentence or as --system, not both")
    fact = args.sentence if args.sentence is not None else args.system
    check_fact_text(fact)  # before the model loads (the learner checks every fact again)
    edits = _existing(args.edits)
    learner = _learner(args, edits, layer=args.layer, covariance=args.covariance, preset=args.preset)
    question, answer, target, subject = args.user, args.assistant or fact, args.target, args.subject
    if question is None:
        derived = derive(fact, learner.model, learner.tokenizer)
        question, target, subject = derived.question, target or derived.target, subject or derived.subject
        print(f"qf: asked as {question!r}, value {target!r} ({derived.how})", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    learned, report = learner.learn(fact, question, answer, args.significance, target=target, subject=subject)
    seconds = time.perf_counter() - t0
    learner.edits.save(args.edits)
    n = len(learner.edits.facts)
    residual = report.residual_applied if hasattr(report, "residual_applied") else report.get("residual")
    rows = learned.rows if learned.rows else (report.get("rows", 0) if isinstance(report, dict) else 0)
    tail = "" if residual is None else f", residual {residual:.1e}"
    print(f"learned fact {n} in {seconds:.2f} s ({learner.describe}, {rows} rows{tail}); {args.edits} holds {n} "
          f"fact{'s' * (n != 1)}")
    return 0


def run_chat(args) -> int:
    edits = _existing(args.edits)
    learner = _learner(args, edits, layer=args.layer, max_new_tokens=args.max_new_tokens, covariance=args.covariance,
                       preset=args.preset)
    try:
        import readline  # noqa: F401 - line editing and history at the prompt
    except ImportError:
        pass
    return Chat(learner, edits_path=args.edits).run()


def bench(args: list[str]) -> int:
    """Forward to `python -m transformers_qf.bench ARGS`."""
    if importlib.util.find_spec(BENCH_MODULE) is None:
        print(f"qf: the benchmark is not built yet ({BENCH_MODULE} is missing)", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, "-m", BENCH_MODULE, *args])


if __name__ == "__main__":
    sys.exit(main())
