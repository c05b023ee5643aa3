"""parallel_autopilot.runtime.workspace: the runtime's git steps on a real worktree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from parallel_autopilot.errors import GitError
from parallel_autopilot.runtime.workspace import Workspace


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def git_repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("test repository\n")
    git(repo, "add", "README.md")
    git(repo, "-c", "user.name=Test", "-c", "user.email=test@example.invalid", "commit", "-q", "-m", "initial")
    return repo


@pytest.fixture
def ws(git_repo, tmp_path) -> Workspace:
    path = tmp_path / "worktrees" / "agent-001"
    git(git_repo, "worktree", "add", "-q", "-b", "agent/001", str(path), "main")
    return Workspace(path, "agent-001", "main")


def test_branch_commit_with_trailers_and_detach(ws, git_repo):
    base = ws.start_branch("autopilot/issue-3")
    assert base == git(git_repo, "rev-parse", "main") and ws.current_branch() == "autopilot/issue-3"
    assert ws.commit_all("#3: nothing", {"Issue": "#3"}) is None  # no change, no commit
    (ws.path / "new.txt").write_text("new\n")
    sha = ws.commit_all("#3: add new.txt", {"Issue": "#3", "Agent": "agent-001", "Lease-Token": "9"})
    assert sha == ws.head() == git(git_repo, "rev-parse", "autopilot/issue-3")
    assert git(git_repo, "log", "-1", "--format=%an <%ae>|%cn|%(trailers:key=Lease-Token,valueonly)",
               sha) == "agent-001 <agent-001@parallel-autopilot.invalid>|agent-001|9"
    ws.detach()
    assert ws.current_branch() is None and ws.head() == sha
    ws.detach()  # already detached: nothing to do
    # the branch is free: starting it again resets it to the base
    assert ws.start_branch("autopilot/issue-3") == base


def test_salvage_stashes_everything_with_its_message(ws, git_repo):
    assert ws.salvage("autopilot salvage: nothing") is None
    (ws.path / "untracked.txt").write_text("keep me\n")
    (ws.path / "README.md").write_text("changed\n")
    sha = ws.salvage("autopilot failed: agent-001 #1 attempt 1 (exit code 1)")
    assert sha and not ws.dirty()
    assert git(git_repo, "stash", "list") == "stash@{0}: On agent/001: autopilot failed: agent-001 #1 attempt 1 (exit code 1)"
    assert git(git_repo, "log", "-1", "--format=%an", "stash@{0}") == "agent-001"


def test_salvage_retries_a_busy_stash_ref(ws, git_repo):
    lock = Path(git(git_repo, "rev-parse", "--absolute-git-dir")) / "refs" / "stash.lock"
    lock.write_text("")
    slept = []

    def sleep(seconds):  # another agent finishes its stash while we wait
        slept.append(seconds)
        if len(slept) == 2:
            lock.unlink()

    ws.sleep = sleep
    (ws.path / "file.txt").write_text("x\n")
    assert ws.salvage("autopilot salvage: busy") and len(slept) == 2
    lock.write_text("")
    ws.sleep = lambda s: None
    (ws.path / "file.txt").write_text("y\n")
    with pytest.raises(GitError):
        ws.salvage("autopilot salvage: stuck", attempts=2)
    lock.unlink()


def test_a_stale_index_lock_is_removed(ws):
    lock = Path(git(ws.path, "rev-parse", "--absolute-git-dir")) / "index.lock"
    assert ws.clear_stale_lock() is None
    lock.write_text("")
    assert ws.clear_stale_lock() == lock and not lock.exists()


def test_a_branch_left_checked_out_by_a_dead_agent_is_taken(ws, git_repo, tmp_path):
    other = tmp_path / "worktrees" / "agent-002"
    git(git_repo, "worktree", "add", "-q", "-b", "autopilot/issue-5", str(other), "main")
    (other / "half.txt").write_text("half done\n")
    git(other, "add", "half.txt")
    git(other, "-c", "user.name=x", "-c", "user.email=x@y", "commit", "-q", "-m", "half")
    assert ws.start_branch("autopilot/issue-5") == git(git_repo, "rev-parse", "main")
    assert ws.current_branch() == "autopilot/issue-5"
