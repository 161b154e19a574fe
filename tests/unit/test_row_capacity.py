"""benchmarks/probes/row_capacity.py: the change solved again from a run's saved rows, exactly and with a ridge."""

import copy
import json

import torch

from transformers_qf.bench import cli
from transformers_qf.bench.data import Control, FactsFile, write_facts
from transformers_qf.bench.generate import invented_facts
from transformers_qf.core.architectures import locate
from transformers_qf.core.models import LoadedModel


def test_the_probe_solves_a_runs_rows_as_the_run_did_and_a_ridge_trades_the_change_for_missed_rows(
        load_script, tiny_qwen2, tokenizer, tmp_path, monkeypatch):
    script = load_script("probes/row_capacity")
    monkeypatch.setattr(cli, "load", lambda spec, device, dtype: LoadedModel(
        copy.deepcopy(tiny_qwen2), tokenizer, name="tiny", source="test", quantization="none"))
    facts = tmp_path / "facts.jsonl"
    write_facts(facts, FactsFile(invented_facts(4), [Control("What is the capital of France?", "Paris")]))
    run = tmp_path / "run"
    assert cli.main(["--facts", str(facts), "--method", "qf", "--paper", "--layer", "2", "--incremental",
                     "--protocol", "sequential", "--no-immediate", "--checkpoints", "4", "--out", str(run),
                     "--max-new-tokens", "3", "--positions", "target"]) == 0  # few rows: below d_mlp = 96
    monkeypatch.setattr(script, "original_weight",
                        lambda model, layer: locate(tiny_qwen2, layer).down.weight.detach().double())
    out = tmp_path / "report"
    assert script.main([str(run), "--ridges", "0.01,1", "--prefixes", "3", "--out", str(out)]) == 0
    result = json.loads((out / "row_capacity.json").read_text())
    assert result["edits"] == 4 and result["layer"] == 2 and result["exact"][0]["rows"] == 3
    # the solve over all rows gives back the run's own change
    assert abs(result["exact"][-1]["delta_rel"] - result["recorded_delta_rel"]) < 1e-4 * result["recorded_delta_rel"]
    small, large = result["ridge"]
    assert large["delta_rel"] < small["delta_rel"] < result["exact"][-1]["delta_rel"]
    assert large["missed_median"] > small["missed_median"] > 0
    assert "| 3 |" in (out / "row_capacity.md").read_text()
    assert script.main([str(tmp_path / "nothing")]) == 2
