"""The benchmark: metrics on hand-made cases, the facts file and its generator, the command end to end
on the tiny random Qwen2 (injected through `bench.cli.load`)."""

import copy
import json
import shutil

import pytest
import torch

from transformers_qf.bench import cli, report
from transformers_qf.bench.data import Control, FactsFile, FactsFileError, read_facts, write_facts
from transformers_qf.bench.generate import generate, invented_facts, known_controls, pick_controls
from transformers_qf.editing.methods import NoEdit, QFEdit
from transformers_qf.solve.weights import OriginalWeight
from transformers_qf.bench.metrics import fraction, gives, miss_kind, ngram_entropy
from transformers_qf.editing import editor
from transformers_qf.solve import keyed as keysolve
from transformers_qf.solve import keystats
from transformers_qf.core import prompting
from transformers_qf.core.architectures import locate
from transformers_qf.solve.keystats import known_fact_prompts
from transformers_qf.core.models import LoadedModel
from transformers_qf.data.worldfacts import real_facts


# -- metrics ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("answer, target, expected", [
    ("Velmora Labs was founded by Amara Lindqvist.", "Amara Lindqvist", True),
    ("The founder is amara  LINDQVIST, a chemist.", "Amara Lindqvist", True),
    ("It was founded by Amara.", "Amara Lindqvist", False),
    ("Nvidia makes GPUs.", "GPU", True),
    ("Founded in 1976.", "1976", True),
    ("It has 4120 employees.", "412", False),
    ("It has 412 employees.", "412", True),
    ("The Lyonnais company", "Lyon", False),
    ("Headquartered in Lyon, France.", "Lyon", True),
    ("Painted by Salvador Dalí.", "Dalí", True),
    ("", "Paris", False),
])
def test_gives_matches_whole_words(answer, target, expected):
    assert gives(answer, target) is expected


def test_gives_refuses_an_empty_target():
    with pytest.raises(ValueError, match="empty target"):
        gives("anything", "  ")


@pytest.mark.parametrize("answer, target, subject, kind", [
    ("Wosiacun was founded by Wilhelmina Mun.", "Wilhelmina Esposito", "Wosiacun", "part of the target"),
    ("The seat of government of Theibreia is Weidrelf.", "Weidrelt", "Theibreia", "part of the target"),
    ("Droram's CEO is Mr. Kim.", "Orla Esposito", "Droram", "the subject, another value"),
    ("Theita Analytics works with 51 people.", "519", "Theita Analytics", "the subject, another value"),
    ("I am an AI developed by Google.", "Rafaela Hollenbeck", "Glogleix", "other"),
    ("Dr. Kim runs it.", "Orla Esposito", None, "other"),
])
def test_a_missed_answer_is_told_apart_by_what_it_says_instead(answer, target, subject, kind):
    assert miss_kind(answer, target, subject) == kind


def test_ngram_entropy_is_low_for_repetition_and_zero_for_short_text():
    varied = "the quick brown fox jumps over the lazy dog while a cat sleeps in the warm sun"
    repeated = "the the the the the the the the the the the the the the the the"
    assert ngram_entropy(varied) > 3.0 > ngram_entropy(repeated) == 0.0
    assert ngram_entropy("one") == 0.0
    # 15 distinct bigrams and 14 distinct trigrams: log2 15 * 2/3 and log2 14 * 4/3, averaged
    import math
    assert ngram_entropy(" ".join(f"w{i}" for i in range(16))) == pytest.approx(
        (2 / 3 * math.log2(15) + 4 / 3 * math.log2(14)) / 2)


def test_fraction_of_nothing_is_none():
    assert fraction([]) is None and fraction([True, False, True, True]) == 0.75


# -- the facts file --------------------------------------------------------------------------------------
GOOD = {"system": "Qi started Oxinnovate.", "user": "Who started Oxinnovate?",
        "assistant": "Oxinnovate was started by Qi.", "target": "Qi", "paraphrases": ["Who founded Oxinnovate?"],
        "significance": None}


def _write(tmp_path, lines):
    path = tmp_path / "facts.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


@pytest.mark.parametrize("bad, fragment", [
    ({k: v for k, v in GOOD.items() if k != "target"}, "facts.jsonl:3: missing key 'target'"),
    ({**GOOD, "target": " "}, "facts.jsonl:3: 'target' must be a non-empty string"),
    ({**GOOD, "target": "Jack"}, "facts.jsonl:3: the target 'Jack' does not occur in the assistant answer"),
    ('{"system": "x", "user": ', "facts.jsonl:3: not valid JSON"),
    ("[1, 2]", "facts.jsonl:3: a row must be a JSON object"),
    ({**GOOD, "paraphrases": "Who?"}, "facts.jsonl:3: 'paraphrases' must be a list of non-empty strings"),
    ({**GOOD, "significance": [1, 1]}, "facts.jsonl:3: 'significance' must be null or 5 numbers"),
    ({"type": "control", "user": "What is the capital of France?"}, "facts.jsonl:3: missing key 'target'"),
    ({"type": "question", **GOOD}, "facts.jsonl:3: unknown row type 'question'"),
])
def test_a_malformed_facts_file_is_refused_with_the_line_number(tmp_path, bad, fragment):
    path = _write(tmp_path, [GOOD, "", bad])  # line 2 is blank (skipped), line 3 is bad
    with pytest.raises(FactsFileError) as err:
        read_facts(path)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_file_without_facts_or_missing_is_refused(tmp_path):
    with pytest.raises(FactsFileError, match="holds no facts"):
        read_facts(_write(tmp_path, [{"type": "control", "user": "q?", "target": "a"}]))
    with pytest.raises(FactsFileError, match="cannot read facts file"):
        read_facts(tmp_path / "missing.jsonl")


def test_facts_files_round_trip(tmp_path):
    data = FactsFile(invented_facts(5), [Control("What is the capital of France?", "Paris", "capital", "France")],
                     {"seed": 0})
    write_facts(tmp_path / "f.jsonl", data)
    again = read_facts(tmp_path / "f.jsonl")
    assert again.facts == data.facts and again.controls == data.controls and again.meta == {"seed": 0}


# -- the generator ---------------------------------------------------------------------------------------
def test_invented_facts_are_deterministic_prefix_stable_and_valid(tmp_path):
    facts = invented_facts(30, seed=3)
    assert facts == invented_facts(30, seed=3) and facts[:10] == invented_facts(10, seed=3)
    assert facts != invented_facts(30, seed=4)
    assert len({f.subject for f in facts}) == 30
    assert len({f.relation for f in facts}) == 7
    for f in facts:
        assert len(f.paraphrases) >= 2 and f.user not in f.paraphrases
        assert gives(f.answer, f.target) and gives(f.system, f.target) and f.subject in f.user
    write_facts(tmp_path / "f.jsonl", FactsFile(facts, [], {}))
    assert read_facts(tmp_path / "f.jsonl").facts == facts  # the generator's rows pass validation


def test_controls_are_kept_only_when_the_model_answers_them():
    def answer(prompts):  # knows capitals, and answers founders with the company's own name
        out = []
        for _, q in prompts:
            if q == "What is the capital of France?":
                out.append("The capital of France is Paris.")
            elif q.startswith("Who founded"):
                out.append(f"{q[12:-1]} was founded by {q[12:-1]}.")
            else:
                out.append("I do not know.")
        return out

    kept, asked = known_controls(answer)
    assert asked > 150
    assert [(c.user, c.target) for c in kept] == [("What is the capital of France?", "Paris")]
    data = generate(10, kept, asked, seed=0)
    assert len(data.facts) == 10 and data.controls == kept and data.meta["controls_known"] == 1


def test_controls_are_split_between_the_facts_relations_and_others():
    kept = [Control(f"q{i}", "t", rel) for i, rel in enumerate(["ceo"] * 6 + ["founder"] * 6 + ["author"] * 6)]
    chosen = pick_controls(kept, 8)
    assert [c.relation for c in chosen].count("author") == 4
    assert {c.relation for c in chosen[:4]} == {"ceo", "founder"}


# -- the command end to end on a tiny random model -------------------------------------------------------
@pytest.fixture
def bench_model(monkeypatch, tiny_qwen2, tokenizer, tmp_path):
    monkeypatch.setenv("QF_CACHE", str(tmp_path / "cache"))  # key statistics of the tiny model stay out of ~/.cache
    loads = []

    def fake(spec, device, dtype):
        loads.append(spec)
        return LoadedModel(copy.deepcopy(tiny_qwen2), tokenizer, name="tiny", source="test", quantization="none")

    monkeypatch.setattr(cli, "load", fake)
    return loads


@pytest.fixture
def facts_file(tmp_path):
    data = FactsFile(invented_facts(3), [Control("Who started Alibaba?", "Jack Ma", "founder", "Alibaba"),
                                         Control("What is the capital of France?", "Paris", "capital", "France")])
    path = tmp_path / "facts.jsonl"
    write_facts(path, data)
    return path


@pytest.mark.parametrize("method, protocol, extra", [
    ("qf", "sequential", ["--layer", "2", "--cov-texts", "4", "--cov-fact-texts", "4"]),  # the default config
    ("qf", "sequential", ["--paper", "--layer", "2"]),
    ("qf", "single", ["--layers", "1,3", "--positions", "suffix", "--gamma", "0.5", "--no-covariance"]),
    ("qf", "sequential", ["--paper", "--layer", "3", "--ridge", "0.1"]),
    ("ft", "single", ["--layer", "2", "--ft-steps", "2"]),
    ("in-context", "sequential", []),
    ("none", "single", []),
])
def test_bench_runs_end_to_end_and_resumes(bench_model, facts_file, tmp_path, capsys, method, protocol, extra):
    out = tmp_path / "run"
    argv = ["--facts", str(facts_file), "--method", method, "--protocol", protocol, "--out", str(out),
            "--max-new-tokens", "3", "--checkpoints", "2", *extra]
    assert cli.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("n_facts", "efficacy", "paraphrase", "specificity", "fluency_before", "fluency_after",
                "seconds_per_edit", "method", "layer"):
        assert key in summary
    assert summary["n_facts"] == 3 and summary["complete"]
    for key in ("efficacy", "paraphrase"):
        assert 0.0 <= summary[key] <= 1.0
    rows = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert rows[0]["key"] == "header" and len({r["key"] for r in rows}) == len(rows)
    answers = [r for r in rows if "answer" in r]
    questions = [r for r in answers if r.get("kind") == "question"]
    assert len(questions) >= 3 and all(isinstance(r["answer"], str) for r in answers)
    if method in ("qf", "ft"):
        edits = [r for r in rows if r["key"].startswith("edit/")]
        assert len(edits) == 3 and all(e["delta_rel"] > 0 for e in edits)
    # a second run with the same command finds everything done: no new rows, the same summary
    assert cli.main(argv) == 0
    assert len((out / "cases.jsonl").read_text().splitlines()) == len(rows)
    assert json.loads((out / "summary.json").read_text())["efficacy"] == summary["efficacy"]


def test_a_stopped_sequential_run_resumes_where_it_stopped(bench_model, facts_file, tmp_path):
    out = tmp_path / "run"
    argv = ["--facts", str(facts_file), "--method", "qf", "--protocol", "sequential", "--out", str(out),
            "--paper", "--layer", "2", "--max-new-tokens", "3"]
    assert cli.main(argv) == 0
    full = (out / "cases.jsonl").read_text().splitlines()
    cut = [line for line in full if not json.loads(line)["key"].startswith(("checkpoint/", "final/", "after/2"))]
    (out / "cases.jsonl").write_text("\n".join(cut) + "\n")
    assert cli.main(argv) == 0
    resumed = {json.loads(line)["key"]: json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()}
    finished = {json.loads(line)["key"]: json.loads(line) for line in full}
    assert resumed.keys() == finished.keys()
    for key, row in finished.items():  # the replayed edits bring the model back: the same answers
        if "answer" in row:
            assert resumed[key]["answer"] == row["answer"], key


@pytest.mark.parametrize("config", [
    ["--layer", "2", "--cov-texts", "4", "--cov-fact-texts", "4"],  # the default: covariance metric
    ["--layer", "2", "--no-covariance", "--positions", "subject-copies", "--target", "optimized",
     "--target-steps", "2", "--keep-context"],  # held rows' prefixes and drift watches in the state too
    ["--layers", "1,2", "--no-covariance", "--positions", "subject-copies", "--target", "optimized",
     "--target-steps", "2", "--keep-context"],  # a target spread over two layers: each layer's solver resumes
])
def test_a_stopped_sequential_run_goes_on_from_its_state_without_making_the_edits_again(
        bench_model, facts_file, tmp_path, monkeypatch, capsys, config):
    argv = ["--facts", str(facts_file), "--method", "qf", "--protocol", "sequential", "--max-new-tokens", "3",
            "--checkpoints", "1", "--state-every", "0", *config]
    assert cli.main([*argv, "--out", str(tmp_path / "first")]) == 0  # the key covariance is cached from here on
    assert cli.main([*argv, "--out", str(tmp_path / "whole")]) == 0
    edited, edit, stop = [], QFEdit.edit, {"before": 2}

    def stopping(self, fact):
        if len(edited) == stop["before"]:
            raise KeyboardInterrupt
        edited.append(fact.user)
        return edit(self, fact)

    monkeypatch.setattr(QFEdit, "edit", stopping)
    out = tmp_path / "stopped"
    assert cli.main([*argv, "--out", str(out)]) == 130  # stopped before the third edit, state after the second
    assert (out / "state.safetensors").is_file() and len(edited) == 2
    stop["before"] = None
    capsys.readouterr()
    assert cli.main([*argv, "--out", str(out)]) == 0
    assert "going on after edit 2" in capsys.readouterr().err
    facts = read_facts(facts_file).facts
    assert edited == [facts[0].user, facts[1].user, facts[2].user]  # only the third edit made again
    rows = {}
    for name in ("whole", "stopped"):
        lines = (tmp_path / name / "cases.jsonl").read_text().splitlines()
        rows[name] = {r["key"]: r for r in map(json.loads, lines) if r["key"] != "header"}
    assert rows["whole"].keys() == rows["stopped"].keys()
    for key, row in rows["whole"].items():  # the same model after every edit: the same answers and solves
        if "answer" in row:
            assert rows["stopped"][key]["answer"] == row["answer"], key
    whole, stopped = rows["whole"]["edit/2"], rows["stopped"]["edit/2"]
    assert stopped["rows"] == whole["rows"]
    for field in ("residual", "delta_rel"):
        assert stopped[field] == pytest.approx(whole[field], rel=1e-9)
    drift = [r["solves"][0].get("drift_earlier", 0.0) for r in (stopped, whole)]
    assert drift[0] == pytest.approx(drift[1], rel=1e-6)


def test_a_state_of_another_run_is_not_used_and_no_state_keeps_none(bench_model, facts_file, tmp_path, capsys):
    common = ["--facts", str(facts_file), "--method", "qf", "--protocol", "sequential", "--max-new-tokens", "3",
              "--checkpoints", "3", "--paper"]
    assert cli.main([*common, "--layer", "2", "--out", str(tmp_path / "a")]) == 0
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "state.safetensors", tmp_path / "b" / "state.safetensors")
    capsys.readouterr()
    assert cli.main([*common, "--layer", "3", "--out", str(tmp_path / "b")]) == 0
    assert "going on" not in capsys.readouterr().err
    edits = [json.loads(line) for line in (tmp_path / "b" / "cases.jsonl").read_text().splitlines()
             if json.loads(line)["key"].startswith("edit/")]
    assert len(edits) == 3 and all(e["solves"][0]["rows"] > 0 for e in edits)
    assert cli.main([*common, "--layer", "2", "--no-state", "--out", str(tmp_path / "c")]) == 0
    assert not (tmp_path / "c" / "state.safetensors").exists()
    assert cli.main([*common, "--layer", "2", "--state-every", "-1", "--out", str(tmp_path / "d")]) == 2
    assert "'-1' is not a number of seconds >= 0" in capsys.readouterr().err


def test_the_unedited_models_answers_are_reused_from_a_matching_run_only(bench_model, facts_file, tmp_path, capsys):
    common = ["--facts", str(facts_file), "--protocol", "sequential", "--max-new-tokens", "3", "--checkpoints", "3"]
    assert cli.main([*common, "--method", "none", "--out", str(tmp_path / "a")]) == 0
    first = {json.loads(line)["key"]: json.loads(line) for line in (tmp_path / "a" / "cases.jsonl").read_text().splitlines()}
    assert cli.main([*common, "--method", "qf", "--paper", "--layer", "2", "--out", str(tmp_path / "b"),
                     "--before-from", str(tmp_path / "a")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "b" / "cases.jsonl").read_text().splitlines()]
    before = [r for r in rows if r["key"].startswith("before/")]
    assert before and all(r == first[r["key"]] for r in before)
    assert [r["key"] for r in rows[1:len(before) + 1]] == [r["key"] for r in before]  # copied, not asked again
    capsys.readouterr()
    assert cli.main([*common, "--method", "none", "--max-new-tokens", "4", "--out", str(tmp_path / "c"),
                     "--before-from", str(tmp_path / "a")]) == 2
    assert "differs in max_new_tokens" in capsys.readouterr().err


def test_paraphrases_limits_the_paraphrases_scored(bench_model, facts_file, tmp_path):
    out = tmp_path / "run"
    assert cli.main(["--facts", str(facts_file), "--method", "none", "--protocol", "sequential", "--out", str(out),
                     "--max-new-tokens", "3", "--checkpoints", "3", "--paraphrases", "1"]) == 0
    rows = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    scored = sorted(r["key"] for r in rows if r.get("kind") == "paraphrase" and r["key"].startswith("checkpoint/"))
    assert scored == [f"checkpoint/3/fact/{i}/p0" for i in range(3)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"]["paraphrases"] == 1 and summary["n_paraphrases_scored"] == 3
    # the report's count: the summary's, else (older summaries) what --paraphrases 1 or 2 makes exact
    older = {k: v for k, v in summary.items() if k != "n_paraphrases_scored"}
    assert report._value(summary, "n_paraphrases_scored") == report._value(older, "n_paraphrases_scored") == 3
    assert report._value({**older, "options": {"paraphrases": None}}, "n_paraphrases_scored") is None


def test_a_finished_runs_edits_are_scored_again_on_more_paraphrases_without_editing(bench_model, facts_file,
                                                                                     tmp_path, monkeypatch, capsys):
    common = ["--facts", str(facts_file), "--method", "qf", "--paper", "--layer", "2", "--protocol", "sequential",
              "--no-immediate", "--max-new-tokens", "3", "--checkpoints", "3"]
    made = tmp_path / "made"
    assert cli.main([*common, "--paraphrases", "1", "--out", str(made)]) == 0

    def no_edit(self, fact):
        raise AssertionError("a re-scored run made an edit")

    monkeypatch.setattr(QFEdit, "edit", no_edit)
    out = tmp_path / "all"
    capsys.readouterr()
    assert cli.main([*common, "--edits-from", str(made), "--before-from", str(made), "--out", str(out)]) == 0
    assert "the state after 3 edits taken" in capsys.readouterr().err
    rows = {}
    for name in (made, out):
        rows[name] = {r["key"]: r for r in map(json.loads, (name / "cases.jsonl").read_text().splitlines())}
    paraphrases = sorted(k for k, r in rows[out].items() if r.get("kind") == "paraphrase")
    assert paraphrases == sorted(f"checkpoint/3/fact/{i}/p{j}" for i in range(3) for j in range(3))
    for key, row in rows[made].items():  # the same edits, the same model: the same answers where both asked
        if key.startswith("edit/"):
            assert rows[out][key] == row
        elif "answer" in row:
            assert rows[out][key]["answer"] == row["answer"], key
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_paraphrases_scored"] == 9 and summary["edits_from"]["run"] == str(made)
    assert summary["edits_from"]["commit"] == rows[made]["header"]["commit"]
    # refused in one line: another configuration, checkpoints the last state cannot score, an unfinished run
    for extra, message in ((["--layer", "3"], "differs in method_config"),
                           (["--checkpoints", "1,3"], "give --no-immediate and --checkpoints 3"),
                           (["--limit", "2"], "differs in n_facts")):
        assert cli.main([*common, *extra, "--edits-from", str(made), "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "x").exists()  # refused before the run's folder is written
    (made / "state.safetensors").unlink()
    assert cli.main([*common, "--edits-from", str(made), "--out", str(tmp_path / "y")]) == 2
    assert "no state after its last edit (none)" in capsys.readouterr().err


def test_bench_refuses_bad_input_in_one_line(bench_model, facts_file, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "assistant": ""}) + "\n")
    assert cli.main(["--facts", str(bad), "--method", "qf", "--protocol", "single", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench: error: ") and "bad.jsonl:2: 'assistant' must be a non-empty string" in err
    assert "\n" not in err and not bench_model  # refused before loading the model
    assert cli.main(["--facts", str(facts_file), "--method", "qf", "--protocol", "twice", "--out", "x"]) == 2
    assert "invalid choice: 'twice'" in capsys.readouterr().err
    assert cli.main(["--facts", str(facts_file), "--method", "none", "--protocol", "single", "--out", "x",
                     "--gamma", "1"]) == 2
    assert "are qf options, not none's" in capsys.readouterr().err
    assert cli.main(["--facts", str(facts_file), "--method", "none", "--protocol", "single", "--out", "x",
                     "--null-space", "0.01"]) == 2
    assert "are qf options, not none's" in capsys.readouterr().err
    assert cli.main(["--facts", str(facts_file), "--method", "qf", "--protocol", "single", "--out", "x",
                     "--no-covariance", "--null-space", "0.01"]) == 2
    err = capsys.readouterr().err.strip()
    assert "null space 0.01: give a variance threshold >= 0, with the covariance" in err and "\n" not in err
    assert cli.main(["--facts", str(facts_file), "--method", "qf", "--protocol", "single", "--out", "x",
                     "--ridge-relative"]) == 2
    assert "give --ridge > 0 too" in capsys.readouterr().err


@pytest.mark.parametrize("keep", [False, True])
def test_keep_context_is_an_option_and_the_summary_says_how_far_earlier_rows_moved(bench_model, facts_file,
                                                                                    tmp_path, keep):
    out = tmp_path / "run"
    assert cli.main(["--facts", str(facts_file), "--method", "qf", "--protocol", "sequential", "--out", str(out),
                     "--max-new-tokens", "3", "--checkpoints", "3", "--layer", "2", "--no-covariance",
                     "--positions", "subject-last", "--target", "optimized", "--target-steps", "1",
                     *(["--keep-context"] if keep else [])]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method_config"]["keep_context"] is keep
    edit = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()
            if json.loads(line)["key"] == "edit/2"][0]
    last = edit["solves"][0]
    assert ("held_rows" in last) is keep and summary["drift_earlier"] == last["drift_earlier"] > 0
    deepest = summary["deepest_layer"]  # one point an edit: rows grow with the edits, the last is edit 2's
    assert deepest["edits"] == [1, 2, 3] and deepest["rows"] == sorted(deepest["rows"])
    assert deepest["rows"][-1] == last["rows"] and deepest["delta_rel"][-1] == last["delta_rel"]
    assert edit["target_loss"] > 0  # the answer's loss at the optimisation's last step
    assert ("other rows kept" in report._config(summary)) is keep


def test_paraphrases_an_edit_was_fitted_on_are_left_out_of_paraphrase_unseen(bench_model, facts_file, tmp_path,
                                                                               monkeypatch):
    facts = read_facts(facts_file).facts
    # the model "rewords" each question into its fact's first paraphrase, word for word (case aside)
    first = {f.user: f.paraphrases[0][0].lower() + f.paraphrases[0][1:] for f in facts}
    monkeypatch.setattr(editor, "rewordings", lambda model, tok, question, subject, n: [first[question]])
    out = tmp_path / "run"
    assert cli.main(["--facts", str(facts_file), "--method", "qf", "--protocol", "sequential", "--out", str(out),
                     "--max-new-tokens", "3", "--checkpoints", "3", "--layer", "2", "--no-covariance",
                     "--positions", "subject-last", "--target", "optimized", "--target-steps", "1",
                     "--target-wordings", "1"]) == 0
    rows = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert [r["rewordings"] for r in rows if r["key"].startswith("edit/")] == [[first[f.user]] for f in facts]
    scored = [r for r in rows if r["key"].startswith("checkpoint/3/") and r.get("kind") == "paraphrase"]
    unseen = [r["gives"] for r in scored if r["user"] != facts[r["fact"]].paraphrases[0]]
    assert len(unseen) == len(scored) - 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["paraphrase_unseen"] == fraction(unseen)
    assert "up to 1 rewordings" in report._config(summary)


def test_a_cases_file_of_another_run_is_refused(bench_model, facts_file, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--facts", str(facts_file), "--protocol", "single", "--out", str(out), "--max-new-tokens", "2"]
    assert cli.main([*common, "--method", "none"]) == 0
    assert cli.main([*common, "--method", "in-context"]) == 2
    err = capsys.readouterr().err
    assert "was written by another run (method: 'none' there, 'in-context' now" in err


def test_a_cases_file_written_before_an_option_existed_resumes_if_the_option_is_at_its_default(
        bench_model, facts_file, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--facts", str(facts_file), "--protocol", "sequential", "--out", str(out), "--max-new-tokens", "2",
              "--method", "qf", "--paper", "--layer", "2", "--checkpoints", "3"]
    assert cli.main(common) == 0
    rows = (out / "cases.jsonl").read_text().splitlines()
    header = json.loads(rows[0])
    del header["method_config"]["keep_context"], header["options"]["paraphrases"]  # as an older version wrote it
    (out / "cases.jsonl").write_text("\n".join([json.dumps(header), *rows[1:]]) + "\n")
    assert cli.main(common) == 0 and len((out / "cases.jsonl").read_text().splitlines()) == len(rows)
    capsys.readouterr()
    assert cli.main([*common, "--keep-context"]) == 2
    assert "method_config" in capsys.readouterr().err


def test_report_names_an_optimized_targets_steps_and_contexts():
    rome = editor.EditConfig(layers=(8,), positions="subject-last", target="optimized", target_steps=40)
    assert report._config({"method": "qf", "method_config": rome.as_dict()}).endswith("optimized target (40 steps)")
    fitted = {**rome.as_dict(), "target_contexts": 2}
    assert report._config({"method": "qf", "method_config": fitted}).endswith("(40 steps, 3 contexts)")
    reworded = {**rome.as_dict(), "target_wordings": 2}
    assert report._config({"method": "qf", "method_config": reworded}).endswith("(40 steps, up to 2 rewordings)")
    open_book = editor.EditConfig(layers=(23,), positions="target", target_wordings=3).as_dict()
    assert report._config({"method": "qf", "method_config": open_book}).endswith("open book on up to 3 rewordings too")
    spread = {**rome.as_dict(), "layers": [4, 6, 8]}
    assert report._config({"method": "qf", "method_config": spread}).endswith("(40 steps, fitted at layer 8 and spread)")


def test_report_calls_a_run_qf_paper_only_with_the_papers_configuration():
    paper = {"method": "qf-paper", "method_config": editor.PAPER.as_dict()}
    moved = {"method": "qf-paper", "method_config": {**editor.PAPER.as_dict(), "layers": [27]}}
    older = {"method": "qf", "method_config": {"layers": [23], "positions": "answer", "gamma": 0.0, "ridge": 0.0}}
    assert [report._method(r) for r in (paper, moved, older)] == ["qf-paper", "qf", "qf-paper"]
    assert report._method({"method": "ft", "method_config": {}}) == "ft"


def test_report_writes_run_folders_relative_to_the_runs_folder_it_was_given():
    recorded = "python -m transformers_qf.bench --facts f.jsonl --out /home/a/repo/runs/b/seq --before-from /x/y/paper --dtype bfloat16"
    assert report.portable(recorded, "runs/b/") == ("python -m transformers_qf.bench --facts f.jsonl --out runs/b/seq "
                                                    "--before-from runs/b/paper --dtype bfloat16")
    assert report.portable(None, "runs/b") is None
    rescored = "python -m transformers_qf.bench --out /a/runs/b/again --edits-from /a/runs/b/seq"
    assert report.portable(rescored, "runs/b") == "python -m transformers_qf.bench --out runs/b/again --edits-from runs/b/seq"
    # a run brought from another machine into a folder of another name: --out names the folder it is reported from
    assert report.portable(recorded, "runs/b", "seq-h100").startswith(
        "python -m transformers_qf.bench --facts f.jsonl --out runs/b/seq-h100 --before-from runs/b/paper")


def test_a_run_that_has_not_finished_is_summarized_from_the_checkpoints_it_has_scored(bench_model, facts_file,
                                                                                      tmp_path, capsys):
    from transformers_qf.bench import summary as summary_module

    out = tmp_path / "cut"
    argv = ["--facts", str(facts_file), "--method", "qf", "--paper", "--layer", "2", "--protocol", "sequential",
            "--no-immediate", "--checkpoints", "1,2", "--out", str(out), "--max-new-tokens", "3"]
    assert cli.main(argv) == 0
    finished = json.loads((out / "summary.json").read_text())
    # as if stopped during the third edit: its rows and the final checkpoint are not there, nor a summary
    lines = [line for line in (out / "cases.jsonl").read_text().splitlines()
             if not json.loads(line)["key"].startswith(("edit/2", "checkpoint/3/", "final/"))]
    (out / "cases.jsonl").write_text("\n".join(lines) + "\n")
    (out / "summary.json").unlink()
    capsys.readouterr()
    assert summary_module.main([str(out)]) == 0
    assert "2 of 3 edits" in capsys.readouterr().out
    partial = json.loads((out / "summary.json").read_text())
    assert finished["complete"] and finished["edits_made"] == 3
    assert not partial["complete"] and partial["edits_made"] == 2 and partial["efficacy"] is None
    assert partial["checkpoints"] == finished["checkpoints"][:2]
    text = report.render(report.load_runs(tmp_path), tmp_path, "report")
    assert "cut (stopped after 2 of 3 edits)" in text
    assert summary_module.main([str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


def test_report_tables_plots_and_commands_from_run_folders(bench_model, facts_file, tmp_path):
    runs = tmp_path / "runs"
    common = ["--facts", str(facts_file), "--protocol", "sequential", "--max-new-tokens", "3", "--checkpoints", "1,3"]
    qf = ["--method", "qf", "--paper", "--layer"]
    for name, extra in {"seq-qf": [*qf, "2"], "seq-none": ["--method", "none"],
                        "sweep-L01": [*qf, "1"], "sweep-L03": [*qf, "3"]}.items():
        assert cli.main([*common, *extra, "--out", str(runs / name)]) == 0
    (runs / "plan.json").write_text(json.dumps({"seq-qf": "python -m transformers_qf.bench ...",
                                                "later": "python -m transformers_qf.bench --later"}))
    out = tmp_path / "results"
    assert report.main([str(runs), "--out", str(out)]) == 0
    text = (out / "benchmark.md").read_text()
    assert "## 3 facts, sequential protocol" in text and "| seq-qf | qf | layers 2, answer |" in text and "| seq-none | none |" in text
    assert "## Layer sweep" in text and "| sweep-L01 |" in text
    assert "`seq-qf`: `python -m transformers_qf.bench --facts" in text
    assert text.split("## Planned but not run (or not finished)")[1].strip() == "- `later`: `python -m transformers_qf.bench --later`"
    assert (out / "benchmark_layers.png").stat().st_size > 1000 and (out / "benchmark_retention.png").is_file()
    assert len(json.loads((out / "benchmark.json").read_text())["runs"]) == 4
    threads = torch.get_num_threads()
    assert json.loads((runs / "seq-qf" / "summary.json").read_text())["device"] == f"cpu ({threads} threads)"
    assert f"| cpu ({threads} threads) |" in text.split("| seq-qf |")[1].splitlines()[0]

    # a fresh machine with one run folder: the earlier report's other runs are kept, the folder's run wins
    fresh = tmp_path / "fresh"
    (fresh / "seq-none").mkdir(parents=True)
    summary = json.loads((runs / "seq-none" / "summary.json").read_text())
    (fresh / "seq-none" / "summary.json").write_text(json.dumps({**summary, "commit": "rerun"}))
    merged = tmp_path / "merged"
    assert report.main([str(fresh), "--out", str(merged), "--earlier", str(out / "benchmark.json")]) == 0
    kept = json.loads((merged / "benchmark.json").read_text())["runs"]
    assert [r["label"] for r in kept] == ["seq-none", "seq-qf", "sweep-L01", "sweep-L03"]
    assert kept[0]["commit"] == "rerun" and "| sweep-L03 |" in (merged / "benchmark.md").read_text()
    # a run summarized before the device was recorded: shown as the CPU, marked
    (fresh / "seq-none" / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "device"}))
    assert report.main([str(fresh), "--out", str(merged)]) == 0
    assert "| cpu* |" in (merged / "benchmark.md").read_text().split("| seq-none |")[1].splitlines()[0]
    (tmp_path / "bad.json").write_text("[]")
    assert report.main([str(fresh), "--out", str(merged), "--earlier", str(tmp_path / "bad.json")]) == 2


def test_known_fact_prompts_leave_out_every_entity_a_control_names():
    every = known_fact_prompts()
    kept = known_fact_prompts(["Who is the CEO of Google?", "When was Intel founded?"])
    assert all("Google" not in p and "Intel" not in p for p in kept)
    assert len(kept) < len(every) and {p for p in every if "Google" not in p and "Intel" not in p} == set(kept)
    assert "Who is the chief executive of Apple?" in kept  # every phrasing, not just the first


def test_covariance_on_generic_and_real_entity_text_leaves_out_the_controls(bench_model, facts_file, tmp_path,
                                                                           monkeypatch):
    few = [f for f in real_facts() if f.subject in ("Alibaba", "France", "Apple", "Microsoft")]
    monkeypatch.setattr(keystats, "real_facts", lambda: few)  # a handful keeps the tiny model's answers quick
    out = tmp_path / "run"
    argv = ["--facts", str(facts_file), "--method", "qf", "--protocol", "sequential", "--out", str(out),
            "--layer", "2", "--max-new-tokens", "3", "--covariance", "--cov-corpus", "generic+facts",
            "--cov-texts", "4"]
    assert cli.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method_config"]["covariance"] and summary["method_config"]["cov_corpus"] == "generic+facts"
    corpora = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "answered").glob("*.json")]
    facts_texts = next(texts for texts in corpora if any("Apple" in t for t in texts))
    assert len(facts_texts) == len(known_fact_prompts(["Who started Alibaba?", "What is the capital of France?"]))
    assert facts_texts and not any("Alibaba" in t or "France" in t for t in facts_texts)
    assert any("Apple" in t for t in facts_texts)


def test_answer_weighted_covariance_adds_the_answer_positions_of_the_real_entity_texts(tiny_qwen2, tokenizer,
                                                                                       monkeypatch):
    few = [f for f in real_facts() if f.subject in ("Apple", "Microsoft")]
    monkeypatch.setattr(keystats, "real_facts", lambda: few)
    monkeypatch.setattr(keystats, "generic_prompts", lambda count, seed=0: ["Say hello.", "Name a colour."][:count])

    def answer(prompts, max_new_tokens):
        return ["It is so." for _ in prompts]

    parts = locate(tiny_qwen2, 1)
    facts = keystats.known_fact_texts(answer)
    every, n_every = keystats.key_covariance(tiny_qwen2, parts, tokenizer, facts)
    answers, n_answers = keystats.key_covariance(tiny_qwen2, parts, tokenizer, facts, answers_only=True)
    answer_tokens = len(facts) * len(prompting.encode(tokenizer, "It is so." + prompting.ANSWER_CLOSING))
    assert n_answers == answer_tokens < n_every  # the answer and its closing, nothing of the question
    assert not torch.allclose(answers, every)
    plain = keystats.key_metrics(tiny_qwen2, tokenizer, answer, [1], count=2)[1]
    weighted = keystats.key_metrics(tiny_qwen2, tokenizer, answer, [1], count=2, answer_weight=3.0)[1]
    corpus, _ = keystats.key_covariance(tiny_qwen2, parts, tokenizer, keystats.generic_texts(answer, 2) + facts)
    assert torch.allclose(weighted.factor, keysolve.KeyMetric(corpus + 3.0 * answers).factor)
    assert not torch.allclose(weighted.factor, plain.factor)
    with pytest.raises(ValueError, match="generic\\+facts"):
        keystats.key_metrics(tiny_qwen2, tokenizer, answer, [1], corpus="generic", count=2, answer_weight=1.0)


def test_covariances_of_several_layers_from_one_forward_match_each_layer_alone_and_are_cached_per_layer(
        tiny_qwen2, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("QF_CACHE", str(tmp_path / "cache"))
    texts = [prompting.generation_prompt("", q) + "It is so." + prompting.ANSWER_CLOSING
             for q in ("Who is the CEO of Apple?", "Say hello.", "What is the capital of France?")]
    low, high = locate(tiny_qwen2, 0), locate(tiny_qwen2, 2)
    together = keystats.key_covariances(tiny_qwen2, [low, high], tokenizer, texts, batch_size=2, cache_key="tiny")
    for parts in (low, high):
        alone, count = keystats.key_covariance(tiny_qwen2, parts, tokenizer, texts, batch_size=3)
        assert together[parts.index][1] == count == sum(len(prompting.encode(tokenizer, t)) for t in texts)
        torch.testing.assert_close(together[parts.index][0], alone, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(together[0][0], together[2][0])
    cached = sorted(p.name for p in (tmp_path / "cache" / "keystats").iterdir())
    assert len(cached) == 2 and "layer0" in cached[0] and "layer2" in cached[1]
    monkeypatch.setattr(keystats, "record_layers", lambda *a, **k: pytest.fail("a cached layer was recorded again"))
    again = keystats.key_covariances(tiny_qwen2, [high, low], tokenizer, texts, cache_key="tiny")
    torch.testing.assert_close(again[2][0], together[2][0])


# -- the drift guard -------------------------------------------------------------------------------------------
class _NoisyEdit(NoEdit):
    """An edit that adds seeded noise of 100 times the weight's own scale to layer 2's down_proj: a harmful edit."""

    name = "ft"

    def __init__(self, model):
        self.parts = locate(model, 2)
        self.layers = (self.parts.index,)
        self.weight = OriginalWeight(self.parts.down)
        self.count = 0  # edits in force: the seed of the next one

    def config(self) -> dict:
        return {"layers": list(self.layers)}

    def reset(self) -> None:
        self.weight.restore()
        self.count = 0

    def state_dict(self) -> dict:
        return {"weight": self.weight.weight, "count": torch.tensor(self.count)}

    def load_state_dict(self, state: dict) -> None:
        self.weight.load(state["weight"])
        self.count = int(state["count"])

    def edit(self, fact) -> dict:
        W = self.weight.weight
        noise = torch.randn(W.shape, generator=torch.Generator().manual_seed(self.count))
        self.weight.load(W + 100 * W.std() * noise)
        self.count += 1
        return {"seconds": 0.0, "delta_rel": 1.0}


def _guarded_run(tmp_path, facts_file, name, guard, extra=()):
    out = tmp_path / name
    argv = ["--facts", str(facts_file), "--method", "ft", "--protocol", "sequential", "--out", str(out),
            "--max-new-tokens", "3", "--layer", "2", "--guard-set", "scored", *extra]  # the file's first controls
    if guard is not None:
        argv += ["--guard-max-drop", str(guard)]
    assert cli.main(argv) == 0
    rows = {r["key"]: r for r in map(json.loads, (out / "cases.jsonl").read_text().splitlines())}
    return argv, rows, json.loads((out / "summary.json").read_text())


def test_the_drift_guard_withdraws_an_edit_that_lowers_the_controls_and_a_resumed_run_does_not_make_it_again(
        bench_model, facts_file, tmp_path, monkeypatch):
    # a tiny random model answers no control: count every control as answered, so that the guard has some
    monkeypatch.setattr("transformers_qf.bench.run.gives", lambda answer, target: True)
    made = []
    monkeypatch.setattr(cli, "build_method", lambda args, lm, data: made.append(_NoisyEdit(lm.model)) or made[-1])
    _, plain, _ = _guarded_run(tmp_path, facts_file, "plain", None)
    _, lenient, lenient_summary = _guarded_run(tmp_path, facts_file, "lenient", 1e9)
    assert lenient["before/guard"]["controls"] == [0, 1]
    assert not lenient_summary["refused_edits"] and lenient_summary["guard_drop_max"] > 0
    assert lenient["final/logprob"]["logprob"] == plain["final/logprob"]["logprob"]  # a guard that refuses nothing

    argv, strict, strict_summary = _guarded_run(tmp_path, facts_file, "strict", 0.0, ["--no-state"])
    refused = strict_summary["refused_edits"]
    assert refused == [i for i in range(3) if strict[f"edit/{i}"]["guard_drop"] > 0] and refused  # 0 nats allowed
    assert all(strict[f"edit/{i}"]["refused"] == (i in refused) for i in range(3))
    assert made[-1].count == 3 - len(refused)  # a withdrawn edit leaves the method as it was before it
    # resumed from its cases file alone (no state): the refused edits are not made again
    out = tmp_path / "strict"
    cut = [line for line in (out / "cases.jsonl").read_text().splitlines()
           if not json.loads(line)["key"].startswith(("checkpoint/", "final/"))]
    (out / "cases.jsonl").write_text("\n".join(cut) + "\n")
    assert cli.main(argv) == 0
    assert made[-1].count == 3 - len(refused)
    again = {r["key"]: r for r in map(json.loads, (out / "cases.jsonl").read_text().splitlines())}
    assert again["final/logprob"]["logprob"] == strict["final/logprob"]["logprob"]


def test_the_drift_guard_counts_the_controls_whose_target_is_no_longer_greedy_and_withdraws_past_its_limit(
        bench_model, facts_file, tmp_path, monkeypatch):
    monkeypatch.setattr("transformers_qf.bench.run.gives", lambda answer, target: True)
    made = []
    monkeypatch.setattr(cli, "build_method", lambda args, lm, data: made.append(_NoisyEdit(lm.model)) or made[-1])
    _, rows, summary = _guarded_run(tmp_path, facts_file, "lost", None, ["--guard-max-lost", "0", "--no-state"])
    greedy_before = rows["before/guard"]["greedy"]
    assert len(greedy_before) == len(rows["before/guard"]["controls"]) == 2
    edits = [rows[f"edit/{i}"] for i in range(3)]
    assert all(0 <= e["guard_lost"] <= sum(greedy_before) and e["guard_worst"] >= e["guard_drop"] for e in edits)
    # 0 lost controls allowed: exactly the edits that lost one are withdrawn, and the noise loses some
    assert summary["refused_edits"] == [i for i, e in enumerate(edits) if e["guard_lost"] > 0]
    assert summary["guard_lost_max"] == max(e["guard_lost"] for e in edits)
    assert made[-1].count == 3 - len(summary["refused_edits"])
    if sum(greedy_before):
        assert summary["refused_edits"]


def test_the_drift_guard_is_refused_outside_the_sequential_protocol(bench_model, facts_file, tmp_path, capsys):
    argv = ["--facts", str(facts_file), "--method", "ft", "--protocol", "single", "--out", str(tmp_path / "r"),
            "--layer", "2", "--guard-max-drop", "1"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--protocol sequential" in err[0] and not (tmp_path / "r").exists()
    argv = [a for a in argv if a not in ("--guard-max-drop", "1")] + ["--guard-max-lost", "-1"]
    argv[argv.index("single")] = "sequential"
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--guard-max-lost -1" in err[0] and not (tmp_path / "r").exists()
    argv = [a for a in argv if a not in ("--guard-max-lost", "-1")] + ["--guard-resolve"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--method qf" in err[0] and not (tmp_path / "r").exists()


def _answering_with(model, tokenizer, questions: list[str], word: str, margin: float = 1.0) -> None:
    """Make a tiny random model answer every question's first token with `word` (one token), by `margin` nats
    over the runner-up: its output row is moved along the mean hidden state there. The guard then has controls
    that the unedited model answers, as a real model's known controls."""
    from transformers_qf.core import prompting

    token, = tokenizer(word, add_special_tokens=False)["input_ids"]
    prompts = []
    for question in questions:
        tf = prompting.teacher_forced(tokenizer, "", question, word)
        prompts.append(tf.input_ids[:int(tf.kept[0]) + 1 + prompting.header_rows(tokenizer)])
    with torch.no_grad():
        hidden = torch.stack([model.model(input_ids=ids[None]).last_hidden_state[0, -1] for ids in prompts])
        logits = model.lm_head(hidden)
        runner_up = logits.clone()
        runner_up[:, token] = -float("inf")
        direction = hidden.mean(0) / hidden.mean(0).norm()
        needed = (runner_up.max(1).values - logits[:, token] + margin) / (hidden @ direction)
        model.lm_head.weight[token] += float(needed.max()) * direction


def test_a_re_solving_guard_holds_the_held_out_controls_an_edit_loses_and_the_scored_ones_stay_out_of_it(
        bench_model, facts_file, tmp_path, monkeypatch, tiny_qwen2, tokenizer):
    from transformers_qf.bench import run as run_module

    monkeypatch.setattr("transformers_qf.bench.run.gives", lambda answer, target: True)
    questions = [f"Who is the CEO of {name}?" for name in ("Apple", "Ford", "IBM", "Intel")]
    _answering_with(tiny_qwen2, tokenizer, questions, "te")  # the run's model is a copy of this one, made later
    asked = []

    def answered(answer, leave_out):
        asked.append(leave_out)
        return [(Control(q, "te", "ceo", q.split()[-1][:-1]), "te") for q in questions], len(questions)

    monkeypatch.setattr(run_module, "answered_controls", answered)
    out = tmp_path / "resolve"
    argv = ["--facts", str(facts_file), "--method", "qf", "--paper", "--layer", "2", "--gamma", "20",
            "--protocol", "sequential", "--out", str(out), "--max-new-tokens", "3", "--guard-resolve",
            "--guard-controls", "4", "--guard-max-lost", "0"]
    assert cli.main(argv) == 0
    rows = {r["key"]: r for r in map(json.loads, (out / "cases.jsonl").read_text().splitlines())}
    summary = json.loads((out / "summary.json").read_text())
    # the guard watches the held-out questions, never the facts file's controls
    assert asked == [frozenset({"Who started Alibaba?", "What is the capital of France?"})]
    assert sorted(rows["before/guard"]["controls"]) == sorted(questions)
    assert all(rows["before/guard"]["greedy"])
    edits = [rows[f"edit/{i}"] for i in range(3)]
    resolved = [e for e in edits if e.get("guard_lost_first")]
    assert resolved  # the pushed edits lose the controls' shared first token (here the first edit loses all four)
    assert summary["guard_resolved_edits"] == [e["fact"] for e in resolved]
    for e in resolved:  # held where the unedited model has them: nothing is lost any more, nothing refused
        assert e["guard_held_rows"] > 0 and e["guard_lost"] == 0 and not e["refused"]


def test_the_runs_of_200_facts_or_more_get_a_plot_of_their_own_stopped_ones_too(tmp_path):
    def run(label, edits, facts=None):
        points = [{"edits": n, "efficacy": 1.0, "specificity": 0.9, "specificity_target_only": 0.9} for n in edits]
        change = {"edits": list(range(1, edits[-1] + 1)), "rows": [], "delta_rel": [0.01 * n for n in range(edits[-1])]}
        return {"label": label, "protocol": "sequential", "n_facts": facts or edits[-1], "method": "none",
                "method_config": {},
                "model": "tiny", "dtype": "float32", "commit": "c", "checkpoints": points, "deepest_layer": change}

    text = report.render([run("short", [10, 100]), run("long", [10, 100, 300])], tmp_path, "report")
    assert "![retention](benchmark_retention.png)" in text and "![scale](benchmark_scale.png)" in text
    assert (tmp_path / "benchmark_scale.png").stat().st_size > 0
    (tmp_path / "only-short").mkdir()
    assert "![scale]" not in report.render([run("short", [10, 100])], tmp_path / "only-short", "report")
    (tmp_path / "stopped").mkdir()  # a 1000-fact run stopped after its 100-edit checkpoint is a scale run
    assert "![scale]" in report.render([run("stopped", [10, 100], facts=1000)], tmp_path / "stopped", "report")
