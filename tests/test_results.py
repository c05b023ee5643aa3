"""parallel_autopilot.results: bringing done issues home to the base branch (real git)."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import git

from parallel_autopilot import config, results
from parallel_autopilot.errors import Conflict, WorktreeDirty
from parallel_autopilot.issues import IssueStore


def finish(repo, store, title, filename, text):
    """What an agent does: a branch from main with one commit, then complete."""
    issue = store.add(title)
    claim = store.claim("agent-001")
    branch = f"autopilot/issue-{issue.number}"
    git(repo, "checkout", "-q", "-b", branch, "main")
    (repo / filename).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", title)
    sha = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "checkout", "-q", "main")
    store.complete(claim, {"branch": branch, "commit": sha, "duration": 1.0})
    return issue.number


@pytest.fixture
def setup(git_repo, tmp_path):
    (git_repo / ".gitignore").write_text(".autopilot/\n")
    git(git_repo, "add", "-A")
    git(git_repo, "commit", "-q", "-m", "ignore state")
    settings = config.load({}, repo=str(git_repo))
    return git_repo, settings, IssueStore(settings.db_path)


def test_done_branches_merge_in_order_and_a_conflict_is_aborted_and_reported(setup):
    repo, settings, store = setup
    one = finish(repo, store, "add a", "a.txt", "a\n")
    two = finish(repo, store, "readme v1", "README.md", "one\n")
    three = finish(repo, store, "readme v2", "README.md", "two\n")  # conflicts with #2 once #2 is in
    noop = store.add("no change").number
    store.complete(store.claim("agent-002"), {"branch": "autopilot/issue-4", "commit": None})

    assert results.merge_done(settings, store, dry_run=True).merged == [one, two, three]
    assert git(repo, "rev-list", "--count", "main").strip() == "2"  # dry run changed nothing

    report = results.merge_done(settings, store)
    assert (report.merged, report.conflicts, report.skipped) == ([one, two], [three], [noop])
    assert (repo / "a.txt").read_text() == "a\n" and (repo / "README.md").read_text() == "one\n"
    assert git(repo, "status", "--porcelain").strip() == ""  # the conflict left nothing behind
    assert git(repo, "rev-parse", "--verify", f"autopilot/issue-{three}")  # kept for a person
    assert "Merge #1: add a" in git(repo, "log", "--merges", "--format=%s", "main")

    again = results.merge_done(settings, store)
    assert (again.merged, again.already, again.conflicts) == ([], [one, two], [three])


def test_refuses_a_dirty_main_checkout_or_another_branch(setup):
    repo, settings, store = setup
    finish(repo, store, "add a", "a.txt", "a\n")
    (repo / "README.md").write_text("local edit\n")
    with pytest.raises(WorktreeDirty, match="commit or stash"):
        results.merge_done(settings, store)
    git(repo, "checkout", "-q", "README.md")
    git(repo, "checkout", "-q", "-b", "elsewhere")
    with pytest.raises(Conflict, match="git checkout main"):
        results.merge_done(config.load({}, repo=str(repo), base_branch="main"), store)


def test_the_task_exits_non_zero_on_a_conflict(setup):
    repo, settings, store = setup
    finish(repo, store, "readme v1", "README.md", "one\n")
    finish(repo, store, "readme v2", "README.md", "two\n")
    proc = subprocess.run(["parallel-autopilot", "issues.merge"], cwd=repo, capture_output=True, text=True,
                          env={**os.environ})
    assert proc.returncode == 4 and "conflict" in proc.stderr and "Traceback" not in proc.stderr
    assert "merged into main: #1" in proc.stdout
