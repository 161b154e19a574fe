"""Where the time of one QF edit goes on a GPU: torch.profiler over a few edits, phases labelled.

    python benchmarks/perf/profile_edit.py --tokenizer DIR [--shape 1.5b] [--compile]

Prints the median wall time of an edit, the labelled phases (CPU and CUDA time) and the top kernels,
for CUDA-graph capture and (with --compile) compiled capture; a diagnostic, not a report.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import transformers_qf.core.capture as capture
import transformers_qf.qf.session as modes
import transformers_qf.solve.exact as qf_mod
import transformers_qf.core.store as store
from edit_latency import ANSWER, SYSTEM, USER, random_model


def label(owner, name: str, tag: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        with record_function(tag):
            return original(*args, **kwargs)

    setattr(owner, name, wrapped)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--shape", default="1.5b")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    model = random_model(args.shape, torch.device("cuda"), torch.bfloat16)
    for owner, name, tag in [
        (modes.prompting, "teacher_forced_many", "qf.tokenize"),
        (capture.GraphedRecorder, "__call__", "qf.capture"),
        (modes, "check_finite", "qf.capture.finite_check"),
        (modes, "_kept", "qf.kept_rows"),
        (store.ParametersFolder, "append", "qf.folder_append"),
        (store.ParametersFolder, "save", "qf.folder_save"),
        (qf_mod.GraphedSolver, "__call__", "qf.solve.graphed"),
        (qf_mod, "_to_host", "qf.solve.to_host"),
        (qf_mod, "_conclude", "qf.solve.host_part"),
        (qf_mod, "_times_wt", "qf.solve.W_products"),
        (qf_mod, "_exact_coefficients", "qf.solve.kxk_system"),
        (qf_mod.Update, "apply_", "qf.solve.apply"),
        (modes, "solve", "qf.solve.eager"),
        (modes.QF, "reset", "qf.reset"),
    ]:
        label(owner, name, tag)
    for compile_capture in (False, True) if args.compile else (False,):
        profile_mode(model, tokenizer, compile_capture)


def profile_mode(model, tokenizer, compile_capture: bool) -> None:
    qf = modes.QF(model, tokenizer, layer=23, folder=None, compile_capture=compile_capture)
    times = []
    for i in range(33):
        qf.reset()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        qf.learn(SYSTEM, USER, ANSWER)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    print(f"== {'compiled capture' if compile_capture else 'CUDA graphs'}: first edit {times[0]:.1f} s, "
          f"median of 30 after 3 warm-ups {statistics.median(times[3:]) * 1e3:.2f} ms")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            qf.reset()
            with record_function("qf.learn"):
                qf.learn(SYSTEM, USER, ANSWER)
        torch.cuda.synchronize()
    events = prof.key_averages()
    print("phase                            calls   CPU total ms   CUDA total ms  (over 5 edits)")
    for e in sorted(events, key=lambda e: e.key):
        if e.key.startswith("qf."):
            cuda = getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0))
            print(f"{e.key:32s} {e.count:5d} {e.cpu_time_total / 1e3:14.2f} {cuda / 1e3:14.2f}")
    print(events.table(sort_by="self_cuda_time_total", row_limit=15, max_name_column_width=60))


if __name__ == "__main__":
    main()
