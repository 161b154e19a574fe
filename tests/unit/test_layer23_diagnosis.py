"""benchmarks/probes/layer23_diagnosis.py on tiny random models: the patches land where they should, the hidden
keys are unread, the table has its rows; and solve's float32-pinv option (the original numerics)."""

import json

import pytest
import torch

from transformers_qf import SolveError, locate
from transformers_qf.core.capture import hidden_keys, patched_output
from transformers_qf.solve.exact import solve

ROWS = ["open book, W", "closed book, W", "closed book, W'", "patch L{L}: kept", "patch L{L}: answer",
        "patch L{L}: user+answer", "patch L{L}: all", "open book, layers > {L} blind to the fact",
        "closed book, W' (all ones)"]


@pytest.fixture(scope="module")
def diag(load_script):
    return load_script("probes/layer23_diagnosis")


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids[None], use_cache=False).logits[0]


def test_a_patch_changes_its_positions_and_what_follows_them_only(tiny_model):
    ids = torch.randint(5, 300, (12,))
    block = locate(tiny_model, 1).layer
    plain = logits(tiny_model, ids)
    with patched_output(block, torch.tensor([4, 6]), torch.randn(2, 32)):
        patched = logits(tiny_model, ids)
    assert torch.equal(patched[:4], plain[:4])
    assert not torch.allclose(patched[4], plain[4])
    assert len(block._forward_hooks) == 0  # removed on exit


def test_patching_a_layer_with_its_own_output_changes_nothing(diag, tiny_model):
    ids = torch.randint(5, 300, (12,))
    own = diag.layer_output(tiny_model, 1, ids)  # v + MLP output, from the capture hooks
    with patched_output(locate(tiny_model, 1).layer, torch.arange(12), own):
        again = logits(tiny_model, ids)
    assert torch.allclose(again, logits(tiny_model, ids), atol=1e-5)


def test_hidden_keys_are_not_read(tiny_model):
    layers = [locate(tiny_model, i).layer for i in range(4)]
    ids = torch.randint(5, 300, (10,))
    other = ids.clone()
    other[3] = ids[3] + 1
    with hidden_keys(layers, torch.tensor([3]), len(ids)):
        a, b = logits(tiny_model, ids), logits(tiny_model, other)
    rest = torch.tensor([i for i in range(10) if i != 3])
    assert torch.allclose(a[rest], b[rest], atol=1e-5)  # no position sees the token at 3
    assert not torch.allclose(a[3], b[3])
    with hidden_keys(layers, torch.tensor([], dtype=torch.long), len(ids)):
        unblocked = logits(tiny_model, ids)
    assert torch.allclose(unblocked, logits(tiny_model, ids), atol=1e-5)  # the mask alone is the causal one


def test_the_pair_lines_up_the_two_books(diag, tokenizer):
    fact = diag.FACT_1
    pair = diag.make_pair(tokenizer, fact, fact.significance)
    every = torch.arange(len(pair.closed.input_ids))
    assert torch.equal(pair.open.input_ids[pair.to_open(every)], pair.closed.input_ids)
    fact_tokens = pair.open.input_ids[pair.head:pair.head + pair.shift]
    assert tokenizer.decode(fact_tokens) == fact.system
    assert tokenizer.decode(pair.targets) == fact.answer
    assert torch.equal(pair.closed.input_ids[pair.rows + 1], pair.targets)  # each row predicts the next token
    sets = diag.position_sets(tokenizer, pair, fact.user)
    assert set(sets["kept"].tolist()) < set(sets["answer"].tolist()) < set(sets["user+answer"].tolist())
    assert sets["all"].tolist() == every.tolist()


def test_at_the_last_layer_each_row_is_what_it_should_be(diag, tiny_model, tokenizer):
    last = 3  # nothing reads the last layer's output but the head, position by position
    d = diag.diagnose(tiny_model, tokenizer, diag.FACT_1, last, numerics=False, log=lambda *_: None)
    assert [r["name"] for r in d["rows"]] == [n.format(L=last) for n in ROWS]
    row = {r["name"]: torch.tensor(r["logp"]) for r in d["rows"]}
    open_book, before = row["open book, W"], row["closed book, W"]
    assert not torch.allclose(open_book, before, atol=1e-3)  # the fact changes the random model's answer
    for name in (f"patch L{last}: answer", f"patch L{last}: all", f"open book, layers > {last} blind to the fact"):
        assert torch.allclose(row[name], open_book, atol=1e-4), name
    pair = diag.make_pair(tokenizer, diag.FACT_1, diag.FACT_1.significance)
    kept = torch.isin(pair.rows, pair.closed.nonzero().kept)
    assert 0 < kept.sum() < len(kept)  # the first word's rows have significance 0
    patched = row[f"patch L{last}: kept"]
    assert torch.allclose(patched[kept], open_book[kept], atol=1e-4)
    assert torch.allclose(patched[~kept], before[~kept], atol=1e-4)
    assert torch.allclose(row["closed book, W'"][kept], open_book[kept], atol=1e-3)  # the edit meets its rows
    assert torch.allclose(row["closed book, W' (all ones)"], open_book, atol=1e-3)
    assert d["rows"][0]["gap_closed"] == 1.0 and d["rows"][1]["gap_closed"] == 0.0
    (tokenization,) = d["variants"]
    assert tokenization["name"] == "original tokenization" and " " not in "".join(tokenization["tokens"][:-1])


def test_the_script_writes_every_row_and_refuses_a_bad_layer(diag, tiny_qwen2, tokenizer, tmp_path, capsys):
    tiny_qwen2.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    assert diag.main(["--model", str(tmp_path / "m"), "--layer", "7", "--out", str(tmp_path / "bad")]) == 2
    assert "layer 7" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert diag.main(["--model", str(tmp_path / "m"), "--layer", "2", "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "layer23_diagnosis.json").read_text())
    assert [r["name"] for r in result["diagnosis"]["rows"]] == [n.format(L=2) for n in ROWS]
    numerics = result["diagnosis"]["variants"][1]
    assert numerics["name"] == "original numerics" and numerics["solve"]["method"] == "pinv-float32"
    text = (tmp_path / "out" / "layer23_diagnosis.md").read_text()
    assert "--layer 2" in text and all(f"| {n.format(L=2)} |" in text for n in ROWS)


def test_the_float32_pinv_solve_matches_the_float64_one(tiny_qwen2):
    torch.manual_seed(1)
    W = torch.randn(32, 96)
    U, Up = torch.randn(5, 96), torch.randn(5, 96)
    V, Vp = torch.randn(5, 32), torch.randn(5, 32)
    exact, low = W.clone(), W.clone()
    _, r64 = solve(exact, U, Up, V, Vp, apply=True)
    _, r32 = solve(low, U, Up, V, Vp, apply=True, pinv_dtype=torch.float32)
    assert r64.method == "exact" and r32.method == "pinv-float32"
    assert 1e-12 < r32.residual < 1e-4 and r64.residual < 1e-12  # float32 arithmetic shows in the residual
    assert torch.allclose(low, exact, atol=1e-4)
    with pytest.raises(SolveError, match="pinv_dtype"):
        solve(W.clone(), U, Up, V, Vp, ridge=0.1, pinv_dtype=torch.float32)
