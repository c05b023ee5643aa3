"""The merge queue on the host (issue 10), fast: a real repository with a real unittest suite,
real git, real check processes; issues made done the way an agent makes them (claim, branch,
commit, complete). The check runs on the host (``merge_check_runner: host``, set explicitly: the
default is a container); the container runner has its own tests below and in test_check_isolation.py.
The end-to-end path with agents in containers is in test_verified_docker.py."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parallel_autopilot import config
from parallel_autopilot.merge import checks, queue as mergequeue
from parallel_autopilot.errors import Conflict
from parallel_autopilot.issues import IssueStore
from support.clock import T0, FakeClock

CHECK = "python3 -m unittest -q"
#: These tests are about the queue, not where its check runs: on the host, fast, without Docker.
ON_THE_HOST = {"INVOKE_AUTOPILOT_MERGE_CHECK_RUNNER": "host"}


def git(repo: Path, *args: str, env: dict | None = None) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}).stdout.strip()


class Repo:
    """A user's repository with modules and tests, its store, and issues done on branches."""

    def __init__(self, root: Path):
        self.path = root / "repo"
        self.path.mkdir()
        git(self.path, "init", "-q", "-b", "main")
        git(self.path, "config", "user.name", "User")
        git(self.path, "config", "user.email", "user@example.invalid")
        git(self.path, "config", "commit.gpgsign", "false")
        (self.path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
        (self.path / "shapes.py").write_text("SIDES = {'triangle': 3}\n")
        (self.path / "test_calc.py").write_text(
            "import unittest\nimport calc\nimport shapes\n\n\nclass T(unittest.TestCase):\n"
            "    def test_add(self):\n        self.assertEqual(calc.add(2, 3), 5)\n\n"
            "    def test_shapes(self):\n        self.assertEqual(shapes.SIDES['triangle'], 3)\n")
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "-m", "calc, shapes and tests")
        self.store = IssueStore(self.path / ".autopilot" / "autopilot.db", backoff_seconds=0)

    def settings(self, **extra) -> config.Settings:
        return config.load({}, **{"repo": str(self.path), "check": CHECK, "base_branch": "main",
                                   "merge_check_runner": "host", **extra})

    def done(self, title: str, files: dict[str, str], priority: str = "medium", **fields) -> int:
        """An issue claimed, worked on its branch from main, committed and completed."""
        number = self.store.add(title, priority=priority, **fields).number
        claim = self.store.claim("agent-001")
        assert claim.number == number
        branch = f"autopilot/issue-{number}"
        wt = self.path.parent / f"work-{number}"
        git(self.path, "worktree", "add", "-q", "-B", branch, str(wt), "main")
        for name, text in files.items():
            (wt / name).write_text(text)
        git(wt, "add", "-A")
        git(wt, "commit", "-q", "-m", f"#{number}: {title}")
        commit = git(wt, "rev-parse", "HEAD")
        git(self.path, "worktree", "remove", "--force", str(wt))
        self.store.complete(claim, {"branch": branch, "commit": commit, "check_status": "passed"})
        return number

    def first_parents(self) -> list[str]:
        return git(self.path, "rev-list", "--first-parent", "main").split()

    def green(self, sha: str) -> bool:
        """Run the check on ``sha`` in a throw-away worktree."""
        wt = self.path.parent / f"verify-{sha[:8]}"
        git(self.path, "worktree", "add", "-q", "--detach", str(wt), sha)
        try:
            return subprocess.run(["bash", "-c", CHECK], cwd=wt, capture_output=True).returncode == 0
        finally:
            git(self.path, "worktree", "remove", "--force", str(wt))


GOOD_MUL = {"mathx.py": "def mul(a, b):\n    return a * b\n",
            "test_mul.py": "import unittest\nimport mathx\n\n\nclass M(unittest.TestCase):\n"
                           "    def test_mul(self):\n        self.assertEqual(mathx.mul(2, 3), 6)\n"}
BROKEN = {"calc.py": "def add(a, b):\n    return a - b\n"}


@pytest.fixture
def repo(tmp_path):
    r = Repo(tmp_path)
    yield r
    r.store.close()


def tree_digest(path: Path) -> dict[str, str]:
    """Every file of the checkout (outside .git) and the index, byte for byte."""
    digest = {}
    for file in sorted(path.rglob("*")):
        parts = file.relative_to(path).parts
        if file.is_file() and ".git" not in parts and ".autopilot" not in parts:  # not the tool's own files
            digest[str(file.relative_to(path))] = hashlib.sha256(file.read_bytes()).hexdigest()
    digest[".git/index"] = hashlib.sha256((path / ".git" / "index").read_bytes()).hexdigest()
    digest["HEAD"] = (path / ".git" / "HEAD").read_text()
    return digest


def test_good_merged_red_and_conflicting_rejected_and_the_base_green_after_every_merge(repo):
    good = repo.done("mul", GOOD_MUL)
    bad = repo.done("break add", BROKEN)
    first = repo.done("square", {"shapes.py": "SIDES = {'triangle': 3, 'square': 4}\n"})
    second = repo.done("pentagon", {"shapes.py": "SIDES = {'triangle': 3, 'pentagon': 5}\n"})
    before = repo.first_parents()
    report = mergequeue.MergeQueue(repo.settings(), repo.store, requeue=True).run()

    assert report.merged == [good, first]
    assert set(report.rejected) == {bad, second}
    assert report.exit_code == mergequeue.EXIT_REJECTED and report.check_runs == 3
    assert repo.store.get(good).status == "merged" and repo.store.get(first).status == "merged"
    assert repo.store.get(good).merge_commit == report.merge_commits[good]
    # the bad one: the check's tail in error and feedback, re-queued as a new attempt
    broken = repo.store.get(bad)
    assert broken.status == "ready" and "AssertionError" in broken.error and "AssertionError" in broken.feedback
    # the conflicting one names the file; its branch is kept
    conflicted = repo.store.get(second)
    assert "shapes.py" in conflicted.error and conflicted.status == "ready"
    # issue 21: the files it conflicted in are recorded as paths it touches: its retry waits on them
    assert conflicted.paths == ["shapes.py"]
    assert git(repo.path, "rev-parse", f"autopilot/issue-{second}") == conflicted.commit
    assert git(repo.path, "rev-parse", f"refs/autopilot/rejected/issue-{second}") == conflicted.commit
    # every commit the base went through is green, and only merges of tested candidates were added
    after = repo.first_parents()
    assert after[len(after) - len(before):] == before and len(after) == len(before) + 2
    assert all(repo.green(sha) for sha in after[: len(after) - len(before)])
    assert [e.kind for e in repo.store.events(bad)][-1] == "rejected"


def test_without_requeue_a_rejected_issue_stays_rejected_and_a_rerun_has_nothing_to_do(repo):
    bad = repo.done("break add", BROKEN)
    report = mergequeue.MergeQueue(repo.settings(), repo.store).run()
    assert report.rejected and repo.store.get(bad).status == "rejected"
    again = mergequeue.MergeQueue(repo.settings(), repo.store).run()
    assert again.outcome == "nothing" and again.exit_code == mergequeue.EXIT_NOTHING


def test_the_queue_stamps_and_times_with_the_clocks_it_is_given(repo, clock):
    number = repo.done("mul", GOOD_MUL)
    timer, logs = FakeClock(start=500.0), []

    def runner(command, cwd, timeout, log):
        logs.append(log)
        timer.advance(2.5)
        return mergequeue.CheckResult(True, 2.5, "", "passed")

    queue = mergequeue.MergeQueue(repo.settings(), repo.store, runner=runner, clock=clock, monotonic=timer)
    report = queue.run()
    assert report.merged == [number] and report.seconds == 2.5
    assert logs == [queue.log_dir / f"check-{int(T0 * 1000)}-1.log"]
    # outside the user's .git, which every agent and check container mounts read-only
    assert queue.log_dir == repo.settings().state_path / "merge-logs" and not queue.log_dir.is_relative_to(queue.dir)
    assert json.loads((queue.dir / "state.json").read_text())["at"] == T0


def test_the_host_runner_times_the_check_with_the_timer_it_is_given(repo, tmp_path):
    ticks = iter([10.0, 12.25])
    run = checks.runner_for(repo.settings(), monotonic=lambda: next(ticks))
    result = run("true", repo.path, 30, tmp_path / "check.log")
    assert result.passed and result.duration == 2.25


@pytest.mark.parametrize("how", ["dirty", "other-branch"])
def test_a_dirty_checkout_or_one_on_another_branch_is_left_byte_for_byte(repo, how):
    number = repo.done("mul", GOOD_MUL)
    if how == "dirty":
        (repo.path / "calc.py").write_text("# my local edit\n")
        (repo.path / "notes.txt").write_text("untracked\n")
        git(repo.path, "add", "notes.txt")
    else:
        git(repo.path, "checkout", "-q", "-b", "feature")
        (repo.path / "feature.txt").write_text("wip\n")
    before = tree_digest(repo.path)
    tip = git(repo.path, "rev-parse", "main")
    report = mergequeue.MergeQueue(repo.settings(), repo.store).run()
    assert report.merged == [number] and report.checkout.startswith("untouched")
    assert tree_digest(repo.path) == before
    assert git(repo.path, "rev-parse", "main^1") == tip


def test_a_clean_checkout_on_the_base_is_updated(repo):
    repo.done("mul", GOOD_MUL)
    report = mergequeue.MergeQueue(repo.settings(), repo.store).run()
    assert report.checkout.startswith("updated"), git(repo.path, "status", "--porcelain")
    assert git(repo.path, "status", "--porcelain") == ""
    assert (repo.path / "test_mul.py").exists()
    exclude = (repo.path / ".git" / "info" / "exclude").read_text()
    assert "/.autopilot/" in exclude and "/docs/logs/" in exclude and "/.worktrees/" in exclude


def test_a_commit_landing_on_the_base_during_the_check_is_kept_and_the_issue_retested(repo, tmp_path):
    number = repo.done("mul", GOOD_MUL)
    marker = tmp_path / "pushed"
    # a real concurrent writer: the first check run commits on main in the user's repository
    push = (f"if [ ! -e {marker} ]; then touch {marker}; "
            f"tree=$(git -C {repo.path} rev-parse 'main^{{tree}}'); "
            f"c=$(git -C {repo.path} commit-tree -p main -m 'pushed meanwhile' $tree); "
            f"git -C {repo.path} update-ref refs/heads/main $c; fi")
    report = mergequeue.MergeQueue(repo.settings(check=f"{push}; {CHECK}"), repo.store).run()
    assert report.merged == [number] and report.retests == 1 and report.check_runs == 2
    subjects = git(repo.path, "log", "--first-parent", "--format=%s", "main").splitlines()
    assert subjects[0].startswith(f"Merge #{number}") and subjects[1] == "pushed meanwhile"


def test_a_sigkilled_merge_queue_leaves_a_green_base_and_resumes(repo, tmp_path):
    first = repo.done("mul", GOOD_MUL, priority="high")
    second = repo.done("square", {"shapes.py": "SIDES = {'triangle': 3, 'square': 4}\n"})
    started = tmp_path / "second-check-started"
    # the check of the second candidate (the one holding square) hangs: the queue is killed there
    check = (f"if grep -q square shapes.py && [ ! -e {started}.done ]; then touch {started}; sleep 60; fi; {CHECK}")
    code = ("import sys; from parallel_autopilot import config; from parallel_autopilot.merge import queue as mergequeue; "
            "from parallel_autopilot.issues import IssueStore; "
            "s = config.load({}, repo=sys.argv[1], check=sys.argv[2], merge_check_runner='host'); "
            "mergequeue.merge(s, IssueStore(s.db_path))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(repo.path), check], start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(Path(mergequeue.__file__).parents[2])})
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the second check never started"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    tip = git(repo.path, "rev-parse", "main")
    assert repo.green(tip)
    assert repo.store.get(first).status == "merged" and repo.store.get(second).status == "done"
    (tmp_path / "second-check-started.done").touch()
    report = mergequeue.MergeQueue(repo.settings(check=check), repo.store).run()  # the lock was freed
    assert report.merged == [second] and repo.store.get(second).status == "merged"
    assert all(repo.green(sha) for sha in repo.first_parents()[:2])


def test_an_issue_already_in_the_base_after_a_crash_is_marked_merged(repo):
    number = repo.done("mul", GOOD_MUL)
    commit = repo.store.get(number).commit
    git(repo.path, "merge", "-q", "--no-ff", "-m", f"Merge #{number}\n\nMerged-Issue: #{number}", commit)
    report = mergequeue.MergeQueue(repo.settings(), repo.store).run()
    assert report.already == [number] and report.check_runs == 0
    assert repo.store.get(number).merge_commit == git(repo.path, "rev-parse", "main")


def test_a_second_merge_queue_is_refused_while_one_runs(repo):
    repo.done("mul", GOOD_MUL)
    queue = mergequeue.MergeQueue(repo.settings(), repo.store)
    with queue._locked():
        with pytest.raises(Conflict, match="another merge queue is running"):
            mergequeue.MergeQueue(repo.settings(), repo.store).run()


def test_batches_of_4_find_the_bad_one_among_12_and_merge_the_other_11(repo):
    numbers = []
    for i in range(12):
        files = BROKEN if i == 6 else {f"mod_{i}.py": f"VALUE = {i}\n"}
        numbers.append(repo.done(f"module {i}", files))
    report = mergequeue.MergeQueue(repo.settings(), repo.store, batch=4).run()
    assert list(report.rejected) == [numbers[6]]
    assert sorted(report.merged) == sorted(n for n in numbers if n != numbers[6])
    # 3 batches; the red one bisects into 2 + 2, and its red half into 1 + 1
    assert report.check_runs == 7
    assert all(repo.green(sha) for sha in repo.first_parents()[:3])
    assert "AssertionError" in repo.store.get(numbers[6]).error


def test_dry_run_says_would_merge_runs_the_checks_and_moves_no_ref(repo):
    number = repo.done("mul", GOOD_MUL)
    refs = git(repo.path, "for-each-ref")
    out = subprocess.run([sys.executable, "-m", "parallel_autopilot", "issues.merge", "--dry-run"],
                         cwd=repo.path, capture_output=True, text=True,
                         env={**os.environ, **ON_THE_HOST, "INVOKE_AUTOPILOT_CHECK": CHECK})
    assert out.returncode == 0, out.stderr
    assert f"would merge into main: #{number}" in out.stdout and "check runs: 1" in out.stdout
    as_json = subprocess.run([sys.executable, "-m", "parallel_autopilot", "issues.merge", "--dry-run", "--json"],
                             cwd=repo.path, capture_output=True, text=True)
    data = json.loads(as_json.stdout)
    assert data["dry_run"] is True and data["merged"] == [number] and as_json.returncode == 0
    assert git(repo.path, "for-each-ref") == refs and repo.store.get(number).status == "done"


def test_exit_codes_nothing_to_do_and_rejected(repo):
    run = lambda: subprocess.run([sys.executable, "-m", "parallel_autopilot", "issues.merge"],  # noqa: E731
                                 cwd=repo.path, capture_output=True, text=True,
                                 env={**os.environ, **ON_THE_HOST, "INVOKE_AUTOPILOT_CHECK": CHECK})
    assert run().returncode == mergequeue.EXIT_NOTHING
    repo.done("break add", BROKEN)
    out = run()
    assert out.returncode == mergequeue.EXIT_REJECTED and "REJECTED #1" in out.stdout


@pytest.mark.docker
@pytest.mark.slow
def test_the_merge_check_can_run_in_a_container(repo, built_test_image):
    built_test_image("parallel-autopilot:wt10-verified")  # built by the queue, removed afterwards
    good = repo.done("mul", GOOD_MUL)
    bad = repo.done("break add", BROKEN)
    # /.dockerenv exists only inside a container: the check proves where it ran
    settings = repo.settings(merge_check_runner="container", image="parallel-autopilot:wt10-verified",
                             profile="light", memory="256m", cpus=0.5,
                             check=f"test -e /.dockerenv && {CHECK}")
    report = mergequeue.MergeQueue(settings, repo.store).run()
    assert report.merged == [good] and list(report.rejected) == [bad]
    assert "AssertionError" in repo.store.get(bad).error
    assert (repo.path / "test_mul.py").exists()


def test_issues_add_check_and_list_tell_done_merged_and_rejected_apart(repo):
    run = lambda *a: subprocess.run([sys.executable, "-m", "parallel_autopilot", *a], cwd=repo.path,  # noqa: E731
                                    capture_output=True, text=True, env={**os.environ, "INVOKE_AUTOPILOT_CHECK": CHECK})
    good = repo.done("mul", GOOD_MUL)
    bad = repo.done("break add", BROKEN)
    waiting = repo.done("square", {"shapes.py": "SIDES = {'triangle': 3, 'square': 4}\n"})
    added = run("issues.add", "--title", "own check", "--check", "python3 -m unittest -q test_calc", "--json")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["check"] == "python3 -m unittest -q test_calc"
    mergequeue.MergeQueue(repo.settings(), repo.store).run([good, bad])
    table = run("issues.list").stdout
    rows = {line.split()[0]: line for line in table.splitlines() if line.startswith("#")}
    assert " merged " in rows[f"#{good}"] and " rejected " in rows[f"#{bad}"] and " done " in rows[f"#{waiting}"]
    assert repo.store.get(good).merge_commit[:10] in rows[f"#{good}"] and "passed" in rows[f"#{waiting}"]
    assert "1 done" in table and "1 merged" in table and "1 rejected" in table


def test_a_concurrent_commit_during_a_batch_with_a_conflict_retests_only_the_live_candidates(repo, tmp_path):
    conflicting = repo.done("square", {"shapes.py": "SIDES = {'triangle': 3, 'square': 4}\n"})
    good = repo.done("mul", GOOD_MUL)
    git(repo.path, "checkout", "-q", "-b", "side")
    (repo.path / "shapes.py").write_text("SIDES = {'triangle': 3, 'hexagon': 6}\n")
    git(repo.path, "commit", "-qam", "hexagon on main")
    git(repo.path, "checkout", "-q", "main")
    git(repo.path, "merge", "-q", "--ff-only", "side")
    marker = tmp_path / "pushed"
    push = (f"if [ ! -e {marker} ]; then touch {marker}; "
            f"c=$(git -C {repo.path} commit-tree -p main -m 'pushed meanwhile' $(git -C {repo.path} rev-parse 'main^{{tree}}')); "
            f"git -C {repo.path} update-ref refs/heads/main $c; fi")
    report = mergequeue.MergeQueue(repo.settings(check=f"{push}; {CHECK}"), repo.store, batch=2).run()
    assert report.merged == [good] and list(report.rejected) == [conflicting] and report.retests == 1
    assert "shapes.py" in repo.store.get(conflicting).error


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_on_a_shared_queue_only_this_hosts_done_issues_are_merged(repo, request, backend):
    """The branch of another host's issue lives in that host's clones: its merge queue merges it."""
    from parallel_autopilot.issues import open_store

    target = request.getfixturevalue("pg_url") if backend == "postgresql" else str(repo.path / ".autopilot")
    repo.store.close()
    here = repo.store = open_store(target, host="ws1", backoff_seconds=0)
    mine = repo.done("mul", GOOD_MUL)
    with open_store(target, host="ws2") as there:
        repo.store = there
        theirs = repo.done("square", {"shapes.py": "SIDES = {'triangle': 3, 'square': 4}\n"})
    repo.store = here

    report = mergequeue.MergeQueue(repo.settings(), here).run()

    if backend == "postgresql":  # shared: ws2's issue waits for ws2's merge queue
        assert report.merged == [mine]
        assert (here.get(theirs).status, here.get(theirs).host) == ("done", "ws2")
        # and the GUI's view of ws1's merge queue does not show it as waiting there
        view = mergequeue.status(repo.settings(), here)
        assert [i["number"] for i in view["queued"] + view["merged"]] == [mine]
    else:  # one host's queue: everything in it is this host's
        assert report.merged == [mine, theirs]
