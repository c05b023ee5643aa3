"""No agent-written code runs on the host by default (issue 19): the merge check runs in a container,
and the host's git runs nothing an agent's branch or a check could name.

The fast tests reach no Docker: the container runner takes a fake client through its seam, and a
check's writes are played by a runner passed to the queue (a container check can write the
worktree and nothing else). The one with a real container is marked ``docker``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.shell import sh

from parallel_autopilot import config
from parallel_autopilot.containers import daemon
from parallel_autopilot.errors import DockerUnavailable
from parallel_autopilot.git import Git
from parallel_autopilot.issues import IssueStore
from parallel_autopilot.merge import checks
from parallel_autopilot.merge import queue as mergequeue
from parallel_autopilot.merge.checks import CheckResult

pytestmark = pytest.mark.usefixtures("hermetic_git")

#: what a hook, a driver or an fsmonitor program would run as
HOOKS = ("post-checkout", "post-merge", "pre-merge-commit", "prepare-commit-msg", "commit-msg",
         "reference-transaction", "post-index-change", "pre-auto-gc", "post-rewrite", "pre-commit")


class Site:
    """A user's repository with issues done on branches (as the merge queue finds them) and markers."""

    def __init__(self, root: Path):
        self.root = root
        self.repo = root / "repo"
        self.repo.mkdir()
        for args in (("init", "-q", "-b", "main"), ("config", "user.name", "User"),
                     ("config", "user.email", "user@example.invalid")):
            sh(self.repo, *args)
        (self.repo / "calc.txt").write_text("one\n")
        sh(self.repo, "add", "-A")
        sh(self.repo, "commit", "-q", "-m", "calc")
        self.markers = root / "markers"
        self.markers.mkdir()
        self.store = IssueStore(self.repo / ".autopilot" / "autopilot.db", backoff_seconds=0)

    def settings(self, **extra) -> config.Settings:
        """Default settings but for the repository (the check runner is NOT set)."""
        return config.load({}, **{"repo": str(self.repo), "base_branch": "main", **extra})

    def program(self, name: str) -> str:
        """A shell script that leaves ``markers/<name>`` when it runs."""
        return f"#!/bin/sh\ntouch {self.markers / name}\nexec cat\n"

    def done(self, title: str, files: dict[str, str], executable: tuple[str, ...] = ()) -> int:
        """An issue claimed, committed on its branch from main and completed, as an agent does."""
        number = self.store.add(title).number
        claim = self.store.claim("agent-001")
        branch = f"autopilot/issue-{number}"
        work = self.root / f"work-{number}"
        sh(self.repo, "worktree", "add", "-q", "-B", branch, str(work), "main")
        for name, text in files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_text(text)
            if name in executable:
                (work / name).chmod(0o755)
        # no hooks: the agent's files may hold some, and this is the agent's side
        sh(work, "-c", "core.hooksPath=/dev/null", "add", "-A")
        sh(work, "-c", "core.hooksPath=/dev/null", "commit", "-q", "-m", f"#{number}: {title}")
        commit = sh(work, "rev-parse", "HEAD")
        sh(self.repo, "worktree", "remove", "--force", str(work))
        self.store.complete(claim, {"branch": branch, "commit": commit, "check_status": "passed"})
        return number

    def ran(self) -> list[str]:
        return sorted(p.name for p in self.markers.iterdir())


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    yield s
    s.store.close()


# -- where the check runs ------------------------------------------------------------------------

@dataclass
class FakeContainer:
    code: int
    output: bytes
    removed: bool = False

    def wait(self, timeout: float) -> dict:
        return {"StatusCode": self.code}

    def logs(self, stdout: bool, stderr: bool) -> bytes:
        return self.output

    def kill(self) -> None:
        pass

    def remove(self, force: bool) -> None:
        self.removed = True


@dataclass
class FakeDocker:
    """The Docker SDK client's ``containers.run``, recording what each check asked for."""

    code: int = 0
    output: bytes = b"ran in a container\n"
    runs: list = field(default_factory=list)

    @property
    def containers(self) -> FakeDocker:
        return self

    def run(self, image: str, command: list[str], **options) -> FakeContainer:
        container = FakeContainer(self.code, self.output)
        self.runs.append((image, command, options, container))
        return container


def test_the_default_is_the_container_and_host_is_an_explicit_opt_in(site):
    assert site.settings().merge_check_runner == "container"
    assert isinstance(checks.runner_for(site.settings()), checks.ContainerCheck)
    assert not isinstance(checks.runner_for(site.settings(merge_check_runner="host")), checks.ContainerCheck)


def test_the_check_container_gets_the_worktree_alone_read_write_and_no_network(site):
    number = site.done("two", {"calc.txt": "one\ntwo\n"})
    docker = FakeDocker(code=1, output=b"FAILED (failures=1)\n")
    settings = site.settings(check="make test", memory="256m", cpus=0.5, pids_limit=64)
    queue = mergequeue.MergeQueue(settings, site.store, runner=checks.ContainerCheck(settings, client=docker,
                                                                                      tag="agent-image"))
    report = queue.run()

    # the check's own result reaches the queue: red, rejected with its output
    assert list(report.rejected) == [number] and "FAILED (failures=1)" in site.store.get(number).error
    ((image, command, options, container),) = docker.runs
    git_dir, worktree = Git(site.repo).common_dir(), queue.worktree
    assert (image, command) == ("agent-image", ["sh", "-c", "make test"])
    assert options["volumes"] == {str(git_dir): {"bind": str(git_dir), "mode": "ro"},
                                  str(worktree): {"bind": str(worktree), "mode": "rw"},
                                  str(worktree / ".git"): {"bind": str(worktree / ".git"), "mode": "ro"}}
    assert options["working_dir"] == str(worktree) and options["network_mode"] == "none"
    assert (options["mem_limit"], options["nano_cpus"], options["pids_limit"]) == ("256m", 500_000_000, 64)
    assert options["cap_drop"] == ["ALL"] and options["security_opt"] == ["no-new-privileges:true"]
    uid, gid = (git_dir.stat().st_uid, git_dir.stat().st_gid)
    assert options["user"] == f"{uid}:{gid}" and container.removed


def test_a_queue_with_nothing_to_check_needs_no_docker_and_a_check_without_docker_names_host(site, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{site.root}/no-docker.sock")
    daemon.reset()
    try:
        first = site.done("two", {"calc.txt": "one\ntwo\n"})
        assert mergequeue.MergeQueue(site.settings(), site.store).run().merged == [first]
        second = site.done("three", {"more.txt": "three\n"})
        with pytest.raises(DockerUnavailable) as err:
            mergequeue.MergeQueue(site.settings(check="true"), site.store).run()
        assert "merge_check_runner: host" in str(err.value) and "\n" not in str(err.value)
        assert site.store.get(second).status == "done"  # untouched: it is tried again with Docker
    finally:
        daemon.reset()


# -- what the host's git runs --------------------------------------------------------------------

def test_hooks_committed_in_an_agent_branch_never_run_on_the_host_even_for_a_husky_user(site):
    # husky: the user's config runs hooks from `.husky/` of the checked-out tree, which the merge
    # queue fills with the agents' files (its worktree, then the user's checkout)
    sh(site.repo, "config", "core.hooksPath", ".husky")
    number = site.done("hooks", {".husky/" + hook: site.program(hook) for hook in HOOKS} | {"calc.txt": "one\ntwo\n"},
                       executable=tuple(".husky/" + hook for hook in HOOKS))

    report = mergequeue.MergeQueue(site.settings(check="true", merge_check_runner="host"), site.store).run()

    assert report.merged == [number] and report.checkout.startswith("updated")
    assert site.ran() == []
    # the attack is real: plain git in the user's checkout now runs the agent's hooks
    sh(site.repo, "update-ref", "refs/control", "HEAD")
    assert "reference-transaction" in site.ran()


def test_a_check_that_points_the_worktrees_git_file_elsewhere_makes_host_git_run_nothing(site):
    # what a check can write is the worktree (a container mounts its .git file read-only; this one
    # is played on the host): it replaces that file by one naming a git directory of its own,
    # whose hooks and config name its programs
    first = site.done("two", {"calc.txt": "one\ntwo\n"})
    second = site.done("three", {"more.txt": "three\n"})
    common = Git(site.repo).common_dir()

    def hostile_check(command: str, cwd: Path, timeout: float, log: Path) -> CheckResult:
        real = Git(site.repo).linked(cwd).explicit_git_dir  # the true one, whatever .git says now
        own = cwd / "own-git-dir"  # a repository of the check's: the user's objects, its config and hooks
        for directory in ("objects/info", "refs/heads", "hooks"):
            (own / directory).mkdir(parents=True)
        (own / "objects" / "info" / "alternates").write_text(f"{common / 'objects'}\n")
        (own / "HEAD").write_text((real / "HEAD").read_text())
        (own / "index").write_bytes((real / "index").read_bytes())
        for hook in HOOKS:
            (own / "hooks" / hook).write_text(site.program(hook))
            (own / "hooks" / hook).chmod(0o755)
        (own / "config").write_text(f"[core]\n\trepositoryformatversion = 0\n\tbare = false\n"
                                    f"\thooksPath = {own / 'hooks'}\n\tfsmonitor = {own / 'hooks' / 'pre-commit'}\n")
        (cwd / ".git").write_text(f"gitdir: {own}\n")
        return CheckResult(True, 0.0, "", "passed")

    queue = mergequeue.MergeQueue(site.settings(check="true"), site.store, runner=hostile_check)
    report = queue.run()

    assert report.merged == [first, second] and report.check_runs == 2
    assert site.ran() == []
    # the attack is real: git that follows the worktree's .git file runs the check's hooks
    sh(site.repo, "worktree", "add", "-q", "--detach", str(site.root / "control"), "main")
    hostile_check("true", site.root / "control", 0, site.root / "log")
    sh(site.root / "control", "checkout", "-q", "--detach", "HEAD~1")
    assert "post-checkout" in site.ran()


# -- a real container ----------------------------------------------------------------------------

IMAGE = "parallel-autopilot-test-check-isolation:latest"  # its own tag, removed after the test


@pytest.mark.docker
@pytest.mark.slow
def test_by_default_a_committed_check_script_cannot_write_to_the_host_and_its_result_still_counts(
        site, built_test_image):
    built_test_image(IMAGE)
    outside = site.root / "outside-the-worktree"
    outside.mkdir()
    home = Path.home() / f".autopilot-test-{uuid.uuid4().hex}"
    # the agent's check script tries the host: a file beside the repository and one in the user's home
    script = (f"#!/bin/sh\ntouch {outside / 'written-by-the-check'} {home}\n"
              "test -e /.dockerenv && echo 'inside a container'\n"
              "test ! -e broken.txt || { echo 'RED: broken.txt says it is broken'; exit 1; }\n")
    good = site.done("two", {"calc.txt": "one\ntwo\n", "check.sh": script}, executable=("check.sh",))
    bad = site.done("three", {"broken.txt": "broken\n", "check.sh": script}, executable=("check.sh",))
    settings = site.settings(check="./check.sh", image=IMAGE, profile="light", memory="256m", cpus=0.5,
                             check_timeout=120)
    try:
        report = mergequeue.MergeQueue(settings, site.store).run()
        assert not (outside / "written-by-the-check").exists() and not home.exists()
        assert report.merged == [good] and list(report.rejected) == [bad]
        assert "RED: broken.txt says it is broken" in site.store.get(bad).error
        logs = sorted(mergequeue.check_log_dir(settings).glob("check-*.log"))
        assert "inside a container" in logs[0].read_text()
    finally:
        home.unlink(missing_ok=True)
