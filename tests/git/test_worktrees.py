"""parallel_autopilot.git.clones on real temporary git repositories: each agent's OWN clone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support.shell import sh

from parallel_autopilot import config
from parallel_autopilot.git import clones as worktrees
from parallel_autopilot.errors import AgentNotFound, GitError, UnmergedWork, WorktreeDirty


pytestmark = pytest.mark.usefixtures("hermetic_git")


def init_repo(path: Path, commit: bool = True) -> Path:
    path.mkdir()
    sh(path, "init", "-q", "-b", "main")
    sh(path, "config", "user.name", "Test")
    sh(path, "config", "user.email", "test@example.com")
    if commit:
        (path / "README").write_text("hello\n")
        sh(path, "add", "-A")
        sh(path, "commit", "-q", "-m", "init")
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return init_repo(tmp_path / "repo")


def settings_for(repo: Path, **values) -> config.Settings:
    return config.load({}, repo=str(repo), **values)


def commit_file(cwd: Path, name: str) -> str:
    (cwd / name).write_text(f"{name}\n")
    sh(cwd, "add", name)
    sh(cwd, "-c", "user.name=A", "-c", "user.email=a@x.invalid", "commit", "-q", "-m", f"add {name}")
    return sh(cwd, "rev-parse", "HEAD")


def registered(repo: Path) -> set[Path]:
    return {Path(line.split(" ", 1)[1]) for line in sh(repo, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")} - {repo}


# -- create ------------------------------------------------------------------

def test_create_three_clones_sharing_the_objects(repo):
    made = worktrees.create(settings_for(repo), 3)
    root = repo / ".worktrees"
    assert [w.id for w in made] == ["agent-001", "agent-002", "agent-003"]
    assert [w.path for w in made] == [root / "agent-001", root / "agent-002", root / "agent-003"]
    assert all(w.state == "ok" and w.dirty is False and w.unmerged == () and w.branch is None for w in made)
    assert registered(repo) == set()  # no linked worktree: nothing of the agents lives in the user's .git
    head = sh(repo, "rev-parse", "main")
    for w in made:
        assert (w.path / ".git").is_dir()
        alternates = (w.path / ".git" / "objects" / "info" / "alternates").read_text().strip()
        assert Path(alternates).resolve() == (repo / ".git" / "objects").resolve()
        assert sh(w.path, "rev-parse", "HEAD") == head
        assert sh(w.path, "rev-parse", "refs/remotes/origin/main") == head
        assert sh(w.path, "for-each-ref", "refs/heads/") == ""  # detached, no local branch
    assert sh(repo, "status", "--porcelain") == ""  # the clones are excluded from the user's status
    json.dumps([w.to_dict() for w in made])


def test_recreate_is_idempotent_and_leaves_healthy_clones_untouched(repo):
    worktrees.create(settings_for(repo), 2)
    clone = repo / ".worktrees" / "agent-001"
    (clone / "wip.txt").write_text("unsaved\n")
    commit = commit_file(clone, "mine.txt")
    again = worktrees.create(settings_for(repo), 3)
    assert [w.id for w in again] == ["agent-001", "agent-002", "agent-003"]
    assert (clone / "wip.txt").read_text() == "unsaved\n"
    assert sh(clone, "rev-parse", "HEAD") == commit
    assert again[0].dirty is True


def test_a_deleted_clone_is_made_again(repo):
    worktrees.create(settings_for(repo), 1)
    shutil.rmtree(repo / ".worktrees" / "agent-001")
    (made,) = worktrees.create(settings_for(repo), 1)
    assert made.state == "ok" and (made.path / ".git").is_dir()


def test_a_foreign_directory_is_refused_with_one_line_and_nothing_is_created(repo):
    foreign = repo / ".worktrees" / "agent-002"
    foreign.mkdir(parents=True)
    (foreign / "precious.txt").write_text("mine\n")
    with pytest.raises(GitError, match="agent-002 exists but is not an agent's clone"):
        worktrees.create(settings_for(repo), 3)
    assert not (repo / ".worktrees" / "agent-001").exists()
    assert (foreign / "precious.txt").read_text() == "mine\n"


def test_an_empty_leftover_directory_is_used(repo):
    (repo / ".worktrees" / "agent-001").mkdir(parents=True)
    (made,) = worktrees.create(settings_for(repo), 1)
    assert made.state == "ok"


def test_a_repository_without_commits_is_refused(tmp_path):
    empty = init_repo(tmp_path / "empty", commit=False)
    with pytest.raises(GitError, match="no commits yet"):
        worktrees.create(settings_for(empty), 1)


def test_a_missing_base_branch_is_refused_naming_the_setting(repo):
    with pytest.raises(GitError, match="base branch 'trunk' does not exist.*autopilot.base_branch"):
        worktrees.create(settings_for(repo, base_branch="trunk"), 1)


def test_the_base_branch_setting_wins_over_the_current_branch(repo):
    sh(repo, "checkout", "-q", "-b", "feature")
    feature = commit_file(repo, "feature.txt")
    sh(repo, "checkout", "-q", "main")
    (made,) = worktrees.create(settings_for(repo, base_branch="feature"), 1)
    assert made.base == "feature" and sh(made.path, "rev-parse", "HEAD") == feature


def test_a_linked_worktree_is_not_taken_for_the_repository(repo, tmp_path):
    sh(repo, "worktree", "add", "-q", "-b", "side", str(tmp_path / "side"))
    with pytest.raises(GitError, match="linked worktree, not the main checkout"):
        worktrees.create(settings_for(tmp_path / "side"), 1)


def test_worktrees_dir_setting(repo, tmp_path):
    outside = tmp_path / "elsewhere"
    made = worktrees.create(settings_for(repo, worktrees_dir=str(outside)), 2)
    assert [w.path for w in made] == [outside / "agent-001", outside / "agent-002"]


# -- the old layout ------------------------------------------------------------

def test_a_clean_old_layout_worktree_is_migrated_and_its_branch_kept(repo):
    old = repo / ".worktrees" / "agent-001"
    sh(repo, "worktree", "add", "-q", "-b", "agent/001", str(old), "main")
    work = commit_file(old, "old-work.txt")
    (made,) = worktrees.create(settings_for(repo), 1)
    assert made.state == "ok" and (old / ".git").is_dir() and registered(repo) == set()
    assert sh(repo, "rev-parse", "agent/001") == work  # the old branch and its commit stay


def test_a_dirty_old_layout_worktree_is_refused_with_the_fix(repo):
    old = repo / ".worktrees" / "agent-001"
    sh(repo, "worktree", "add", "-q", "-b", "agent/001", str(old), "main")
    (old / "unsaved.txt").write_text("wip\n")
    with pytest.raises(WorktreeDirty, match="old layout.*uncommitted changes.*commit or stash"):
        worktrees.create(settings_for(repo), 1)
    assert (old / "unsaved.txt").exists() and registered(repo) == {old}
    (listed,) = worktrees.list(settings_for(repo))
    assert listed.state == "legacy" and listed.dirty is True


# -- remove ------------------------------------------------------------------

def test_remove_a_clean_one(repo):
    worktrees.create(settings_for(repo), 2)
    report = worktrees.remove(settings_for(repo), ["1"])
    assert report.removed == ["agent-001"] and not (repo / ".worktrees" / "agent-001").exists()
    assert [w.id for w in worktrees.list(settings_for(repo))] == ["agent-002"]


def test_remove_refuses_dirty_unfetched_commits_and_stashes_and_removes_nothing(repo):
    worktrees.create(settings_for(repo), 3)
    root = repo / ".worktrees"
    (root / "agent-001" / "wip.txt").write_text("unsaved\n")
    sh(root / "agent-002", "checkout", "-q", "-b", "autopilot/issue-7")
    commit_file(root / "agent-002", "attempt.txt")  # done on the agent's side, never fetched
    (root / "agent-003" / "README").write_text("stashed\n")
    sh(root / "agent-003", "-c", "user.name=A", "-c", "user.email=a@x.invalid", "stash", "push", "-q")
    with pytest.raises(WorktreeDirty) as err:
        worktrees.remove(settings_for(repo))
    text = str(err.value)
    assert "nothing was removed" in text and "agent-001 has uncommitted changes" in text
    assert "refs/heads/autopilot/issue-7" in text and "refs/stash" in text
    assert all((root / a).exists() for a in ("agent-001", "agent-002", "agent-003"))


def test_fetched_work_no_longer_blocks_remove(repo):
    worktrees.create(settings_for(repo), 1)
    clone = repo / ".worktrees" / "agent-001"
    sh(clone, "checkout", "-q", "-b", "autopilot/issue-7")
    commit = commit_file(clone, "attempt.txt")
    with pytest.raises(UnmergedWork):
        worktrees.remove(settings_for(repo))
    sh(repo, "fetch", "-q", str(clone), "refs/heads/autopilot/issue-7:refs/heads/autopilot/issue-7")
    report = worktrees.remove(settings_for(repo))
    assert report.removed == ["agent-001"]
    assert sh(repo, "rev-parse", "autopilot/issue-7") == commit  # issue branches are never deleted here


def test_remove_keep_unsafe_removes_what_is_safe_and_reports_the_rest(repo):
    worktrees.create(settings_for(repo), 2)
    (repo / ".worktrees" / "agent-002" / "wip.txt").write_text("unsaved\n")
    report = worktrees.remove(settings_for(repo), keep_unsafe=True)
    assert report.removed == ["agent-001"] and list(report.kept) == ["agent-002"]
    assert "kept agent-002: has uncommitted changes" in report.summary()


def test_remove_with_force_removes_everything(repo):
    worktrees.create(settings_for(repo), 2)
    (repo / ".worktrees" / "agent-002" / "wip.txt").write_text("unsaved\n")
    report = worktrees.remove(settings_for(repo), force=True)
    assert report.removed == ["agent-001", "agent-002"] and not (repo / ".worktrees").exists()


def test_a_clone_whose_config_could_run_programs_is_not_inspected_and_kept(repo, tmp_path):
    worktrees.create(settings_for(repo), 1)
    clone = repo / ".worktrees" / "agent-001"
    ran = tmp_path / "ran-on-the-host"
    sh(clone, "config", "core.fsmonitor", f"touch {ran}; false")
    sh(clone, "config", "filter.evil.clean", f"touch {ran}; cat")
    (listed,) = worktrees.list(settings_for(repo))
    assert listed.state == "suspect" and listed.dirty is None
    with pytest.raises(WorktreeDirty, match="could run programs"):
        worktrees.remove(settings_for(repo))
    assert not ran.exists()


def test_remove_an_unknown_id(repo):
    worktrees.create(settings_for(repo), 1)
    with pytest.raises(AgentNotFound, match="no worktree agent-005"):
        worktrees.remove(settings_for(repo), ["5"])


def test_merged_issue_branches_are_dropped_and_unmerged_ones_kept(repo):
    sh(repo, "branch", "autopilot/issue-1")  # at main: merged
    sh(repo, "checkout", "-q", "-b", "autopilot/issue-2")
    commit_file(repo, "unmerged.txt")
    sh(repo, "checkout", "-q", "main")
    assert worktrees.drop_merged_issue_branches(settings_for(repo)) == ["autopilot/issue-1"]
    assert sh(repo, "branch", "--list", "autopilot/*", "--format=%(refname:short)") == "autopilot/issue-2"
