"""Every fast path against the plain path, on a tiny random model (fp32): same rows, same W'.

GPU-only paths are skipped cleanly without a GPU.
"""

import pytest
import torch

from transformers_qf import QF
from transformers_qf.core.architectures import locate
from transformers_qf.core.capture import GraphedRecorder, record
from transformers_qf.core.prompting import teacher_forced

FACT = ("Qi started Oxinnovate.", "Who started Oxinnovate?", "Oxinnovate was started by Qi.")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _rel(a, b):
    return float(torch.linalg.norm(a.detach().double().cpu() - b.detach().double().cpu()) / torch.linalg.norm(b.detach().double().cpu()))


def _plain_w_prime(model, tokenizer, tmp_path, layer=2):
    qf = QF(model, tokenizer, layer=layer, folder=tmp_path / "plain")
    qf.instruct(*FACT)
    qf.update(FACT[1], FACT[2])
    qf.solve()
    return qf.folder.load("w_prime")


def test_learn_on_cpu_matches_the_plain_path(tiny_model, tokenizer, tmp_path):
    reference = _plain_w_prime(tiny_model, tokenizer, tmp_path)
    qf = QF(tiny_model, tokenizer, layer=2, folder=None)
    qf.learn(*FACT)
    assert _rel(locate(tiny_model, 2).down.weight, reference) < 1e-5


@cuda
def test_graphed_recorder_matches_eager_record(tiny_model, tokenizer):
    model = tiny_model.cuda()
    parts = locate(model, 2)
    seqs = [teacher_forced(tokenizer, s, FACT[1], FACT[2]).input_ids for s in (FACT[0], "")]
    graphed = GraphedRecorder(model, parts, bucket=16)
    for _ in range(2):  # the second call replays the captured graph
        got = graphed(seqs)
    assert graphed.fallback_reason is None, graphed.fallback_reason
    want = record(model, parts, seqs)
    for g, w in zip(got, want):
        for name in ("v", "x", "u", "y"):
            assert _rel(getattr(g, name), getattr(w, name)) < 1e-5


@cuda
def test_learn_on_cuda_with_graphs_matches_the_plain_path_on_cpu(tiny_model, tokenizer, tmp_path):
    """Capture and solve both replayed from CUDA graphs."""
    reference = _plain_w_prime(tiny_model, tokenizer, tmp_path)
    model = tiny_model.cuda()
    qf = QF(model, tokenizer, layer=2, folder=None, cuda_graphs=True)
    qf.learn(*FACT)
    qf.reset()
    report = qf.learn(*FACT)  # replayed from the graph
    assert qf._graphed is not None and qf._graphed.fallback_reason is None
    assert qf._solver is not None and qf._solver.fallback_reason is None and qf._solver.graphs
    assert report.residual_applied < 1e-5
    assert _rel(locate(model, 2).down.weight, reference) < 1e-5


@cuda
def test_the_learner_on_cuda_solves_from_graphs_with_the_cpu_learners_w_prime(tiny_model, tokenizer):
    """`qf learn --preset paper` on one GPU: the solve replayed from a CUDA graph, the W' of the CPU."""
    import copy

    from transformers_qf.teach.learner import Learner

    facts = [FACT, ("Jack Ma started Alibaba.", "Who started Alibaba?", "Alibaba was started by Jack Ma.")]
    cpu = Learner(copy.deepcopy(tiny_model), tokenizer, {"name": "tiny"}, layer=2)
    gpu = Learner(tiny_model.cuda(), tokenizer, {"name": "tiny"}, layer=2)
    assert cpu._graphed is None and gpu._graphed is not None
    for fact in facts:
        cpu.learn(*fact)
        gpu.learn(*fact)
    assert gpu._graphed.fallback_reason is None and len(gpu._graphed.graphs) == 1
    assert _rel(gpu.parts.down.weight, cpu.parts.down.weight) < 1e-5
    gpu.forget(0)
    cpu.forget(0)
    assert _rel(gpu.parts.down.weight, cpu.parts.down.weight) < 1e-5
