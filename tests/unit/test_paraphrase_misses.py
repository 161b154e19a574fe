"""benchmarks/probes/paraphrase_misses.py on a hand-made run folder: how the missed answers are sorted."""

import pytest


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("probes/paraphrase_misses")


def test_missed_answers_are_sorted_by_what_they_say_instead(script, tmp_path, finished_run):
    answers = [("question", "The CEO of Droram is Orla Esposito.", True),
               ("paraphrase", "Droram is run by Ada Lee.", False),  # the subject, with another value
               ("paraphrase", "Orla Espinoza runs it.", False),  # part of the target
               ("paraphrase", "I do not know.", False)]
    rows = [*({"key": f"checkpoint/1/{kind}/0/{i}", "kind": kind, "fact": 0, "answer": answer,
               "target": "Orla Esposito", "gives": gives} for i, (kind, answer, gives) in enumerate(answers)),
            {"key": "checkpoint/0/paraphrase/0/9", "kind": "paraphrase", "fact": 0, "answer": "x",  # not the last
             "target": "Orla Esposito", "gives": False}]
    run = finished_run(["Who runs Droram?", "Who leads Droram?", "Who heads Droram?"], rows)
    got = script.misses(script.finished_runs.read_run(run, "paraphrase_misses"))
    assert (got["question"]["scored"], got["question"]["missed"]) == (1, 0)
    assert (got["paraphrase"]["scored"], got["paraphrase"]["missed"]) == (3, 3)
    assert sum(got["paraphrase"][kind] for kind in script.MISS_KINDS) == 3
    assert len({kind for kind in script.MISS_KINDS if got["paraphrase"][kind]}) == 3  # one of each kind
    assert script.main([str(run), "--out", str(tmp_path / "out")]) == 0
    assert "| run | 1 | 3 | 3 |" in (tmp_path / "out" / "paraphrase_misses.md").read_text(encoding="utf-8")
