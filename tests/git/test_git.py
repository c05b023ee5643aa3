"""parallel_autopilot.git on real temporary repositories."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from support.shell import sh

from parallel_autopilot.errors import GitError
from parallel_autopilot.git import Git, toplevel_of


pytestmark = pytest.mark.usefixtures("hermetic_git")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    sh(r, "init", "-q", "-b", "main")
    sh(r, "config", "user.name", "Test")
    sh(r, "config", "user.email", "test@example.com")
    (r / "README").write_text("hello\n")
    (r / ".gitignore").write_text("*.log\n")
    sh(r, "add", "-A")
    sh(r, "commit", "-q", "-m", "init")
    return r


def commit_file(cwd: Path, name: str, text: str = "x\n") -> str:
    (cwd / name).write_text(text)
    sh(cwd, "add", name)
    sh(cwd, "commit", "-q", "-m", f"add {name}")
    return sh(cwd, "rev-parse", "HEAD")


def test_run_returns_stdout_and_failure_is_one_line_naming_command_and_git_message(repo):
    g = Git(repo)
    assert g.run("rev-parse", "--abbrev-ref", "HEAD").strip() == "main"
    with pytest.raises(GitError) as err:
        g.run("rev-parse", "--verify", "no-such-branch")
    message = str(err.value)
    assert "\n" not in message
    assert "git rev-parse --verify no-such-branch" in message
    assert "fatal: Needed a single revision" in message


def test_outside_a_repository_is_a_git_error(tmp_path):
    with pytest.raises(GitError, match="not a git repository"):
        Git(tmp_path).toplevel()


def test_toplevel_of_finds_the_worktree_from_a_subdirectory_and_is_none_outside_one(repo, tmp_path):
    sub = repo / "a" / "b"
    sub.mkdir(parents=True)
    assert toplevel_of(sub) == repo
    outside = tmp_path / "plain"
    outside.mkdir()
    assert toplevel_of(outside) is None


def test_config_git_toplevel_refuses_a_plain_directory_in_one_line_naming_the_fix(repo, tmp_path):
    from parallel_autopilot.config import git_toplevel

    assert git_toplevel(repo) == repo
    with pytest.raises(GitError, match=r"is not inside a git repository: cd into one or set autopilot.repo$"):
        git_toplevel(tmp_path)


def test_timeout_kills_what_git_started(repo, tmp_path):
    pidfile = tmp_path / "pid"
    g = Git(repo, config={"alias.hang": f"!echo $$ > {pidfile}; exec sleep 60"})
    with pytest.raises(GitError, match="timed out after 0.5s"):
        g.run("hang", timeout=0.5)
    pid = int(pidfile.read_text())
    stat = Path(f"/proc/{pid}/stat")

    def running() -> bool:  # gone, or a zombie waiting for init: either way no longer running
        try:
            return stat.read_text().split()[2] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 10  # SIGKILL is sent at once; a loaded kernel may take a moment
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running()


def test_location_variables_of_a_calling_hook_are_ignored(repo, tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    sh(other, "init", "-q", "-b", "elsewhere")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    assert Git(repo).current_branch() == "main"


def test_current_branch_rev_parse_and_detached_head(repo):
    g = Git(repo)
    head = sh(repo, "rev-parse", "HEAD")
    assert g.current_branch() == "main"
    assert g.rev_parse() == head == g.rev_parse("main")
    sh(repo, "checkout", "-q", "--detach")
    assert g.current_branch() is None
    with pytest.raises(GitError):
        g.rev_parse("nope")


def test_has_commits_is_false_for_an_empty_repository(tmp_path, repo):
    empty = tmp_path / "empty"
    empty.mkdir()
    sh(empty, "init", "-q", "-b", "main")
    assert Git(empty).has_commits() is False
    assert Git(empty).current_branch() == "main"
    assert Git(repo).has_commits() is True


def test_is_dirty_counts_untracked_modified_and_staged_but_not_ignored(repo):
    g = Git(repo)
    assert not g.is_dirty()
    (repo / "debug.log").write_text("ignored\n")
    assert not g.is_dirty()
    (repo / "new.txt").write_text("untracked\n")
    assert g.is_dirty()
    (repo / "new.txt").unlink()
    (repo / "README").write_text("changed\n")
    assert g.is_dirty()
    sh(repo, "add", "README")
    assert g.status() == ["M  README"]


def test_commit_all_returns_the_sha_or_none_when_nothing_changed(repo):
    g = Git(repo)
    assert g.commit_all("nothing") is None
    (repo / "a.txt").write_text("a\n")
    (repo / "README").unlink()
    sha = g.commit_all("work")
    assert sha == sh(repo, "rev-parse", "HEAD")
    assert sh(repo, "show", "--name-status", "--format=", "HEAD").splitlines() == ["D\tREADME", "A\ta.txt"]
    assert not g.is_dirty()


def test_commit_all_with_an_identity_works_where_git_has_none(repo):
    sh(repo, "config", "--unset", "user.name")
    sh(repo, "config", "--unset", "user.email")
    sh(repo, "config", "user.useConfigOnly", "true")  # no guessing from the host name
    (repo / "a.txt").write_text("a\n")
    with pytest.raises(GitError):
        Git(repo).commit_all("no identity")
    sha = Git(repo).commit_all("as the agent", name="agent-001", email="agent-001@autopilot.invalid")
    assert sh(repo, "log", "-1", "--format=%an <%ae> / %cn <%ce>", sha) == (
        "agent-001 <agent-001@autopilot.invalid> / agent-001 <agent-001@autopilot.invalid>")


def test_stash_push_saves_untracked_files_and_cleans_the_tree(repo):
    g = Git(repo)
    assert g.stash_push("nothing to save") is None
    (repo / "README").write_text("changed\n")
    (repo / "new.txt").write_text("untracked\n")
    sha = g.stash_push("salvage agent-001 issue 7")
    assert sha == sh(repo, "rev-parse", "refs/stash")
    assert not g.is_dirty()
    assert "salvage agent-001 issue 7" in sh(repo, "stash", "list")
    assert "new.txt" in sh(repo, "show", "--name-only", "--format=", f"{sha}^3")


def test_branches_ahead_merged_and_delete(repo):
    g = Git(repo)
    assert not g.branch_exists("topic")
    sh(repo, "checkout", "-q", "-b", "topic")
    commit_file(repo, "t1")
    commit_file(repo, "t2")
    sh(repo, "checkout", "-q", "main")
    assert g.branch_exists("topic")
    assert g.commits_ahead("topic", "main") == 2
    assert g.commits_ahead("main", "topic") == 0
    assert not g.is_merged("topic", "main")
    with pytest.raises(GitError, match="not fully merged"):
        g.delete_branch("topic")
    assert g.branches() == ["main", "topic"]
    sh(repo, "merge", "-q", "--ff-only", "topic")
    assert g.is_merged("topic", "main")
    g.delete_branch("topic")
    assert not g.branch_exists("topic")


def test_checkout_new_branch_creates_or_resets(repo):
    g = Git(repo)
    base = sh(repo, "rev-parse", "HEAD")
    g.checkout_new_branch("autopilot/issue-7", "main")
    assert g.current_branch() == "autopilot/issue-7"
    commit_file(repo, "work")
    g.checkout_new_branch("autopilot/issue-7", "main")  # -B: starts over from main
    assert g.rev_parse() == base


def test_detach_frees_the_branch_for_another_worktree(repo, tmp_path):
    g = Git(repo)
    head = g.rev_parse()
    g.detach()
    assert g.current_branch() is None and g.rev_parse() == head
    g.worktree_add(tmp_path / "wt", "main")  # refused while main was checked out here
    assert Git(tmp_path / "wt").current_branch() == "main"


def test_on_a_branch_tells_a_detached_commit_apart(repo):
    g = Git(repo)
    assert g.on_a_branch("HEAD")
    sh(repo, "checkout", "-q", "--detach")
    lost = commit_file(repo, "detached")
    assert not g.on_a_branch(lost)


def test_worktree_add_list_remove_prune(repo, tmp_path):
    g = Git(repo)
    one, two, three = tmp_path / "wt" / "one", tmp_path / "wt" / "two", tmp_path / "wt" / "three"
    g.worktree_add(one, "agent/001", start="main")
    g.worktree_add(two, "agent/002", start="main")
    sh(repo, "branch", "existing")
    g.worktree_add(three, "existing")
    sh(two, "checkout", "-q", "--detach")
    sh(repo, "worktree", "lock", str(three))
    entries = g.worktree_list()
    assert entries[0].path == repo  # the main checkout first; git orders the rest
    by_path = {e.path: e for e in entries}
    assert set(by_path) == {repo, one, two, three}
    assert [by_path[p].branch for p in (repo, one, two, three)] == ["main", "agent/001", None, "existing"]
    assert by_path[two].detached and by_path[three].locked and not by_path[one].locked
    assert all(e.head == sh(repo, "rev-parse", "HEAD") for e in entries)

    (one / "dirty.txt").write_text("x\n")
    with pytest.raises(GitError):
        g.worktree_remove(one)
    assert one.exists()
    g.worktree_remove(one, force=True)
    assert not one.exists()

    shutil.rmtree(two)
    assert {e.path: e.prunable for e in g.worktree_list()} == {repo: False, two: True, three: False}
    g.worktree_prune()
    assert {e.path for e in g.worktree_list()} == {repo, three}
    g.worktree_unlock(three)
    g.worktree_remove(three)
    assert [e.path for e in g.worktree_list()] == [repo]


def test_common_dir_and_toplevel_from_a_linked_worktree(repo, tmp_path):
    wt = tmp_path / "wt"
    Git(repo).worktree_add(wt, "agent/001", start="main")
    g = Git(wt)
    assert g.toplevel() == wt
    assert g.common_dir() == (repo / ".git").resolve()
    assert g.git_dir() == (repo / ".git" / "worktrees" / "wt").resolve()
    assert Git(repo).git_dir() == Git(repo).common_dir()
    # a branch made inside the worktree is visible from the main checkout at once
    g.checkout_new_branch("autopilot/issue-3", "main")
    assert Git(repo).branch_exists("autopilot/issue-3")


def test_is_ignored(repo):
    g = Git(repo)
    assert g.is_ignored("x.log")
    assert not g.is_ignored(".worktrees")
