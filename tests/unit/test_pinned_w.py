"""W' of every path that writes down_proj, pinned to the numbers the code gave before the editing core was
merged (commit 46aac24), on the seeded tiny Qwen2: a refactor that changes a solve changes these.

The paths differ from each other in the sixth digit (where each rounds to float32); a changed solve
moves these in the second. Pinned: the sum, the Frobenius norm and three entries of W' - W at layer 3, in float64."""

import pytest
import torch

from transformers_qf.core.architectures import locate
from transformers_qf.qf.session import QF
from transformers_qf.teach.learner import Learner

ID = {"name": "tiny", "model_type": "qwen2", "hidden_size": 32}
FACTS = [("Qi started Oxinnovate.", "Who started Oxinnovate?", "Oxinnovate was started by Qi."),
         ("Jack Ma started Alibaba.", "Who started Alibaba?", "Alibaba was started by Jack Ma.")]
ENTRIES = ((0, 0), (5, 17), (31, 95))


def _numbers(model, before: torch.Tensor) -> list[float]:
    delta = locate(model, 3).down.weight.detach().double() - before.double()
    return [float(delta.sum()), float(torch.linalg.norm(delta))] + [float(delta[i, j]) for i, j in ENTRIES]


def _session(model, tokenizer, tmp_path, fast: bool) -> list[float]:
    before = locate(model, 3).down.weight.detach().clone()
    qf = QF(model, tokenizer, layer=3, folder=str(tmp_path / "p"), identity=ID, fresh=True, cuda_graphs=False)
    for system, user, answer in FACTS:
        if fast:
            qf.learn(system, user, answer)
        else:
            qf.instruct(system, user, answer)
            qf.update(user, answer)
            qf.solve()
            qf.apply()
    return _numbers(model, before)


def _learner(model, tokenizer) -> list[float]:
    before = locate(model, 3).down.weight.detach().clone()
    learner = Learner(model, tokenizer, ID, layer=3)
    for system, user, answer in FACTS:
        learner.learn(system, user, answer)
    return _numbers(model, before)


PINNED = {  # computed at commit 46aac24 (before the merge), float32 weights on the CPU
    "session": [-1.691874389, 9.749350448, -0.02916392311, 0.07010841742, 0.1386626428],
    "session-learn": [-1.691900161, 9.749350723, -0.02916414663, 0.0701081939, 0.1386619871],
    "learner": [-1.691905605, 9.749348091, -0.02916405164, 0.07010844722, 0.1386624342],
}


@pytest.mark.parametrize("path", sorted(PINNED))
def test_w_prime_is_what_it_was(path, tiny_qwen2, tokenizer, tmp_path):
    got = {"session": lambda: _session(tiny_qwen2, tokenizer, tmp_path, False),
           "session-learn": lambda: _session(tiny_qwen2, tokenizer, tmp_path, True),
           "learner": lambda: _learner(tiny_qwen2, tokenizer)}[path]()
    assert got == pytest.approx(PINNED[path], rel=1e-4)
