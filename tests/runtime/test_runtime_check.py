"""The check step of the runtime (issue 10): real runtimes on the host, a real repository with a
real unittest suite. Exit 0 is not "resolved": the check decides, and an empty change is its own
outcome."""

from __future__ import annotations


import pytest

from test_runtime_agent import Site, git

CHECK = "python3 -m unittest -q"


def with_suite(site: Site) -> None:
    (site.repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (site.repo / "test_calc.py").write_text(
        "import unittest\nimport calc\n\n\nclass T(unittest.TestCase):\n"
        "    def test_add(self):\n        self.assertEqual(calc.add(2, 3), 5)\n")
    git(site.repo, "add", "-A")
    git(site.repo, "commit", "-q", "-m", "calc with tests")


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    with_suite(s)
    yield s
    s.close()


def test_good_change_is_done_with_the_check_result_recorded(site):
    site.store.add("mul", script="printf 'def mul(a, b):\\n    return a * b\\n' >> calc.py")
    proc = site.start("agent-001", AUTOPILOT_CHECK=CHECK)
    site.wait(lambda: site.store.get(1).status == "done", "issue done")
    assert site.stop(proc) == 0
    issue = site.store.get(1)
    assert issue.check_status == "passed" and issue.check_duration is not None and issue.commit
    assert "OK" in issue.check_output
    workspace = site.workspace("agent-001")
    assert git(workspace, "status", "--porcelain") == ""  # the check's caches are gone


def test_a_broken_test_with_exit_0_fails_with_the_check_tail_and_feeds_the_next_prompt(site):
    site.store.add("break it", max_attempts=2,
                   script='echo "$AUTOPILOT_PROMPT"; sed -i "s/a + b/a - b/" calc.py; exit 0')
    proc = site.start("agent-001", AUTOPILOT_CHECK=CHECK)
    site.wait(lambda: site.store.get(1).status == "dead", "issue dead after 2 attempts")
    assert site.stop(proc) == 0
    issue = site.store.get(1)
    assert issue.attempts == 2 and issue.check_status == "failed"
    assert "check failed (exit code 1)" in issue.error and "AssertionError" in issue.error
    assert "AssertionError" in issue.feedback
    first = (site.agent_dir("agent-001") / "issue-1-attempt-1.log").read_text()
    second = (site.agent_dir("agent-001") / "issue-1-attempt-2.log").read_text()
    assert "previous attempt failed this check" not in first
    assert "The previous attempt failed this check: `python3 -m unittest -q` exit code 1" in second
    assert "AssertionError" in second.split("previous attempt failed this check", 1)[1]
    assert [e.kind for e in site.store.events(1) if e.kind in ("done", "failed", "dead")] == ["failed", "dead"]


def test_an_issue_check_overrides_the_repository_check_and_a_timeout_fails(site):
    site.store.add("slow check", max_attempts=1, script="echo x > x.txt", check="sleep 30")
    proc = site.start("agent-001", AUTOPILOT_CHECK=CHECK, AUTOPILOT_CHECK_TIMEOUT="1")
    site.wait(lambda: site.store.get(1).status == "dead", "issue dead")
    assert site.stop(proc) == 0
    issue = site.store.get(1)
    assert issue.check_status == "timeout" and "timed out after 1s" in issue.error


def test_exit_0_without_a_change_is_empty_not_done(site):
    site.store.add("nothing", script="true")
    proc = site.start("agent-001", AUTOPILOT_CHECK=CHECK)
    site.wait(lambda: site.store.get(1).status == "empty", "issue empty")
    assert site.stop(proc) == 0
    issue = site.store.get(1)
    assert issue.commit is None and issue.check_status is None
    assert "empty" in [e.kind for e in site.store.events(1)]


def test_without_a_check_a_change_is_done_with_check_status_none(site):
    site.store.add("no check", script="echo y > y.txt")
    proc = site.start("agent-001")
    site.wait(lambda: site.store.get(1).status == "done", "issue done")
    assert site.stop(proc) == 0
    assert site.store.get(1).check_status == "none"


def test_an_agent_that_moves_a_ref_not_its_own_is_failed(site):
    clone = site.tmp / "worktrees" / "agent-001"
    git(site.repo, "clone", "-q", "--shared", str(site.repo), str(clone))  # the agent's own repository
    site.store.add("rogue", max_attempts=1,
                   script="echo r > r.txt; git add -A; git commit -qm rogue; git update-ref refs/heads/side HEAD")
    proc = site.start("agent-001")
    site.wait(lambda: site.store.get(1).status == "dead", "rogue issue dead")
    assert site.stop(proc) == 0
    assert "changed refs that are not its own: refs/heads/side (created)" in site.store.get(1).error
