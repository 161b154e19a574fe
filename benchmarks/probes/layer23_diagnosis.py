"""Why QF at layer 23 closes only part of the gap on the paper's first fact: the diagnosis, in one run.

    python benchmarks/probes/layer23_diagnosis.py [--model M] [--dtype float32] [--layer 23] [--out results/qf]

The paper's first fact as `qf_learn_simple.py` defines it ("Oxinnovate was started by Qi.", significance
[0, 1, 1, 1, 1]). Every row scores the same thing, log p of each of the answer's tokens, teacher-forced after
`<|im_start|>assistant\\n` in the closed-book sequence (no fact in the system turn) unless it says open book:

- open book, and closed book with W (before) and with QF's W' (after);
- activation patching, no weight changed: the closed-book pass with layer L's output (the residual stream
  after it, which is what QF's constraint `W'u' + v' = Wu + v` fixes) replaced by the open-book pass's at
  the same tokens: at QF's kept rows (significance > 0), at every answer row, at the user turn too, and at
  every position (the system turn's header and closing as well: all the closed book has);
- W' solved with every significance 1;
- the original tokenization (the answer's words tokenized without spaces), before / after / open book on its
  own tokens;
- the original numerics: the model in bfloat16 for recording and scoring, eq. 3 in float32 with a
  pseudo-inverse, W' stored in bfloat16 (before / after / open book, all in bfloat16). Runs last.

Writes OUT/layer23_diagnosis.md and .json.
"""

# no `from __future__ import annotations`: a dataclass needs its module registered to read string annotations,
# and the tests load this file as a script, unregistered
import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the fact and layer are qf_learn_simple.py's

from qf_learn_simple import FACT_1, LAYER  # noqa: E402

from transformers_qf import QF, load_model, locate  # noqa: E402
from transformers_qf.core import prompting  # noqa: E402
from transformers_qf.core.architectures import num_layers  # noqa: E402
from transformers_qf.core.capture import hidden_keys, patched_output, record  # noqa: E402
from transformers_qf.core.errors import USER_ERRORS  # noqa: E402
from transformers_qf.core.report import provenance, provenance_lines, write_json  # noqa: E402
from transformers_qf.core.scriptargs import add_model_args  # noqa: E402
from transformers_qf.core.facts import Fact  # noqa: E402
from transformers_qf.solve.exact import solve  # noqa: E402

@dataclass
class Pair:
    """The open- and closed-book teacher-forced sequences of one fact, and where they line up.

    rows: [m] closed-book positions that predict the answer's tokens `targets` [m] (not the header's two
    rows, not `<|im_end|>`); the open-book position of closed-book position p is `to_open(p)`.
    """

    open: prompting.TeacherForced
    closed: prompting.TeacherForced
    shift: int  # the fact's length in tokens: open = closed + shift after the system turn's header
    head: int  # tokens of `<|im_start|>system\n`, the same positions in both
    rows: torch.Tensor
    targets: torch.Tensor

    def to_open(self, positions: torch.Tensor) -> torch.Tensor:
        return torch.where(positions < self.head, positions, positions + self.shift)


def make_pair(tokenizer, fact: Fact, significance=None, original_tokenization: bool = False) -> Pair:
    open_tf, closed_tf = prompting.teacher_forced_many(tokenizer, [fact.system, ""], fact.user, fact.answer,
                                                       significance, original_tokenization)
    header = len(prompting.encode(tokenizer, prompting.ANSWER_HEADER)) - 1  # rows predicting `assistant`, `\n`
    head = len(prompting.encode(tokenizer, "<|im_start|>system\n"))
    pair = Pair(open_tf, closed_tf, len(open_tf.input_ids) - len(closed_tf.input_ids), head,
                closed_tf.kept[header:-1], closed_tf.targets[header:-1])
    every = torch.arange(len(closed_tf.input_ids))
    if not torch.equal(open_tf.input_ids[pair.to_open(every)], closed_tf.input_ids):
        raise prompting.PromptError("the closed-book tokens do not line up with the open-book ones: "
                                    "the system turn's header tokenizes differently with the fact")
    return pair


def position_sets(tokenizer, pair: Pair, user: str) -> dict[str, torch.Tensor]:
    """Closed-book positions to patch: QF's kept rows, every answer row, from the user turn on, every position."""
    n = len(pair.closed.input_ids)
    user_start = prompting.user_turn_start(tokenizer, prompting.chatml_prompt("", user))
    return {"kept": pair.closed.nonzero().kept, "answer": pair.closed.kept,
            "user+answer": torch.arange(user_start, n), "all": torch.arange(n)}


@torch.no_grad()
def token_logps(model, ids: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p of `targets` [m] at positions `rows` [m] of one teacher-forced sequence `ids` [n]: [m] (float64)."""
    device = next(model.parameters()).device
    logits = model(input_ids=ids.view(1, -1).to(device), use_cache=False).logits[0, rows.to(device)]
    logp = torch.log_softmax(logits.double(), dim=-1)
    return logp[torch.arange(len(rows)), targets.to(device)].cpu()


def layer_output(model, layer: int, ids: torch.Tensor) -> torch.Tensor:
    """The residual stream after decoder layer `layer` at every position: [n, d_model] (= v + MLP output)."""
    rec = record(model, locate(model, layer), ids)[0]
    return rec.v + rec.y


def scored(name: str, what: str, logps: torch.Tensor, **extra) -> dict:
    return {"name": name, "what": what, "logp": [float(x) for x in logps], "sum": float(logps.sum()), **extra}


def edit_rows(model, tokenizer, fact: Fact, layer: int, significance, original_tokenization: bool,
              pair: Pair) -> tuple[torch.Tensor, dict]:
    """Closed-book log p with QF's W' (one round, solved in float64 from W) in the model; W back afterwards."""
    qf = QF(model, tokenizer, layer=layer, folder=None, original_tokenization=original_tokenization,
            cuda_graphs=False)
    try:
        report = qf.learn(fact.system, fact.user, fact.answer, significance)
        return token_logps(model, pair.closed.input_ids, pair.rows, pair.targets), report.as_dict()
    finally:
        qf.revert()


def patching_rows(model, tokenizer, fact: Fact, layer: int, pair: Pair) -> list[dict]:
    """The closed-book pass with layer `layer`'s output patched from the open-book pass (model unchanged)."""
    opened = layer_output(model, layer, pair.open.input_ids)
    block = locate(model, layer).layer
    out = []
    what = {"kept": "QF's kept rows (significance > 0)", "answer": "every answer row (significance 0 too)",
            "user+answer": "the user turn and every answer row", "all": "every position (system turn too)"}
    for name, positions in position_sets(tokenizer, pair, fact.user).items():
        with patched_output(block, positions, opened[pair.to_open(positions)]):
            logps = token_logps(model, pair.closed.input_ids, pair.rows, pair.targets)
        out.append(scored(f"patch L{layer}: {name}", f"layer {layer}'s open-book output at {what[name]}", logps,
                          positions=positions.tolist()))
    return out


def blind_above(model, layer: int, pair: Pair) -> dict:
    """The open-book pass with the layers above `layer` unable to attend to the fact's tokens: the fact reaches
    them only through what layers 0..layer wrote into the other positions, as in the closed-book pass patched at
    every position."""
    above = [locate(model, i).layer for i in range(layer + 1, num_layers(model))]
    fact = torch.arange(pair.head, pair.head + pair.shift)
    with hidden_keys(above, fact, len(pair.open.input_ids)):
        logps = token_logps(model, pair.open.input_ids, pair.to_open(pair.rows), pair.targets)
    return scored(f"open book, layers > {layer} blind to the fact", f"open book; layers {layer + 1}.."
                  f"{num_layers(model) - 1} cannot attend to the fact's {pair.shift} tokens", logps)


def original_numerics(model, tokenizer, fact: Fact, layer: int, pair: Pair) -> dict:
    """Before / after / open book with the model in bfloat16, eq. 3 in float32 by pseudo-inverse, W' stored in
    bfloat16. The model is left in bfloat16 (with W)."""
    model.to(torch.bfloat16)
    parts = locate(model, layer)
    W = parts.down.weight.data.clone()
    score = lambda tf, rows: token_logps(model, tf.input_ids, rows, pair.targets)  # noqa: E731
    before, open_book = score(pair.closed, pair.rows), score(pair.open, pair.to_open(pair.rows))
    kept = [tf.nonzero() for tf in (pair.open, pair.closed)]
    (o, c) = record(model, parts, [tf.input_ids for tf in kept])
    _, report = solve(parts.down.weight.data, o.u[kept[0].kept], c.u[kept[1].kept], o.v[kept[0].kept],
                      c.v[kept[1].kept], pinv_dtype=torch.float32, apply=True)
    try:
        after = score(pair.closed, pair.rows)
    finally:
        parts.down.weight.data.copy_(W)
    return {"before": before, "after": after, "open": open_book, "solve": report.as_dict()}


def variant(name: str, what: str, before, after, open_book, tokens: list[str], solve_report: dict) -> dict:
    gap = float(open_book.sum() - before.sum())
    return {"name": name, "what": what, "tokens": tokens, "solve": solve_report,
            "rows": [scored("closed, W", "before", before), scored("closed, W'", "after", after),
                     scored("open book", "reference", open_book)],
            "gap_closed": float(after.sum() - before.sum()) / gap if gap else float("nan")}


def tokens_of(tokenizer, targets: torch.Tensor) -> list[str]:
    return [tokenizer.decode([int(t)]) for t in targets]


def diagnose(model, tokenizer, fact: Fact = FACT_1, layer: int = LAYER, numerics: bool = True, log=print) -> dict:
    """Every row of the diagnosis (see the module docstring). With `numerics`, the original-numerics variant runs
    last and leaves the model in bfloat16."""
    pair = make_pair(tokenizer, fact, fact.significance)
    open_book = token_logps(model, pair.open.input_ids, pair.to_open(pair.rows), pair.targets)
    before = token_logps(model, pair.closed.input_ids, pair.rows, pair.targets)
    after, report = edit_rows(model, tokenizer, fact, layer, fact.significance, False, pair)
    log(f"open {open_book.sum():.2f}, closed {before.sum():.2f}, W' {after.sum():.2f} ({report['residual']:.1e})")
    rows = [scored("open book, W", "the fact in the system turn (reference)", open_book),
            scored("closed book, W", "before the edit", before),
            scored("closed book, W'", f"after QF's edit, significance {fact.significance}", after, solve=report)]
    rows += patching_rows(model, tokenizer, fact, layer, pair)
    rows.append(blind_above(model, layer, pair))
    ones, ones_report = edit_rows(model, tokenizer, fact, layer, None, False, pair)
    rows.append(scored("closed book, W' (all ones)", "after QF's edit with every significance 1", ones,
                       solve=ones_report))
    for r in rows[3:]:
        log(f"{r['name']}: {r['sum']:.2f}")
    gap = float(open_book.sum() - before.sum())
    for r in rows:
        r["gap_closed"] = (r["sum"] - float(before.sum())) / gap if gap else float("nan")
    variants = [original_tokenization(model, tokenizer, fact, layer)]
    if numerics:
        n = original_numerics(model, tokenizer, fact, layer, pair)
        variants.append(variant("original numerics", "bfloat16 model (recording, scoring), float32 pinv, bfloat16 W'",
                                n["before"], n["after"], n["open"], tokens_of(tokenizer, pair.targets), n["solve"]))
    for v in variants:
        log(f"{v['name']}: gap closed {v['gap_closed']:.2f}")
    return {"fact": {"system": fact.system, "user": fact.user, "answer": fact.answer,
                     "significance": fact.significance}, "layer": layer,
            "tokens": tokens_of(tokenizer, pair.targets), "rows": rows, "variants": variants,
            "kept_rows": len(pair.closed.nonzero().kept), "answer_rows": len(pair.closed.kept)}


def original_tokenization(model, tokenizer, fact: Fact, layer: int) -> dict:
    """Before / after / open book on the space-less answer's own tokens."""
    pair = make_pair(tokenizer, fact, fact.significance, original_tokenization=True)
    before = token_logps(model, pair.closed.input_ids, pair.rows, pair.targets)
    open_book = token_logps(model, pair.open.input_ids, pair.to_open(pair.rows), pair.targets)
    after, report = edit_rows(model, tokenizer, fact, layer, fact.significance, True, pair)
    return variant("original tokenization", "the answer's words tokenized without spaces, as the original code",
                   before, after, open_book, tokens_of(tokenizer, pair.targets), report)


# -- the report -----------------------------------------------------------------------------------------------
def _tok(token: str) -> str:
    return "`" + token.replace("|", "\\|").replace("`", "'").replace("\n", "\\n") + "`"


def render(result: dict) -> str:
    prov, d = result["provenance"], result["diagnosis"]
    tokens = d["tokens"]
    lines = ["# QF at layer {}: where the missing nats are".format(d["layer"]), "",
             "Written by `benchmarks/probes/layer23_diagnosis.py`; do not edit by hand.", ""]
    lines += provenance_lines(prov)
    lines += ["", f"Fact: system {d['fact']['system']!r}, user {d['fact']['user']!r}, answer "
              f"{d['fact']['answer']!r}, significance {d['fact']['significance']}. {d['kept_rows']} kept rows of "
              f"{d['answer_rows']} answer rows.", "",
              "log p of each answer token, teacher-forced in the closed-book sequence (open book: with the fact). "
              "Gap closed: (row − closed W) / (open − closed W).", "",
              "| row | what | " + " | ".join(_tok(t) for t in tokens) + " | sum | gap closed |",
              "|---|---|" + "---|" * (len(tokens) + 2)]
    for r in d["rows"]:
        lines.append(f"| {r['name']} | {r['what']} | " + " | ".join(f"{x:.2f}" for x in r["logp"])
                     + f" | **{r['sum']:.2f}** | {r['gap_closed']:.2f} |")
    lines += [""] + summary(d)
    for v in d["variants"]:
        lines += ["", f"## {v['name']}: {v['what']}", "",
                  "| row | " + " | ".join(_tok(t) for t in v["tokens"]) + " | sum |",
                  "|---|" + "---|" * (len(v["tokens"]) + 1)]
        lines += [f"| {r['name']} | " + " | ".join(f"{x:.2f}" for x in r["logp"]) + f" | **{r['sum']:.2f}** |"
                  for r in v["rows"]]
        s = v["solve"]
        lines += ["", f"Gap closed: {v['gap_closed']:.2f}. Solve: {s['method']}, {s['rows']} rows, residual "
                  f"{s['residual']:.1e} (W' as stored: {s['residual_applied']:.1e})."]
    lines += ["", "Solves (float64 unless said): " + "; ".join(
        f"{r['name']}: {r['solve']['rows']} rows, residual {r['solve']['residual']:.1e} "
        f"(as stored {r['solve']['residual_applied']:.1e}), ||W'-W||/||W|| {r['solve']['delta_rel']:.4f}"
        for r in d["rows"] if "solve" in r) + ".", ""]
    return "\n".join(lines)


def summary(d: dict) -> list[str]:
    """The numbers that say where the missing nats are, read off the rows."""
    L, row = d["layer"], {r["name"]: r for r in d["rows"]}
    open_book, edit = row["open book, W"], row["closed book, W'"]
    kept, every, blind = row[f"patch L{L}: kept"], row[f"patch L{L}: all"], row[f"open book, layers > {L} blind to the fact"]
    ones = row["closed book, W' (all ones)"]
    short = [o - e for o, e in zip(open_book["logp"], edit["logp"])]
    worst = max(range(len(short)), key=short.__getitem__)
    missing, beyond = open_book["sum"] - edit["sum"], open_book["sum"] - every["sum"]
    others = ", ".join(f"{v['name']} {v['gap_closed']:.2f}" for v in d["variants"])
    return [f"**Where the missing nats are.** After the edit the answer is {missing:.2f} nats short of the open book; "
            f"{short[worst]:.2f} of them at the token {_tok(d['tokens'][worst])}. Patching layer {L}'s open-book output "
            f"at the kept rows gives {kept['sum']:.2f} (the edit: {edit['sum']:.2f}); at every position of the closed "
            f"book, the most that QF's target (the open-book output of layer {L}) can give, {every['sum']:.2f} (gap "
            f"closed {every['gap_closed']:.2f}), leaving {beyond:.2f} nats. The open book with layers above {L} blind "
            f"to the fact's tokens gives {blind['sum']:.2f}, {abs(blind['sum'] - every['sum']):.2f} from that ceiling: "
            + (f"the {beyond:.2f} nats are what the layers above read from the fact's own tokens, which the closed book "
               "does not have. " if abs(blind["sum"] - every["sum"]) <= 0.1 * abs(beyond) + 0.05 else
               "they do not match, so the layers above reading the fact's tokens do not account for the rest. ")
            + "Every significance 1: gap closed "
            f"{ones['gap_closed']:.2f} (paper's: {edit['gap_closed']:.2f}); {others}."]


def main(argv=None) -> int:
    try:
        return run(argv)
    except USER_ERRORS as e:  # bad input: one line, exit 2, nothing written
        print(f"layer23_diagnosis.py: error: {e}", file=sys.stderr)
        return 2


def run(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--layer", type=int, default=LAYER, help=f"layer QF edits (default {LAYER})")
    parser.add_argument("--out", default="results/qf", help="where layer23_diagnosis.md/.json go")
    parser.add_argument("--no-numerics", action="store_true", help="skip the bfloat16 original-numerics variant")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    loaded = load_model(args.model, args.device, args.dtype)
    locate(loaded.model, args.layer)  # a bad layer fails before any work
    prov = provenance(loaded, next(loaded.model.parameters()).device, {
        "layer": args.layer,
        "command": " ".join(["python benchmarks/probes/layer23_diagnosis.py",
                             *(argv if argv is not None else sys.argv[1:])])})
    diagnosis = diagnose(loaded.model, loaded.tokenizer, FACT_1, args.layer, numerics=not args.no_numerics)
    prov["seconds"] = round(time.perf_counter() - t0, 1)
    result = {"provenance": prov, "diagnosis": diagnosis}
    out = Path(args.out)
    text = render(result)
    write_json(out / "layer23_diagnosis.json", result)
    (out / "layer23_diagnosis.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
