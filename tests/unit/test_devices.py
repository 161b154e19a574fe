"""The benchmark's editor paths keep every tensor on the model's device.

On a CUDA machine the paths run there (the covariance, the held rows, the optimised target spread over layers,
the incremental solve, the scoring): every op must see tensors of one device, and what they return must sit
on the weight's device. Without a GPU the same paths run on the CPU under the same op audit (it cannot tell
the CPU from itself there, so it only proves the paths run and return on the weight's device), and the
solver's device propagation is checked for real with the weight and keys on the "meta" device and the key
covariance built on the CPU: the solver must move the metric to the weight's device, as on a GPU.
"""

import pytest
import torch
from torch.overrides import TorchFunctionMode

from transformers_qf.bench.answering import Answerer
from transformers_qf.core.architectures import locate
from transformers_qf.editing.editor import EditConfig, Editor
from transformers_qf.solve.keyed import KeyMetric, KeySolver
from transformers_qf.solve.keystats import key_covariances

FACTS = [
    ("Qi started Oxinnovate.", "Who started Oxinnovate?", "Oxinnovate was started by Qi.", "Oxinnovate", "Qi"),
    ("Jack Ma started Alibaba.", "Who started Alibaba?", "Alibaba was started by Jack Ma.", "Alibaba", "Jack Ma"),
]
TEXTS = ["Who started Alibaba? Alibaba was started by Jack Ma in Hangzhou.",
         "Oxinnovate is located at PKU Science Park, in Beijing. Where is Oxinnovate located?"] * 3
# the intact preset's form on a 4-layer model, and the default's (one late layer, the answer's value)
INTACT = EditConfig(layers=(1, 2), positions="subject-copies", covariance=True, target="optimized", target_steps=3,
                    keep_context=True, drift_rows=4)
DEFAULT = EditConfig(layers=(3,), positions="value", covariance=True)


class OneDevice(TorchFunctionMode):
    """Fails any torch op whose tensor arguments (other than 0-dim ones) sit on more than one device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = {t.device for t in _tensors((args, kwargs)) if t.dim() > 0 and t.device.type != "meta"}
        if len(devices) > 1 and func not in _MOVES:
            raise AssertionError(f"{func} mixes devices {sorted(map(str, devices))}")
        return func(*args, **kwargs)


_MOVES = {torch.Tensor.to, torch.Tensor.copy_, torch.Tensor.cpu, torch.Tensor.cuda}


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors(item)


def _metrics(model, tokenizer, layers):
    parts = [locate(model, i) for i in layers]
    return {i: KeyMetric(c, 0.1) for i, (c, _) in key_covariances(model, parts, tokenizer, TEXTS).items()}


def _run_paths(model, tokenizer, config: EditConfig, incremental: bool):
    """Two edits with `config`, then the scoring's answers and log p; returns the editor and the scores."""
    from dataclasses import replace

    config = replace(config, incremental=incremental)
    editor = Editor(model, tokenizer, config, _metrics(model, tokenizer, config.layers))
    reports = [editor.learn(system, user, answer, subject=subject, target=target)
               for system, user, answer, subject, target in FACTS]
    answerer = Answerer(model, tokenizer, max_new_tokens=4)
    answers = answerer.answers([("", user) for _, user, *_ in FACTS])
    logps = answerer.target_logprobs([("", user, answer, target) for _, user, answer, _, target in FACTS])
    return editor, reports, answers, logps


def _check(editor, reports, answers, logps, device: torch.device):
    assert all(r.residual < 1e-2 for r in reports) and len(answers) == 2
    assert all(torch.isfinite(torch.tensor(x)) for x in logps)
    for part, solver in zip(editor.parts, editor.solvers):
        assert part.down.weight.device == device and solver.W0.device == device
        assert solver.metric is None or solver.metric.factor.device == device
        held = [t for t in solver.state_dict().values() if t.dim() > 0]
        assert held and all(t.device == device for t in held)
        assert solver.change(torch.zeros(1, solver.W0.shape[1], device=device)).device == device
    if editor.last_target_delta is not None:
        assert editor.last_target_delta.device == device


@pytest.mark.parametrize("config", [INTACT, DEFAULT], ids=["intact", "default"])
@pytest.mark.parametrize("incremental", [False, True], ids=["full", "incremental"])
def test_the_benchmark_paths_run_with_one_device_per_op_on_the_cpu(tiny_qwen2, tokenizer, config, incremental):
    with OneDevice():
        out = _run_paths(tiny_qwen2, tokenizer, config, incremental)
    _check(*out, torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("config", [INTACT, DEFAULT], ids=["intact", "default"])
@pytest.mark.parametrize("incremental", [False, True], ids=["full", "incremental"])
def test_the_benchmark_paths_run_on_cuda(tiny_qwen2, tokenizer, config, incremental):
    model = tiny_qwen2.to("cuda")
    with OneDevice():
        out = _run_paths(model, tokenizer, config, incremental)
    _check(*out, torch.device("cuda", torch.cuda.current_device()))


def test_the_solver_moves_a_metric_made_elsewhere_to_its_weights_device():
    """The weight on "meta" and the covariance made on the CPU (as keystats makes it): the solver's metric must
    give its rows on the weight's device, where the products of `KeySolver.add` with the stored rows happen.
    Before the fix the metric stayed on the CPU and gave its rows there (on a GPU: "Expected all tensors to be
    on the same device")."""
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(100, 16, generator=g, dtype=torch.float64)
    metric = KeyMetric(samples.T @ samples / 100)
    solver = KeySolver(torch.empty(6, 16, dtype=torch.float64, device="meta"), metric)
    assert solver.metric.factor.device.type == "meta" and metric.factor.device.type == "cpu"
    assert solver.metric is metric.to("meta")  # one copy a device
    keys = torch.empty(3, 16, device="meta")
    B = solver.metric.apply(keys)
    assert B.device.type == "meta" and (keys.double() @ solver.B.T).device.type == "meta"
    assert metric.apply(torch.randn(2, 16, generator=g)).device.type == "cpu"
