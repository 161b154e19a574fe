"""The same QF edit on a model sharded over several GPUs with accelerate's device_map.

    python benchmarks/perf/sharded_edit.py --tokenizer DIR [--shape 1.5b] [--out results/perf]

Runs the edit on one GPU, then with the decoder layers split evenly over every visible GPU,
and compares the two W' and their timings. Writes performance_sharded.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from accelerate import dispatch_model

from edit_latency import ANSWER, SYSTEM, USER, environment, random_model, timed
from transformers_qf import QF


def layer_split_map(n_layers: int, n_gpus: int, tied: bool) -> dict:
    per = -(-n_layers // n_gpus)
    device_map = {"model.embed_tokens": 0, "model.rotary_emb": 0}
    device_map.update({f"model.layers.{i}": i // per for i in range(n_layers)})
    device_map.update({"model.norm": n_gpus - 1, "lm_head": 0 if tied else n_gpus - 1})  # tied: lives with the embedding
    return device_map


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--shape", default="1.5b")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default="results/perf")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    n_gpus = torch.cuda.device_count()
    model = random_model(args.shape, torch.device("cuda:0"), torch.bfloat16)
    layer = 23
    qf = QF(model, tokenizer, layer=layer, folder=None)
    single = timed(lambda: qf.learn(SYSTEM, USER, ANSWER), torch.device("cuda:0"), args.repeats, 2, setup=qf.reset)
    w_single = qf.parts.down.weight.detach().to("cpu", torch.float64)
    report_single = qf.last_report.as_dict()
    qf.reset()
    device_map = layer_split_map(model.config.num_hidden_layers, n_gpus, model.config.tie_word_embeddings)
    model = dispatch_model(model, device_map=device_map)
    qf = QF(model, tokenizer, layer=layer, folder=None)

    def sync_all():
        for d in range(n_gpus):
            torch.cuda.synchronize(d)

    def edit():
        qf.learn(SYSTEM, USER, ANSWER)
        sync_all()

    sharded = timed(edit, torch.device("cpu"), args.repeats, 2, setup=qf.reset)
    w_sharded = qf.parts.down.weight.detach().to("cpu", torch.float64)
    rel = float(torch.linalg.norm(w_sharded - w_single) / torch.linalg.norm(w_single))
    result = {
        "environment": environment(torch.device("cuda:0"), torch.bfloat16),
        "gpus": n_gpus,
        "shape": args.shape,
        "layer": layer,
        "edited_weight_device": str(qf.parts.down.weight.device),
        "single_gpu_edit": single,
        "sharded_edit": sharded,
        "cuda_graphs_sharded": (qf._graphed.fallback_reason or "used") if qf._graphed else "not used",
        "w_prime_rel_diff_sharded_vs_single": rel,
        "report_single": report_single,
        "report_sharded": qf.last_report.as_dict(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "performance_sharded.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=1))


if __name__ == "__main__":
    main()
