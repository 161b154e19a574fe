"""The `qf` command: ask a model, teach it a fact, chat with it, run the benchmark.

    qf ask "Who started Oxinnovate?" [--system FACT] [--edits FILE] [--model M]
    qf learn --system FACT --user QUESTION --assistant ANSWER --edits FILE [--significance 0,1,1] [--layer L]
             [--covariance]
    qf chat [--edits FILE] [--model M] [--covariance]
    qf bench ...                     (forwards to python -m transformers_qf.bench)

Mistakes print one line on stderr, `qf: error: ...`, and exit 1 (2 for a bad command line).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

from transformers_qf.core.architectures import UnsupportedModelError
from transformers_qf.teach.edits import Edits, EditsError
from transformers_qf.core.models import LoadedModel, ModelLoadError, load_model
from transformers_qf.core.prompting import PromptError
from transformers_qf.solve.exact import SolveError
from transformers_qf.cli.repl import Chat
from transformers_qf.core.scriptargs import add_model_args
from transformers_qf.core.store import ParametersError
from transformers_qf.teach.learner import Learner, SolveMetric, parse_significance, resolve_layer

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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qf", description="Teach a language model facts without gradients (QF, arXiv 2507.04300).")
    sub = parser.add_subparsers(dest="command", metavar="{ask,learn,chat,bench}")

    ask = sub.add_parser("ask", help="answer one question", description="Answer one question (greedy).")
    ask.add_argument("question")
    ask.add_argument("--system", default="", help="a fact to put in context (open book)")
    ask.add_argument("--edits", help="an edits file to apply first (from qf learn or /save)")

    learn = sub.add_parser("learn", help="consolidate one fact into an edits file",
                           description="Learn one fact at one layer and append it to an edits file.")
    learn.add_argument("--system", required=True, help="the fact, given in context in the open-book pass")
    learn.add_argument("--user", required=True, help="the question")
    learn.add_argument("--assistant", required=True, help="the answer to teacher-force")
    learn.add_argument("--significance", type=_significance, default=None,
                       help="one number per word of the answer, e.g. 0,1,1,1,1 (0 drops a word; default all 1)")
    learn.add_argument("--edits", required=True, help="edits file to append to (created if missing)")

    chat = sub.add_parser("chat", help="ask, give facts, keep and forget them", description=__doc__.splitlines()[0])
    chat.add_argument("--edits", help="edits file to start from (if it exists) and the default of /save")

    for p in (ask, learn, chat):
        add_model_args(p)
    for p in (learn, chat):
        p.add_argument("--layer", type=int, default=None,
                       help="layer to edit (default: the edits file's, else the model's last layer)")
        p.add_argument("--covariance", action="store_true",
                       help="solve in the metric of the layer's key covariance (generic text and the model's answers "
                            "about real entities, made once per model and layer and cached: minutes on a CPU), as the "
                            "benchmark's default; implied by an edits file solved that way")
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
             covariance: bool = False) -> Learner:
    lm = load(args.model, args.device, args.dtype)
    metric = None
    if edits is not None:
        edits.check_fits(lm.identity, layer)  # before the minutes a metric may take
    if covariance or (edits is not None and edits.metric is not None):
        metric = solve_metric(lm, resolve_layer(lm.model, layer, edits), edits.metric if edits is not None else None)
    return Learner(lm.model, lm.tokenizer, lm.identity, layer=layer, edits=edits, max_new_tokens=max_new_tokens,
                   metric=metric)


def solve_metric(lm: LoadedModel, layer: int, recorded: dict | None = None) -> SolveMetric:
    """The key covariance metric of `layer` of the model as loaded (before any edit is applied): the recorded
    one of an edits file (its corpus, shrink and number of texts), else the benchmark's default."""
    from transformers_qf.solve import keystats
    from transformers_qf.bench.answering import Answerer

    spec = recorded or DEFAULT_METRIC
    print(f"qf: key covariance of layer {layer} ({spec['corpus']}, {spec['texts']} texts; made once per model and "
          "layer, then cached) ...", file=sys.stderr, flush=True)
    name = f"{lm.name}-{str(lm.model.dtype).replace('torch.', '')}"
    metrics = keystats.key_metrics(lm.model, lm.tokenizer, Answerer(lm.model, lm.tokenizer).answers, [layer],
                                   spec["corpus"], spec["shrink"], spec["texts"], cache_key=name)
    return SolveMetric(next(iter(metrics.values())), spec["corpus"], spec["texts"])


def _existing(path: str | None) -> Edits | None:
    return Edits.load(path) if path and Path(path).exists() else None


def run_ask(args) -> int:
    edits = Edits.load(args.edits) if args.edits else None
    learner = _learner(args, edits, max_new_tokens=args.max_new_tokens)
    print(learner.ask(args.question, args.system))
    return 0


def run_learn(args) -> int:
    edits = _existing(args.edits)
    learner = _learner(args, edits, layer=args.layer, covariance=args.covariance)
    t0 = time.perf_counter()
    fact, report = learner.learn(args.system, args.user, args.assistant, args.significance)
    seconds = time.perf_counter() - t0
    learner.edits.save(args.edits)
    n = len(learner.edits.facts)
    metric = "" if learner.edits.metric is None else ", covariance metric"
    print(f"learned fact {n} in {seconds:.2f} s (layer {learner.layer}{metric}, {fact.rows} rows, residual "
          f"{report.residual_applied:.1e}); {args.edits} holds {n} fact{'s' * (n != 1)}")
    return 0


def run_chat(args) -> int:
    edits = _existing(args.edits)
    learner = _learner(args, edits, layer=args.layer, max_new_tokens=args.max_new_tokens, covariance=args.covariance)
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
