"""A hostile agent's clone (issue 19): what it writes in its own ``.git`` runs nothing on the host.

An agent owns its clone ``.worktrees/agent-NNN`` and everything in its ``.git``: config, hooks,
info/attributes. Each attack below plants programs there that would write a marker if any
host git ran them; a control runs plain git in a copy of the clone to prove the attack is
real. Then the host does what the fleet, the merge queue and cleanup do to a clone (look at
it, reuse it, fetch its branch, merge it, remove it): each still does its job and no marker
appears. Real git, real repositories.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.shell import sh

from parallel_autopilot import config
from parallel_autopilot.git import Git
from parallel_autopilot.git import clones as worktrees
from parallel_autopilot.issues import IssueStore
from parallel_autopilot.merge import queue as mergequeue
from parallel_autopilot.merge.checks import CheckResult

pytestmark = pytest.mark.usefixtures("hermetic_git")

#: the hooks a host git could run on a clone: checkout, merge, commit, ref and index updates, gc
HOOKS = ("post-checkout", "post-merge", "pre-commit", "pre-merge-commit", "reference-transaction",
         "post-index-change", "pre-auto-gc", "fsmonitor-watchman", "pre-push", "post-rewrite")


@dataclass
class Site:
    """The user's repository, its store, one agent's clone with a done issue on its branch."""

    repo: Path
    clone: Path
    settings: config.Settings
    store: IssueStore
    commit: str
    tmp: Path

    def program(self, name: str) -> Path:
        """An executable that leaves ``markers/<name>`` when it runs (and passes its input through)."""
        path = self.tmp / "programs" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"#!/bin/sh\ntouch {self.tmp / 'markers' / name}\nexec cat\n")
        path.chmod(0o755)
        return path

    def ran(self) -> list[str]:
        """The attacks whose programs ran."""
        return sorted(p.name for p in (self.tmp / "markers").iterdir())

    def control(self, command: str) -> list[str]:
        """What plain git run as ``command`` in a copy of the clone runs; the markers are cleared again."""
        copy = self.tmp / "copy-of-the-clone"
        shutil.copytree(self.clone, copy, symlinks=True)
        try:
            subprocess.run(["sh", "-c", command], cwd=copy, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=60, check=False)  # the attack's program decides; its marker is what counts
        finally:
            shutil.rmtree(copy)
        ran = self.ran()
        for name in ran:
            (self.tmp / "markers" / name).unlink()
        return ran


@pytest.fixture
def site(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (("init", "-q", "-b", "main"), ("config", "user.name", "User"),
                 ("config", "user.email", "user@example.invalid")):
        sh(repo, *args)
    (repo / "calc.txt").write_text("one\n")
    sh(repo, "add", "-A")
    sh(repo, "commit", "-q", "-m", "calc")
    settings = config.load({}, repo=str(repo), base_branch="main", check="true")
    worktrees.create(settings, 1)
    clone = settings.worktrees_path / "agent-001"
    # the agent's work: its branch, a change, and attributes that name drivers for every file
    agent = ("-c", "user.name=agent-001", "-c", "user.email=agent-001@autopilot.invalid",
             "-c", "core.hooksPath=/dev/null")
    sh(clone, *agent, "checkout", "-q", "-b", "autopilot/issue-1")
    (clone / "calc.txt").write_text("one\ntwo\n")
    (clone / ".gitattributes").write_text("* filter=evil diff=evil merge=evil\n")
    sh(clone, *agent, "add", "-A")
    sh(clone, *agent, "commit", "-q", "-m", "#1: two")
    commit = sh(clone, "rev-parse", "HEAD")
    store = IssueStore(settings.db_path)
    number = store.add("two").number
    claim = store.claim("agent-001")
    store.complete(claim, {"branch": "autopilot/issue-1", "commit": commit, "check_status": "passed"})
    assert number == 1
    (tmp_path / "markers").mkdir()
    yield Site(repo, clone, settings, store, commit, tmp_path)
    store.close()


def _config(clone: Path, *pairs: tuple[str, str]) -> None:
    for key, value in pairs:
        sh(clone, "config", key, str(value))


def fsmonitor(site: Site) -> None:
    _config(site.clone, ("core.fsmonitor", site.program("fsmonitor")))


def hooks_path(site: Site) -> None:
    hooks = site.tmp / "agent-hooks"
    hooks.mkdir()
    for hook in HOOKS:
        shutil.copy(site.program("hooks-path"), hooks / hook)
    _config(site.clone, ("core.hooksPath", hooks))


def hooks(site: Site) -> None:
    for hook in HOOKS:
        shutil.copy(site.program("hooks"), site.clone / ".git" / "hooks" / hook)


def drivers(site: Site) -> None:
    program = site.program("drivers")
    _config(site.clone, ("filter.evil.clean", program), ("filter.evil.smudge", program),
            ("filter.evil.process", program), ("diff.evil.textconv", program), ("diff.evil.command", program),
            ("diff.external", program), ("merge.evil.driver", f"{program} %O %A %B"))
    (site.clone / ".git" / "info").mkdir(exist_ok=True)
    (site.clone / ".git" / "info" / "attributes").write_text("* filter=evil diff=evil merge=evil\n")


def include(site: Site) -> None:
    included = site.tmp / "included.config"
    included.write_text(f"[core]\n\tfsmonitor = {site.program('include')}\n[filter \"evil\"]\n"
                        f"\tclean = {site.program('include')}\n")
    _config(site.clone, ("include.path", included))


def worktree_config(site: Site) -> None:
    _config(site.clone, ("core.repositoryformatversion", "1"), ("extensions.worktreeConfig", "true"))
    (site.clone / ".git" / "config.worktree").write_text(f"[core]\n\tfsmonitor = {site.program('worktree-config')}\n")


def upload_pack(site: Site) -> None:
    program = site.program("upload-pack")
    _config(site.clone, ("uploadpack.packObjectsHook", program), ("remote.origin.uploadpack", program),
            ("core.sshCommand", program), ("credential.helper", f"!{program}"), ("gpg.program", program),
            ("core.pager", program))


@dataclass(frozen=True)
class Attack:
    name: str
    plant: Callable[[Site], None]
    control: str | None  # plain git that runs it (None: git itself refuses it, even naively)
    state: str  # how worktrees.list shows the clone


ATTACKS = [
    Attack("fsmonitor", fsmonitor, "git status", "suspect"),
    Attack("hooks-path", hooks_path, "git checkout -q --detach HEAD", "suspect"),
    Attack("hooks", hooks, "git checkout -q --detach HEAD", "ok"),
    Attack("drivers", drivers, "git diff HEAD~1 HEAD", "suspect"),
    Attack("include", include, "git status", "suspect"),
    Attack("worktree-config", worktree_config, "git status", "suspect"),
    Attack("upload-pack", upload_pack, None, "suspect"),
]


def _passing(command: str, cwd: Path, timeout: float, log: Path) -> CheckResult:
    return CheckResult(True, 0.0, "", "passed")


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_a_hostile_clone_runs_nothing_on_the_host_and_every_host_operation_still_works(site, attack):
    attack.plant(site)
    if attack.control:
        assert site.control(attack.control) == [attack.name], "the attack is not real: plain git did not run it"
    git = Git(site.repo)

    # looking at it (worktrees.list, agents.start, cleanup): a file git must hash again, then a new one
    os.utime(site.clone / "calc.txt", (1_900_000_000, 1_900_000_000))
    assert worktrees.clone_state(git, site.clone) == ("autopilot/issue-1", site.commit, False)
    (site.clone / "new.txt").write_text("new\n")
    assert worktrees.clone_state(git, site.clone) == ("autopilot/issue-1", site.commit, True)
    (site.clone / "new.txt").unlink()
    (listed,) = worktrees.list(site.settings)
    assert (listed.id, listed.state) == ("agent-001", attack.state)
    if attack.state == "ok":
        assert (listed.branch, listed.head, listed.dirty) == ("autopilot/issue-1", site.commit, False)

    # agents.start again: the clone is reused as it is
    assert [w.id for w in worktrees.create(site.settings, 1)] == ["agent-001"]

    # agents.stop / cleanup bring the work home; the merge queue merges it (a passing check)
    assert mergequeue.bring_home(site.settings, site.store) == [1]
    assert sh(site.repo, "rev-parse", "autopilot/issue-1") == site.commit
    report = mergequeue.MergeQueue(site.settings, site.store, runner=_passing).run()
    assert report.merged == [1] and report.checkout.startswith("updated")
    assert (site.repo / "calc.txt").read_text() == "one\ntwo\n"

    # cleanup: a suspect clone is kept unless forced; then it goes
    if attack.state == "suspect":
        assert worktrees.remove(site.settings, keep_unsafe=True).kept.keys() == {"agent-001"}
    assert worktrees.remove(site.settings, force=attack.state == "suspect").removed == ["agent-001"]

    assert site.ran() == []


def test_an_agent_rewriting_its_config_while_the_host_looks_changes_nothing(site):
    # the tripwire (a config naming programs makes the clone "suspect") is not the boundary: the
    # config is written AFTER the host decided to look, as an agent racing it would
    fsmonitor(site)
    drivers(site)
    os.utime(site.clone / "calc.txt", (1_900_000_000, 1_900_000_000))
    assert worktrees.clone_state(Git(site.repo), site.clone) == ("autopilot/issue-1", site.commit, False)
    assert site.ran() == []


def test_an_index_that_is_a_symlink_is_not_followed(site, tmp_path):
    secret = tmp_path / "not-the-agents"
    secret.write_text("the user's file\n")
    index = site.clone / ".git" / "index"
    index.unlink()
    index.symlink_to(secret)
    branch, head, dirty = worktrees.clone_state(Git(site.repo), site.clone)
    assert (branch, head, dirty) == ("autopilot/issue-1", site.commit, True)  # no index: every file a change


def test_a_symlinked_git_directory_is_no_clone(site, tmp_path):
    # an agent pointing its .git at another repository (another agent's) gets neither looked at nor fetched from
    other = tmp_path / "other"
    shutil.copytree(site.clone / ".git", other)
    shutil.rmtree(site.clone / ".git")
    (site.clone / ".git").symlink_to(other)
    (listed,) = worktrees.list(site.settings)
    assert listed.state == "unregistered"
    assert mergequeue.bring_home(site.settings, site.store) == []
