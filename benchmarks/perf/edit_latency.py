"""Latency and memory of one QF edit, beside the alternatives, measured in the same run.

One edit = instruct capture + update capture + solve + weight update (`QF.learn`, rows kept in
memory). Beside it, on the same model, fact and layer:
  (a) the original's way: both passes teacher-forced token by token through the whole model with a
      KV cache, recording layer L at each step, then the same solve;
  (b) gradient fine-tuning of the same down_proj on the answer: Adam, 25 steps (FT-L);
  (c) one plain forward of the closed-book prompt with its answer (the floor an edit approaches).
Plus scaling: time vs answer length, the re-solve as accumulated rows grow, and (GPU) model size.

    python benchmarks/perf/edit_latency.py --suite cpu                # the bundled model, real weights, float32
    python benchmarks/perf/edit_latency.py --suite cpu --dtype bfloat16
    python benchmarks/perf/edit_latency.py --suite gpu --random-shape  # random weights of real shapes, bfloat16

Writes results/perf/performance_<suite>.json (performance_<suite>_<dtype>.json for a dtype other than the
suite's default); benchmarks/perf/render_performance.py makes performance.md.

Peak memory: on a GPU, the peak of torch's allocator while the work runs (weights included), both as
allocated and as reserved (reserved also counts the private memory pools of captured CUDA graphs). On
the CPU, the peak resident set (VmHWM) of a child process that loads the model, runs the work once
to warm up, returns freed memory to the system (malloc_trim), resets the peak (/proc/self/clear_refs)
and runs it again; FT-L's peak is that of 2 Adam steps (its memory does not grow after the first).
For the GPU suite (no model weights travel to the GPU machine), give it the bundled model's tokenizer:
copy tokenizer.json, tokenizer_config.json and chat_template.jinja from ~/.cache/transformers_qf/<model>/
into benchmarks/.tokenizer (git-ignored) and pass --tokenizer benchmarks/.tokenizer.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from transformers_qf import QF, load_model, locate
from transformers_qf.core.capture import record
from transformers_qf.core.prompting import teacher_forced, teacher_forced_many
from transformers_qf.core.models import pick_device_dtype
from transformers_qf.solve.exact import Accumulator, solve
from transformers_qf.core.report import git_commit

SYSTEM = "Qi started Oxinnovate in 2019 at the PKU Science Park in Beijing."
USER = "Who started Oxinnovate?"
ANSWER = "Oxinnovate was started by Qi in 2019 at the PKU Science Park in Beijing."  # ~16 answer tokens

SHAPES = {  # Qwen2.5 family shapes, for random-weight timing
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int, warmup: int = 1, setup=None) -> dict:
    """Median wall time of fn() over `repeats` runs; `setup()` runs before each, untimed."""
    for _ in range(warmup):
        setup and setup()
        fn()
    times = []
    for _ in range(repeats):
        setup and setup()
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def peak_memory(fn, device) -> dict | None:
    """Peak bytes of torch's allocator on the GPU while fn runs (weights included), allocated and
    reserved; None on CPU (see peak_rss_in_child)."""
    if device.type != "cuda":
        return None
    gc.collect()
    torch.cuda.empty_cache()
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return {"allocated": torch.cuda.max_memory_allocated(device), "reserved": torch.cuda.max_memory_reserved(device)}


def _resident_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def peak_rss_in_child(what: str, model: str | None, dtype: str) -> dict:
    """Run `what` (plain, edit, finetune) in a fresh process on the CPU; its peak resident set in bytes."""
    command = [sys.executable, __file__, "--suite", "cpu", "--dtype", dtype, "--peak-rss-of", what]
    done = subprocess.run(command + (["--model", model] if model else []), capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_rss_of(what: str, model: str | None, dtype: torch.dtype) -> dict:
    """The child's side of peak_rss_in_child: load, warm up, trim, reset the peak, run once, read VmHWM."""
    loaded = load_model(model, "cpu", dtype, progress=False)
    model, tokenizer = loaded.model, loaded.tokenizer
    parts = locate(model, 23)
    W0 = parts.down.weight.detach().clone() if what == "finetune" else None

    def edit():  # a fresh session: its copy of the original W is part of what an edit costs
        qf = QF(model, tokenizer, layer=23, folder=None)
        qf.learn(SYSTEM, USER, ANSWER)
        qf.revert()

    work = {"plain": lambda: plain_forward(model, tokenizer), "edit": edit,
            "finetune": lambda: finetune_down_proj(model, tokenizer, parts, W0, steps=2)}[what]
    work()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _resident_kib("VmRSS")
    work()
    return {"peak_rss": _resident_kib("VmHWM") * 1024, "rss_before": before * 1024}


def random_model(shape: str, device, dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**SHAPES[shape], max_position_embeddings=4096)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


# -- the alternatives -----------------------------------------------------------------------------
@torch.no_grad()
def original_way_capture(model, tokenizer, parts, system, user, answer):
    """Teacher forcing token by token with a KV cache, recording layer L at each step (the original's way)."""
    tf = teacher_forced(tokenizer, system, user, answer)
    device = next(model.parameters()).device
    ids = tf.input_ids.to(device)
    start = int(tf.kept[0])
    us, vs = [], []
    out = model(input_ids=ids[None, :start], use_cache=True)
    past = out.past_key_values
    for pos in range(start, int(tf.kept[-1]) + 1):
        rec = {}
        h1 = parts.down.register_forward_pre_hook(lambda m, a: rec.__setitem__("u", a[0][0, -1]))
        h2 = parts.mlp_norm.register_forward_pre_hook(lambda m, a: rec.__setitem__("v", a[0][0, -1]))
        out = model(input_ids=ids[None, pos:pos + 1], past_key_values=past, use_cache=True)
        h1.remove(), h2.remove()
        past = out.past_key_values
        us.append(rec["u"]), vs.append(rec["v"])
    return torch.stack(us), torch.stack(vs)


def original_way_edit(model, tokenizer, parts, W0):
    u, v = original_way_capture(model, tokenizer, parts, SYSTEM, USER, ANSWER)
    up, vp = original_way_capture(model, tokenizer, parts, "", USER, ANSWER)
    W = parts.down.weight.data
    W.copy_(W0)
    solve(W, u, up, v, vp, apply=True)
    W.copy_(W0)


def finetune_down_proj(model, tokenizer, parts, W0, steps: int = 25, lr: float = 1e-3):
    """FT-L: Adam on down_proj alone, loss on the answer tokens of the closed-book prompt."""
    tf = teacher_forced(tokenizer, "", USER, ANSWER)
    device = next(model.parameters()).device
    ids = tf.input_ids.to(device)[None]
    positions, targets = tf.kept.to(device), tf.targets.to(device)
    weight = parts.down.weight
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    weight.requires_grad_(True)
    opt = torch.optim.Adam([weight], lr=lr)
    try:
        for _ in range(steps):
            logits = model(input_ids=ids, use_cache=False).logits[0, positions]
            loss = torch.nn.functional.cross_entropy(logits.float(), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        del opt
        weight.requires_grad_(False)
        for p, flag in flags:
            p.requires_grad_(flag)
        with torch.no_grad():
            weight.copy_(W0)
    return float(loss.detach())


@torch.no_grad()
def plain_forward(model, tokenizer):
    ids = teacher_forced(tokenizer, "", USER, ANSWER).input_ids
    model(input_ids=ids[None].to(next(model.parameters()).device), use_cache=False)


# -- suites ---------------------------------------------------------------------------------------
def measure_model(model, tokenizer, layer: int, repeats: int, baselines: bool = True, compile_capture=False,
                  rss_model: tuple[str | None, str] | None = None) -> dict:
    """Times (and peak memory) of one edit and its alternatives. rss_model: (model, dtype) to measure the
    CPU peak resident sets with, in child processes."""
    device = next(model.parameters()).device
    qf = QF(model, tokenizer, layer=layer, folder=None, compile_capture=compile_capture)
    t0 = time.perf_counter()
    qf.learn(SYSTEM, USER, ANSWER)  # first call: captures (and compiles) the graph
    sync(device)
    first_edit_s = time.perf_counter() - t0
    parts = qf.parts
    W0 = parts.down.weight.detach().clone()
    n_answer = len(teacher_forced(tokenizer, "", USER, ANSWER).kept)

    def edit():
        qf.reset()
        qf.learn(SYSTEM, USER, ANSWER)

    edit_repeats = repeats if device.type == "cpu" else max(repeats, 30)  # a GPU edit's ms are noisy
    row = {"layer": qf.layer, "kept_positions": n_answer, "first_edit_s": first_edit_s,
           "edit": timed(lambda: qf.learn(SYSTEM, USER, ANSWER), device, edit_repeats, warmup=3, setup=qf.reset)}
    report = qf.last_report
    row["edit_report"] = report.as_dict()
    if qf._graphed is not None:
        row["cuda_graphs"] = qf._graphed.fallback_reason or "used"
        row["compiled_capture"] = (qf._graphed.compile_fallback_reason or "used") if compile_capture else "no"
    if qf._solver is not None:
        row["solve_graphs"] = qf._solver.fallback_reason or "used"
    row["tokenize_both_passes"] = timed(lambda: teacher_forced_many(tokenizer, [SYSTEM, ""], USER, ANSWER),
                                        device, repeats)
    # a breakdown: the one forward of both passes (through the last kept position, as learn runs it), the solve
    seqs = [tf.nonzero().through_last_kept() for tf in teacher_forced_many(tokenizer, [SYSTEM, ""], USER, ANSWER)]
    recorder = qf._recorder
    row["capture_both_passes"] = timed(lambda: recorder(seqs, check=False, copy=False), device, repeats)
    row["capture_eager_two_forwards"] = timed(lambda: [record(model, parts, s) for s in seqs], device, repeats)
    f = qf.folder
    W = parts.down.weight.data
    rows = [f.load(name) for name in ("u", "up", "v", "vp")]

    def just_solve():
        W.copy_(W0)
        solve(W, *rows, apply=True)

    row["solve_and_apply"] = timed(just_solve, device, repeats)
    if qf._solver is not None:
        row["solve_and_apply_graphed"] = timed(lambda: (W.copy_(W0), qf._solver(*rows)), device, repeats)
    qf.reset()
    row["plain_forward"] = timed(lambda: plain_forward(model, tokenizer), device, repeats)
    row["peak_bytes_plain_forward"] = peak_memory(lambda: plain_forward(model, tokenizer), device)
    row["peak_bytes_edit"] = peak_memory(edit, device)
    qf.reset()
    if rss_model is not None:
        for what in ("plain", "edit") + (("finetune",) if baselines else ()):
            row[f"peak_rss_{what}"] = peak_rss_in_child(what, *rss_model)
    if baselines:
        row["original_way"] = timed(lambda: original_way_edit(model, tokenizer, parts, W0), device, max(1, repeats // 2))
        row["finetune_25_adam"] = timed(lambda: finetune_down_proj(model, tokenizer, parts, W0), device,
                                        max(1, repeats // 3), warmup=1)
        row["peak_bytes_finetune"] = peak_memory(lambda: finetune_down_proj(model, tokenizer, parts, W0), device)
    row["weights_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    return row


def answer_length_scaling(model, tokenizer, layer, repeats, words=(4, 16, 64, 256)) -> list[dict]:
    device = next(model.parameters()).device
    qf = QF(model, tokenizer, layer=layer, folder=None)
    base = ANSWER.split()
    out = []
    for n in words:
        answer = " ".join((base * (n // len(base) + 1))[:n])

        t = timed(lambda: qf.learn(SYSTEM, USER, answer), device, repeats, warmup=1, setup=qf.reset)
        out.append({"answer_words": n, "kept_positions": qf.last_report.rows, "method": qf.last_report.method,
                    **t, **edit_breakdown(qf, answer, repeats)})
    qf.reset()
    return out


def edit_breakdown(qf: QF, answer: str, repeats: int) -> dict:
    """The capture and the solve of the edit of `answer` that `qf` has just made, timed alone."""
    device = qf._device
    seqs = [tf.nonzero().through_last_kept() for tf in teacher_forced_many(qf.tokenizer, [SYSTEM, ""], USER, answer)]
    W = qf.parts.down.weight.data
    W0 = qf._weight_as_loaded()
    rows = [qf.folder.load(name) for name in ("u", "up", "v", "vp")]
    solver = qf._graphed_solver or (lambda *r: solve(W, *r, apply=True))
    return {"capture": timed(lambda: qf._recorder(seqs, check=False, copy=False), device, repeats),
            "solve": timed(lambda: (W.copy_(W0), solver(*rows)), device, repeats)}


def resolve_scaling(model, layer, rows=(10, 100, 1000, 4000, 8960), repeats=3) -> list[dict]:
    """The re-solve from the original W over k accumulated rows (random rows of the real widths)."""
    parts = locate(model, layer)
    W = parts.down.weight.data
    W0 = W.detach().clone()
    device = W.device
    d_model, d_mlp = W.shape
    out = []
    for k in rows:
        g = torch.Generator(device="cpu").manual_seed(k)
        U, Up = (torch.randn(k, d_mlp, generator=g).to(device) for _ in range(2))
        V, Vp = (torch.randn(k, d_model, generator=g).to(device) for _ in range(2))

        def run():
            W.copy_(W0)
            return solve(W, U, Up, V, Vp, apply=True)[1]

        t = timed(run, device, repeats if k < 4000 else 1, warmup=1 if k < 4000 else 0)
        report = run()
        out.append({"rows": k, "method": report.method, "residual": report.residual, **t})
        W.copy_(W0)
    return out


def incremental_scaling(model, layer, max_rows: int, per_round: int = 30,
                        checkpoints=(10, 100, 1000, 2000, 4000, 8960)) -> list[dict]:
    """Rounds of `per_round` random rows added with Accumulator; the time of the round that crosses each checkpoint."""
    parts = locate(model, layer)
    W = parts.down.weight.data
    W0 = W.detach().clone()
    device = W.device
    d_model, d_mlp = W.shape
    acc = Accumulator(W0)
    g = torch.Generator(device="cpu").manual_seed(0)
    marks = [c for c in checkpoints if c <= max_rows]
    out, k = [], 0
    try:
        while k < max_rows and marks:
            m = min(per_round, max_rows - k)
            U, Up = (torch.randn(m, d_mlp, generator=g).to(device) for _ in range(2))
            V, Vp = (torch.randn(m, d_model, generator=g).to(device) for _ in range(2))
            sync(device)
            t0 = time.perf_counter()
            report = acc.add(W, U, Up, V, Vp)
            sync(device)
            k += m
            if k >= marks[0]:
                out.append({"rows": k, "round_rows": m, "median_s": time.perf_counter() - t0, "min_s": None,
                            "method": "incremental", "residual": report.residual_applied})
                while marks and k >= marks[0]:
                    marks.pop(0)
    except Exception as e:  # noqa: BLE001 - report where the accumulation stopped, and why
        out.append({"rows": k, "stopped": f"{type(e).__name__}: {e}"})
    finally:
        W.copy_(W0)
    return out


def reference_gflops(device) -> dict:
    """How fast the host multiplies right now: one [110, 1536] x [1536, 8960] product (the MLP's up
    projection of both passes), median of 10, in float32 and bfloat16. A shared or throttled machine shows here."""
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, w = torch.randn(110, 1536, dtype=dtype, device=device), torch.randn(8960, 1536, dtype=dtype, device=device)
        t = timed(lambda: torch.nn.functional.linear(x, w), device, repeats=10, warmup=2)
        out[str(dtype).replace("torch.", "")] = round(2 * 110 * 1536 * 8960 / t["median_s"] / 1e9, 1)
    return out


def environment(device, dtype) -> dict:
    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
           "device": str(device), "dtype": str(dtype).replace("torch.", ""), "commit": git_commit(),
           "cpu_threads": torch.get_num_threads(), "platform": platform.platform()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        env["cpu_native_bf16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=["cpu", "gpu"], required=True)
    parser.add_argument("--model", default=None, help="model to time (default: the bundled one)")
    parser.add_argument("--random-shape", action="store_true", help="random weights of real shapes (GPU suite)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer dir for random-shape models")
    parser.add_argument("--sizes", default="0.5b,1.5b,7b")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-rows", type=int, default=8960, help="largest row count in the re-solve scaling")
    parser.add_argument("--out", default="results/perf")
    parser.add_argument("--compile", action="store_true", help="also time the 1.5b capture compiled with torch.compile")
    parser.add_argument("--dtype", default=None, help="default: the package's for the suite's device")
    parser.add_argument("--no-baselines", action="store_true", help="skip the original way and FT-L (CPU suite)")
    parser.add_argument("--no-scaling", action="store_true",
                        help="skip answer length, re-solve and incremental scaling (CPU suite)")
    parser.add_argument("--peak-rss-of", choices=["plain", "edit", "finetune"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    device, dtype = pick_device_dtype("cuda" if args.suite == "gpu" else "cpu", args.dtype)
    if args.peak_rss_of:  # the child process of peak_rss_in_child
        print(json.dumps(peak_rss_of(args.peak_rss_of, args.model, dtype)))
        return 0
    default_dtype = pick_device_dtype(str(device))[1]
    name = args.suite if dtype == default_dtype else f"{args.suite}_{str(dtype).replace('torch.', '')}"
    result = {"suite": args.suite, "environment": environment(device, dtype), "fact": [SYSTEM, USER, ANSWER]}
    path = Path(args.out) / f"performance_{name}.json"

    def write(result: dict) -> None:
        """Written after each model and at the end, so a run stopped early keeps what it measured."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {path}", flush=True)

    load_at_start = os.getloadavg()[0]  # other work on the machine shows here
    speed_at_start = reference_gflops(device)
    rows_grid = [k for k in (10, 100, 1000, 2000, 4000, 8960) if k <= args.max_rows]
    if args.random_shape:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        result["models"] = {}
        for shape in args.sizes.split(","):
            model = random_model(shape, device, dtype)
            layer = round(23 / 28 * model.config.num_hidden_layers)
            print(f"[{shape}] layer {layer}", flush=True)
            entry = measure_model(model, tokenizer, layer, args.repeats)
            if shape == "1.5b":
                entry["answer_length"] = answer_length_scaling(model, tokenizer, layer, args.repeats)
                entry["resolve_rows"] = resolve_scaling(model, layer, rows_grid)
                entry["incremental_rows"] = incremental_scaling(model, layer, args.max_rows)
            result["models"][f"random {shape}"] = entry
            write(result)
            if args.compile and shape == "1.5b":
                compiled = measure_model(model, tokenizer, layer, args.repeats, baselines=False, compile_capture=True)
                result["models"][f"random {shape}, compiled capture"] = compiled
                print(json.dumps({k: v for k, v in compiled.items() if "median_s" in str(v)[:20] or "first" in k}),
                      flush=True)
            print(json.dumps({k: v for k, v in entry.items() if isinstance(v, dict) and "median_s" in v}), flush=True)
            del model
            gc.collect()
            torch.cuda.empty_cache()
    else:
        loaded = load_model(args.model, str(device), dtype)
        entry = measure_model(loaded.model, loaded.tokenizer, 23, args.repeats, baselines=not args.no_baselines,
                              rss_model=(args.model, str(dtype).replace("torch.", "")))
        result["models"] = {f"{loaded.name} ({loaded.quantization})": entry}
        write(result)
        if not args.no_scaling:
            entry["answer_length"] = answer_length_scaling(loaded.model, loaded.tokenizer, 23,
                                                           max(1, args.repeats // 2), words=(4, 16, 64))
            entry["resolve_rows"] = resolve_scaling(loaded.model, 23, rows_grid)
            entry["incremental_rows"] = incremental_scaling(loaded.model, 23, args.max_rows)
    result["environment"]["load_average_1min"] = [round(load_at_start, 2), round(os.getloadavg()[0], 2)]
    result["environment"]["reference_gflops"] = {"start": speed_at_start, "end": reference_gflops(device)}
    write(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
