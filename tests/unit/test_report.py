"""core/report.py: the commit stamped on every report."""

import subprocess

import pytest

from transformers_qf.core.report import git_commit


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A git checkout with code, a report in results/ and a dump in parameters/, all committed."""
    monkeypatch.delenv("QF_COMMIT", raising=False)
    _git(tmp_path, "init", "-q")
    for path in ("script.py", "results/qf/qf_results.md", "parameters/manifest.json"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("first\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    return tmp_path


def test_rewritten_reports_and_parameters_leave_the_commit_clean(checkout):
    clean = git_commit(checkout)
    assert clean and "+" not in clean and "unknown" not in clean
    (checkout / "results/qf/qf_results.md").write_text("a later run\n")
    (checkout / "parameters/manifest.json").write_text("a later run\n")
    assert git_commit(checkout) == clean
    assert git_commit(checkout / "results") == clean  # asked from inside an output folder too


def test_changed_code_marks_the_commit(checkout):
    clean = git_commit(checkout)
    (checkout / "script.py").write_text("changed\n")
    assert git_commit(checkout) == clean + "+uncommitted changes"
    assert git_commit(checkout / "results") == clean + "+uncommitted changes"


def test_outside_a_checkout_the_commit_is_unknown_and_qf_commit_wins(tmp_path, monkeypatch):
    monkeypatch.delenv("QF_COMMIT", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_commit(tmp_path) == "unknown (not a git checkout)"
    monkeypatch.setenv("QF_COMMIT", "abc1234")
    assert git_commit(tmp_path) == "abc1234"
