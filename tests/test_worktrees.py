"""parallel_autopilot.worktrees on real temporary git repositories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import sh

from parallel_autopilot import config, worktrees
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
    sh(cwd, "commit", "-q", "-m", f"add {name}")
    return sh(cwd, "rev-parse", "HEAD")


def all_commits(repo: Path) -> int:
    return int(sh(repo, "rev-list", "--all", "--count"))


def registered(repo: Path) -> set[Path]:
    return {Path(line.split(" ", 1)[1]) for line in sh(repo, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")} - {repo}


# -- create ------------------------------------------------------------------

def test_create_three(repo):
    made = worktrees.create(settings_for(repo), 3)
    root = repo / ".worktrees"
    assert [w.id for w in made] == ["agent-001", "agent-002", "agent-003"]
    assert [w.path for w in made] == [root / "agent-001", root / "agent-002", root / "agent-003"]
    assert [w.branch for w in made] == ["agent/001", "agent/002", "agent/003"]
    assert all(w.state == "ok" and w.dirty is False and w.ahead == 0 and w.base == "main" for w in made)
    assert registered(repo) == {w.path for w in made}
    head = sh(repo, "rev-parse", "main")
    assert all(sh(w.path, "rev-parse", "HEAD") == head for w in made)
    # the worktrees do not show up as untracked files of the main checkout
    assert sh(repo, "status", "--porcelain") == ""
    json.dumps([w.to_dict() for w in made])


def test_ids_are_always_zero_padded(repo):
    made = worktrees.create(settings_for(repo), 10)
    assert [w.id for w in made][-2:] == ["agent-009", "agent-010"]
    assert sorted(p.name for p in (repo / ".worktrees").iterdir()) == [f"agent-{i:03d}" for i in range(1, 11)]
    assert sh(repo, "branch", "--list", "agent/*", "--format=%(refname:short)").splitlines() == [
        f"agent/{i:03d}" for i in range(1, 11)]


def test_recreate_is_idempotent_and_leaves_healthy_worktrees_untouched(repo):
    s = settings_for(repo)
    first = worktrees.create(s, 3)
    commits = all_commits(repo)
    work = commit_file(first[0].path, "agent-work")  # agent-001 made a commit
    (first[1].path / "scratch.txt").write_text("in progress\n")  # agent-002 is mid-work
    sh(first[2].path, "checkout", "-q", "-b", "autopilot/issue-7")  # agent-003 works on an issue
    again = worktrees.create(s, 3)
    assert [w.path for w in again] == [w.path for w in first]
    assert all_commits(repo) == commits + 1  # create added none
    assert sh(first[0].path, "rev-parse", "HEAD") == work
    assert (first[1].path / "scratch.txt").read_text() == "in progress\n"
    assert [w.dirty for w in again] == [False, True, False]
    assert [w.ahead for w in again] == [1, 0, 0]
    assert again[2].branch == "autopilot/issue-7" and again[2].agent_branch == "agent/003"


def test_create_more_keeps_the_existing_ones(repo):
    s = settings_for(repo)
    two = worktrees.create(s, 2)
    commit_file(two[0].path, "kept")
    five = worktrees.create(s, 5)
    assert [w.id for w in five] == [f"agent-00{i}" for i in range(1, 6)]
    assert five[0].ahead == 1 and five[4].ahead == 0


def test_a_deleted_worktree_directory_is_repaired_without_losing_its_branch(repo):
    s = settings_for(repo)
    made = worktrees.create(s, 2)
    work = commit_file(made[0].path, "precious")
    sh(made[0].path, "checkout", "-q", "-b", "autopilot/issue-9")
    issue_work = commit_file(made[0].path, "issue-nine")
    shutil.rmtree(made[0].path)
    assert [w.state for w in worktrees.list(s)] == ["missing", "ok"]
    repaired = worktrees.create(s, 2)
    assert [w.state for w in repaired] == ["ok", "ok"]
    assert repaired[0].path == made[0].path
    assert repaired[0].branch == "agent/001"  # back on its own branch ...
    assert sh(made[0].path, "rev-parse", "HEAD") == work  # ... with its commits
    assert (made[0].path / "precious").exists()
    assert sh(repo, "rev-parse", "autopilot/issue-9") == issue_work
    assert registered(repo) == {w.path for w in made}


def test_a_worktree_without_its_git_file_is_refused_then_repaired_when_empty(repo):
    s = settings_for(repo)
    made = worktrees.create(s, 1)
    (made[0].path / ".git").unlink()  # git would now treat the directory as the main checkout
    assert worktrees.list(s)[0].state == "broken"
    with pytest.raises(GitError, match="not a working git worktree"):
        worktrees.create(s, 1)
    shutil.rmtree(made[0].path)
    made[0].path.mkdir()
    assert worktrees.create(s, 1)[0].state == "ok"


def test_a_foreign_directory_is_refused_with_one_line_and_nothing_is_created(repo):
    s = settings_for(repo)
    foreign = repo / ".worktrees" / "agent-002"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine\n")
    with pytest.raises(GitError) as err:
        worktrees.create(s, 3)
    assert "\n" not in str(err.value) and str(foreign) in str(err.value)
    assert registered(repo) == set()
    assert not (repo / ".worktrees" / "agent-001").exists()
    assert (foreign / "notes.txt").read_text() == "mine\n"


def test_an_empty_leftover_directory_is_used(repo):
    (repo / ".worktrees" / "agent-001").mkdir(parents=True)
    assert worktrees.create(settings_for(repo), 1)[0].state == "ok"


def test_a_repository_without_commits_is_refused(tmp_path):
    empty = init_repo(tmp_path / "empty", commit=False)
    with pytest.raises(GitError, match="no commits yet"):
        worktrees.create(settings_for(empty), 2)
    with pytest.raises(GitError, match="no commits yet"):
        worktrees.list(settings_for(empty))
    assert not (empty / ".worktrees").exists()


def test_a_missing_base_branch_is_refused_naming_the_setting(repo):
    with pytest.raises(GitError, match=r"base branch 'develop' does not exist.*autopilot\.base_branch"):
        worktrees.create(settings_for(repo, base_branch="develop"), 2)
    assert registered(repo) == set()


def test_the_base_branch_setting_wins_over_the_current_branch(repo):
    sh(repo, "checkout", "-q", "-b", "develop")
    develop = commit_file(repo, "develop-only")
    sh(repo, "checkout", "-q", "main")
    made = worktrees.create(settings_for(repo, base_branch="develop"), 1)
    assert sh(made[0].path, "rev-parse", "HEAD") == develop
    assert made[0].base == "develop"
    # default: the repository's current branch
    sh(repo, "checkout", "-q", "develop")
    assert worktrees.list(settings_for(repo))[0].base == "develop"


def test_a_linked_worktree_is_not_taken_for_the_repository(repo):
    made = worktrees.create(settings_for(repo), 1)
    with pytest.raises(GitError, match="linked worktree"):
        worktrees.create(settings_for(made[0].path), 1)


def test_worktrees_dir_setting(repo, tmp_path):
    outside = tmp_path / "elsewhere"
    made = worktrees.create(settings_for(repo, worktrees_dir=str(outside)), 2)
    assert [w.path for w in made] == [outside / "agent-001", outside / "agent-002"]
    assert "elsewhere" not in (repo / ".git" / "info" / "exclude").read_text()


# -- remove --------------------------------------------------------------------

def make_three_with_trouble(repo: Path):
    """agent-001 clean, agent-002 dirty, agent-003 with an unmerged commit."""
    s = settings_for(repo)
    made = worktrees.create(s, 3)
    (made[1].path / "scratch.txt").write_text("unsaved\n")
    commit_file(made[2].path, "unmerged")
    return s, made


def test_remove_a_merged_one(repo):
    s = settings_for(repo)
    made = worktrees.create(s, 2)
    commit_file(made[0].path, "done")
    sh(repo, "merge", "-q", "--ff-only", "agent/001")
    report = worktrees.remove(s, ids=["1"])
    assert report.removed == ["agent-001"] and report.deleted_branches == ["agent/001"] and report.kept == {}
    assert not made[0].path.exists()
    assert registered(repo) == {made[1].path}
    assert sh(repo, "branch", "--list", "agent/*", "--format=%(refname:short)") == "agent/002"
    assert [w.id for w in worktrees.list(s)] == ["agent-002"]


def test_remove_refuses_dirty_and_unmerged_and_removes_nothing(repo):
    s, made = make_three_with_trouble(repo)
    heads = {b: sh(repo, "rev-parse", b) for b in ("agent/001", "agent/002", "agent/003")}
    with pytest.raises(WorktreeDirty) as err:
        worktrees.remove(s)
    message = str(err.value)
    assert "\n" not in message
    assert "agent-002 has uncommitted changes" in message
    assert "agent-003 has 1 commit(s) on agent/003 not merged into main" in message
    assert "agent-001" not in message
    with pytest.raises(UnmergedWork, match="agent-003"):
        worktrees.remove(s, ids=["agent-003"])
    with pytest.raises(WorktreeDirty, match="agent-002"):
        worktrees.remove(s, ids=["002", "001"])
    # nothing was removed: not even the clean agent-001
    assert all(w.path.exists() for w in made)
    assert registered(repo) == {w.path for w in made}
    assert {b: sh(repo, "rev-parse", b) for b in heads} == heads
    assert (made[1].path / "scratch.txt").read_text() == "unsaved\n"


def test_remove_keep_unsafe_removes_what_is_safe_and_reports_the_rest(repo):
    s, made = make_three_with_trouble(repo)
    report = worktrees.remove(s, keep_unsafe=True)
    assert report.removed == ["agent-001"]
    assert report.deleted_branches == ["agent/001"]
    assert report.kept == {"agent-002": "has uncommitted changes",
                           "agent-003": "has 1 commit(s) on agent/003 not merged into main"}
    assert "kept agent-003" in report.summary()
    assert registered(repo) == {made[1].path, made[2].path}
    assert sh(repo, "branch", "--list", "agent/*", "--format=%(refname:short)").split() == ["agent/002", "agent/003"]
    json.dumps(report.to_dict())


def test_remove_with_force_removes_everything(repo):
    s, made = make_three_with_trouble(repo)
    report = worktrees.remove(s, force=True)
    assert report.removed == ["agent-001", "agent-002", "agent-003"]
    assert report.deleted_branches == ["agent/001", "agent/002", "agent/003"]
    assert registered(repo) == set()
    assert not (repo / ".worktrees").exists()
    assert sh(repo, "branch", "--list", "agent/*") == ""
    assert worktrees.list(s) == []


def test_issue_branches_survive_remove(repo):
    s = settings_for(repo)
    made = worktrees.create(s, 2)
    sh(made[0].path, "checkout", "-q", "-b", "autopilot/issue-7")
    issue_work = commit_file(made[0].path, "fix")
    sh(made[1].path, "checkout", "-q", "-b", "autopilot/issue-8")
    commit_file(made[1].path, "fix8")
    # agent/001 holds nothing unmerged, and the issue branch is kept: safe without --force
    report = worktrees.remove(s, ids=[1])
    assert report.removed == ["agent-001"]
    assert sh(repo, "rev-parse", "autopilot/issue-7") == issue_work
    worktrees.remove(s, force=True)
    assert sh(repo, "branch", "--list", "autopilot/*", "--format=%(refname:short)").split() == [
        "autopilot/issue-7", "autopilot/issue-8"]


def test_remove_refuses_a_detached_head_that_no_branch_holds(repo):
    s = settings_for(repo)
    made = worktrees.create(s, 1)
    sh(made[0].path, "checkout", "-q", "--detach")
    lost = commit_file(made[0].path, "only-here")
    with pytest.raises(UnmergedWork, match="detached HEAD"):
        worktrees.remove(s)
    sh(repo, "branch", "rescued", lost)
    assert worktrees.remove(s).removed == ["agent-001"]


def test_remove_a_worktree_whose_directory_is_gone(repo):
    s = settings_for(repo)
    made = worktrees.create(s, 2)
    shutil.rmtree(made[1].path)
    report = worktrees.remove(s, ids=[2])
    assert report.removed == ["agent-002"] and report.deleted_branches == ["agent/002"]
    assert registered(repo) == {made[0].path}


def test_remove_a_foreign_directory_needs_force(repo):
    s = settings_for(repo)
    foreign = repo / ".worktrees" / "agent-004"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine\n")
    assert worktrees.list(s)[0].state == "unregistered"
    with pytest.raises(WorktreeDirty, match="not a working git worktree"):
        worktrees.remove(s)
    assert worktrees.remove(s, keep_unsafe=True).kept.keys() == {"agent-004"}
    assert foreign.exists()
    assert worktrees.remove(s, force=True).removed == ["agent-004"]
    assert not foreign.exists()


def test_remove_an_unknown_id(repo):
    s = settings_for(repo)
    worktrees.create(s, 1)
    with pytest.raises(AgentNotFound, match="agent-005"):
        worktrees.remove(s, ids=["5"])
    assert len(registered(repo)) == 1
