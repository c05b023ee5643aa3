"""Scenario tests of the runtime: real runtimes (``python3 -m parallel_autopilot.runtime``) on the host,
as subprocesses.

A temporary repository with ``main``, one ``git worktree`` per agent, a state
directory, a logs directory and a heartbeat file per agent - what the compose
file gives each container. Runtimes start under ``python3 -I -S`` (no
site-packages), so every scenario also proves the runtime needs only the
standard library.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

import parallel_autopilot
from parallel_autopilot.issues import IssueStore

ROOT = Path(parallel_autopilot.__file__).resolve().parent.parent
FAKES = Path(__file__).resolve().parents[1] / "support" / "fakes"
# -I -S: no site-packages, no PYTHONPATH: only the standard library and this checkout
BOOT = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
        "runpy.run_module('parallel_autopilot.runtime', run_name='__main__', alter_sys=True)")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


class Site:
    """Repository, worktrees, database and logs for runtimes under test."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.repo = tmp / "repo"
        self.repo.mkdir()
        git(self.repo, "init", "-q", "-b", "main")
        git(self.repo, "config", "user.name", "Test")
        git(self.repo, "config", "user.email", "test@example.invalid")
        (self.repo / "README.md").write_text("test repository\n")
        git(self.repo, "add", "README.md")
        git(self.repo, "commit", "-q", "-m", "initial commit")
        self.base = git(self.repo, "rev-parse", "main").strip()
        self.db = tmp / "state" / "autopilot.db"
        self.logs = tmp / "logs"
        self.home = tmp / "home"
        self.home.mkdir()
        self.store = IssueStore(self.db)
        self.procs: list[subprocess.Popen] = []

    def workspace(self, agent: str) -> Path:
        path = self.tmp / "worktrees" / agent
        if not path.exists():
            git(self.repo, "worktree", "add", "-q", "-b", f"agent/{agent[-3:]}", str(path), "main")
        return path

    def heartbeat(self, agent: str) -> Path:
        return self.tmp / "run" / agent / "heartbeat"

    def agent_dir(self, agent: str) -> Path:
        return self.logs / "agents" / agent

    def env(self, agent: str, **overrides: str) -> dict[str, str]:
        env = {
            "PATH": f"{FAKES}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "AUTOPILOT_AGENT_ID": agent,
            "AUTOPILOT_DB": str(self.db),
            "AUTOPILOT_WORKSPACE": str(self.workspace(agent)),
            "AUTOPILOT_LOGS": str(self.logs),
            "AUTOPILOT_BASE_BRANCH": "main",
            "AUTOPILOT_AGENT_KIND": "script",
            "AUTOPILOT_POLL_SECONDS": "0.1",
            "AUTOPILOT_BACKOFF_SECONDS": "0",
            "AUTOPILOT_LEASE_SECONDS": "30",
            "AUTOPILOT_GRACE_SECONDS": "2",
            "AUTOPILOT_WATCHDOG_SECONDS": "60",
            "AUTOPILOT_HEARTBEAT_FILE": str(self.heartbeat(agent)),
            "AUTOPILOT_CREDENTIALS": str(self.tmp / "credentials"),
        }
        env.update(overrides)
        return env

    def start(self, agent: str, **overrides: str) -> subprocess.Popen:
        """Start a runtime for ``agent`` (its stdout/stderr go to ``<tmp>/<agent>.out``)."""
        out = open(self.tmp / f"{agent}.out", "ab")
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", BOOT, str(ROOT)],
                                env=self.env(agent, **overrides), cwd=self.tmp, stdout=out,
                                stderr=subprocess.STDOUT)
        out.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 30) -> int:
        """SIGTERM a runtime and return its exit code."""
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=timeout)

    def events(self, agent: str, kind: str | None = None) -> list[dict]:
        path = self.agent_dir(agent) / "events.jsonl"
        if not path.exists():
            return []
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in records if kind is None or r["event"] == kind]

    def wait(self, predicate: Callable[[], object], what: str, timeout: float = 60) -> object:
        """Poll ``predicate`` until it is truthy; fail with every agent's log if it never is."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}\n{self.dump()}")

    def dump(self) -> str:
        parts = []
        for out in sorted(self.tmp.glob("agent-*.out")):
            parts.append(f"--- {out.name}\n{out.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.store.close()


def pid_alive(pid: int) -> bool:
    """True when ``pid`` runs (a zombie does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_quietly(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


# -- fixtures ---------------------------------------------------------------


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    yield s
    s.close()


def commit_info(repo: Path, rev: str) -> dict[str, str]:
    fmt = "%an%x00%ae%x00%cn%x00%ce%x00%s%x00%(trailers:only,unfold)"
    an, ae, cn, ce, subject, trailers = git(repo, "log", "-1", f"--format={fmt}", rev).split("\x00")
    parsed = dict(line.split(": ", 1) for line in trailers.strip().splitlines())
    return {"author": an, "email": ae, "committer": cn, "committer_email": ce, "subject": subject,
            **{f"trailer:{k}": v for k, v in parsed.items()}}


def claimed_events(store: IssueStore) -> dict[int, list[str]]:
    claims: dict[int, list[str]] = {}
    for event in store.events():
        if event.kind == "claimed":
            claims.setdefault(event.issue, []).append(event.worker)
    return claims


# -- the whole path: claim, branch, run, commit, complete ---------------------

def test_three_agents_do_each_issue_once_with_one_commit_per_branch(site):
    ledger = site.tmp / "ledger.txt"
    issues = site.store.add_many(
        {"title": f"Write file {i}", "priority": ("high", "medium", "low")[i % 3],
         "script": f'echo "$AUTOPILOT_AGENT_ID $ISSUE_NUMBER" >> {ledger}; '
                   f'printf "%s\\n" "$ISSUE_TITLE" > "issue-$ISSUE_NUMBER.txt"'}
        for i in range(12))
    agents = ["agent-001", "agent-002", "agent-003"]
    procs = [site.start(a) for a in agents]
    site.wait(lambda: site.store.counts()["done"] == 12, "12 issues done")
    assert [site.stop(p) for p in procs] == [0, 0, 0]

    runs = ledger.read_text().split()
    ran = sorted(int(n) for n in runs[1::2])
    assert ran == sorted(i.number for i in issues)  # each issue ran exactly once
    claims = claimed_events(site.store)
    assert all(len(claims[i.number]) == 1 for i in issues)
    assert git(site.repo, "rev-parse", "main").strip() == site.base  # nothing on the base
    for issue in site.store.list():
        branch = f"autopilot/issue-{issue.number}"
        assert issue.status == "done" and issue.branch == branch
        assert issue.commit == git(site.repo, "rev-parse", branch).strip()
        assert git(site.repo, "rev-list", "--count", f"main..{branch}").strip() == "1"
        assert git(site.repo, "diff", "--name-only", "main", branch).split() == [f"issue-{issue.number}.txt"]
        info = commit_info(site.repo, branch)
        assert info["author"] == info["committer"] == issue.owner == claims[issue.number][0]
        assert info["email"] == f"{issue.owner}@parallel-autopilot.invalid"
        assert info["trailer:Issue"] == f"#{issue.number}"
        assert info["trailer:Agent"] == issue.owner
        assert info["trailer:Lease-Token"] == str(issue.token)
        assert issue.duration is not None and issue.duration >= 0
        # the attempt's output is in the logs of the agent that did it, and only there
        owners = [a for a in agents if (site.agent_dir(a) / f"issue-{issue.number}-attempt-1.log").exists()]
        assert owners == [issue.owner]
    for agent in agents:
        ws = site.workspace(agent)
        assert git(ws, "status", "--porcelain") == ""
        assert subprocess.run(["git", "-C", str(ws), "symbolic-ref", "-q", "HEAD"]).returncode == 1  # detached
        kinds_seen = [e["event"] for e in site.events(agent)]
        assert kinds_seen[0] == "boot" and kinds_seen[-1] == "stopped"
        assert (site.agent_dir(agent) / "agent.log").read_text().count(" completed #") == \
            len(site.events(agent, "completed"))
    assert {row.id: row.state for row in site.store.agents()} == dict.fromkeys(agents, "stopped")
    assert git(site.repo, "stash", "list") == ""  # nothing needed salvaging


def test_no_double_claim_when_agents_and_a_host_process_hammer_one_database(site):
    n = 60
    agents = ["agent-001", "agent-002", "agent-003"]
    procs = [site.start(a, AUTOPILOT_POLL_SECONDS="0.02") for a in agents]
    site.wait(lambda: len(site.store.agents()) == 3, "three agents booted")
    site.store.add_many({"title": f"no-op {i}", "script": "true"} for i in range(n))
    host = IssueStore(site.db)  # a host tool claiming at the same time, on its own connection
    host_done = 0
    deadline = time.monotonic() + 120
    finished = lambda: site.store.counts()["done"] + site.store.counts()["empty"]  # noqa: E731
    while finished() < n and time.monotonic() < deadline:
        claim = host.claim("host-tool", 30)
        if claim:
            time.sleep(0.02)  # its "work"
            host.complete(claim, {"duration": 0})
            host_done += 1
    site.wait(lambda: finished() == n, f"{n} issues finished")
    assert [site.stop(p) for p in procs] == [0, 0, 0]
    claims = claimed_events(site.store)
    assert sorted(claims) == list(range(1, n + 1))
    assert all(len(workers) == 1 for workers in claims.values()), claims
    by_agents = [i for i in site.store.list() if i.owner in agents]
    assert len(by_agents) + host_done == n
    # a successful run that changed nothing is empty (not done), with commit None
    assert by_agents and all(i.status == "empty" and i.commit is None and i.branch == f"autopilot/issue-{i.number}" for i in by_agents)
    host.close()


# -- stopping, crashing, losing the lease, hanging ----------------------------

def test_sigterm_mid_issue_releases_the_claim_and_exits_0(site):
    pidfile = site.tmp / "script.pid"
    site.store.add("Long one", script=f'echo partial > partial.txt; echo $$ > {pidfile}; exec sleep 60')
    proc = site.start("agent-001", AUTOPILOT_GRACE_SECONDS="2")
    site.wait(lambda: pidfile.exists() and pidfile.read_text().strip(), "the script to start")
    script_pid = int(pidfile.read_text())
    try:
        assert site.stop(proc, timeout=20) == 0
        assert not pid_alive(script_pid)
    finally:
        kill_quietly(script_pid)
    issue = site.store.get(1)
    assert (issue.status, issue.owner, issue.attempts) == ("ready", None, 0)  # released, attempt refunded
    assert [e.kind for e in site.store.events(1)][-1] == "released"
    assert site.store.agents()[0].state == "stopped"
    names = [e["event"] for e in site.events("agent-001")]
    assert names.index("released") < names.index("stopped")
    # the attempt's half-done work is stashed, not lost
    assert "autopilot stopped: agent-001 #1 attempt 1" in git(site.repo, "stash", "list")
    assert git(site.repo, "show", "--name-only", "--format=", "stash@{0}^3").split() == ["partial.txt"]

    # another agent finishes it (with a quicker script)
    with site.store.transaction() as conn:
        conn.execute("UPDATE issues SET script = 'echo done > result.txt' WHERE number = 1")
    other = site.start("agent-002")
    site.wait(lambda: site.store.get(1).status == "done", "agent-002 to finish #1")
    assert site.stop(other) == 0
    assert site.store.get(1).owner == "agent-002"


def test_sigkill_mid_issue_then_restart_releases_at_boot_and_finishes(site):
    ledger = site.tmp / "ledger.txt"
    pids = site.tmp / "pids.txt"
    site.store.add("Crashy", script=(
        f'echo "start $AUTOPILOT_AGENT_ID" >> {ledger}; echo $$ >> {pids}; '
        f'if [ ! -e {site.tmp}/second ]; then touch {site.tmp}/second; echo partial > partial.txt; sleep 3; fi; '
        f'echo final > result.txt; echo finish >> {ledger}'))
    first = site.start("agent-001")
    site.wait(lambda: (site.tmp / "second").exists() and pids.exists(), "the first attempt to start")
    site.wait(lambda: (site.workspace("agent-001") / "partial.txt").exists(), "partial work")
    first.kill()
    first.wait()
    first_script = int(pids.read_text().split()[0])
    try:
        assert site.store.get(1).status == "claimed"  # nobody released it: the runtime was killed
        second = site.start("agent-001")
        site.wait(lambda: site.store.get(1).status == "done", "the restarted agent to finish #1")
        assert site.stop(second) == 0
        assert not pid_alive(first_script)  # the orphaned first attempt was killed at boot
    finally:
        kill_quietly(first_script)
    issue = site.store.get(1)
    assert issue.attempts == 2 and issue.owner == "agent-001"
    kinds_of = [e.kind for e in site.store.events(1)]
    assert kinds_of.count("released-agent") == 1 and kinds_of.count("done") == 1
    released = [e for e in site.store.events(1) if e.kind == "released-agent"][0]
    assert released.detail == "previous incarnation"
    assert ledger.read_text().count("finish") == 1  # the killed attempt never finished
    assert git(site.repo, "diff", "--name-only", "main", issue.branch).split() == ["result.txt"]
    assert "autopilot salvage: agent-001" in git(site.repo, "stash", "list")  # partial work kept
    boots = site.events("agent-001", "boot")
    assert len(boots) == 2 and boots[0]["incarnation"] != boots[1]["incarnation"]
    assert site.events("agent-001", "released")[0]["issues"] == [1]


def test_lost_lease_kills_the_agent_at_once_and_completes_nothing(site):
    pidfile = site.tmp / "script.pid"
    site.store.add("Slow", script=f'echo half > half.txt; echo $$ > {pidfile}; exec sleep 60')
    proc = site.start("agent-001", AUTOPILOT_LEASE_SECONDS="3", AUTOPILOT_GRACE_SECONDS="5")
    site.wait(lambda: pidfile.exists() and pidfile.read_text().strip(), "the script to start")
    script_pid = int(pidfile.read_text())
    try:
        # another claimant whose clock is past the lease takes the issue over (token + 1)
        intruder = site.store.claim("intruder", 600, now=time.time() + 60)
        assert intruder and intruder.number == 1
        site.wait(lambda: site.events("agent-001", "lease-lost"), "the runtime to notice")
        site.wait(lambda: not pid_alive(script_pid), "the agent subprocess to die")
    finally:
        kill_quietly(script_pid)
    site.wait(lambda: site.store.agents()[0].state == "idle", "the loop to go on")
    issue = site.store.get(1)
    assert (issue.status, issue.owner, issue.token) == ("claimed", "intruder", intruder.token)
    assert not any(e.kind in ("done", "failed", "released") for e in site.store.events(1))
    assert not site.events("agent-001", "completed") and not site.events("agent-001", "failed")
    assert git(site.repo, "rev-list", "--count", "main..autopilot/issue-1").strip() == "0"
    assert "autopilot lease-lost: agent-001 #1" in git(site.repo, "stash", "list")
    # the intruder's claim is intact, and the runtime keeps working
    site.store.complete(intruder, {"duration": 1})
    site.store.add("Next", script="echo next > next.txt")
    site.wait(lambda: site.store.get(2).status == "done", "the next issue")
    assert site.stop(proc) == 0


def test_a_hanging_git_hook_trips_the_watchdog_and_a_restart_recovers(site):
    hook = site.repo / ".git" / "hooks" / "pre-commit"
    hook_pid = site.tmp / "hook.pid"
    hook.write_text(f"#!/bin/sh\necho $$ > {hook_pid}\nexec sleep 60\n")
    hook.chmod(0o755)
    site.store.add("Commit me", script="echo change > change.txt")
    proc = site.start("agent-001", AUTOPILOT_WATCHDOG_SECONDS="3")
    site.wait(lambda: hook_pid.exists() and hook_pid.read_text().strip(), "the hook to hang")
    pid = int(hook_pid.read_text())
    try:
        assert proc.wait(timeout=30) == 70
        site.wait(lambda: not pid_alive(pid), "the hung hook to be killed")
    finally:
        kill_quietly(pid)
    watchdog = site.events("agent-001", "watchdog")
    assert watchdog and watchdog[0]["exit"] == 70
    assert site.store.get(1).status == "claimed"
    hook.unlink()  # the operator fixes the hook; the restart policy starts a new incarnation
    again = site.start("agent-001", AUTOPILOT_WATCHDOG_SECONDS="3")
    site.wait(lambda: site.store.get(1).status == "done", "the restarted agent to finish")
    assert site.stop(again) == 0
    issue = site.store.get(1)
    assert issue.attempts == 2
    assert git(site.repo, "diff", "--name-only", "main", issue.branch).split() == ["change.txt"]


def test_an_agent_takes_over_the_claim_of_an_agent_whose_heartbeat_went_silent(site):
    site.store.add("Orphaned", script="echo rescued > rescued.txt")
    site.store.agent_heartbeat("agent-009", "working", now=time.time() - 600)
    assert site.store.claim("agent-009", 900).number == 1  # its container died without a word
    proc = site.start("agent-001", AUTOPILOT_STALE_SECONDS="30")
    site.wait(lambda: site.store.get(1).status == "done", "the orphaned issue to be finished")
    assert site.stop(proc) == 0
    assert [(e.kind, e.worker) for e in site.store.events(1)][2:4] == [("abandoned", "agent-009"),
                                                                         ("claimed", "agent-001")]
    assert site.store.get(1).owner == "agent-001"


# -- failures -----------------------------------------------------------------

def test_a_failing_script_fails_with_its_error_is_retried_and_keeps_its_changes(site):
    site.store.add("Breaks", script='echo "attempt $ISSUE_NUMBER" > work.txt; echo "boom: no parser"; exit 3',
                   max_attempts=2)
    site.store.add("No script")
    proc = site.start("agent-001")
    site.wait(lambda: [i.status for i in site.store.list()] == ["dead", "dead"], "both issues dead")
    assert site.stop(proc) == 0
    broken, empty = site.store.get(1), site.store.get(2)
    assert broken.attempts == 2
    assert broken.error == "exit code 3; last output: boom: no parser"
    assert [e.kind for e in site.store.events(1) if e.kind in ("claimed", "failed", "dead")] == \
        ["claimed", "failed", "claimed", "dead"]
    for k in (1, 2):
        log = (site.agent_dir("agent-001") / f"issue-1-attempt-{k}.log").read_text()
        assert "boom: no parser" in log
    stashes = git(site.repo, "stash", "list")
    assert stashes.count("autopilot failed: agent-001 #1") == 2  # never silently deleted
    assert git(site.repo, "rev-list", "--count", "main..autopilot/issue-1").strip() == "0"
    assert "has no script" in empty.error
    failed = site.events("agent-001", "failed")
    assert failed[0]["error"] == "exit code 3; last output: boom: no parser"


def test_an_issue_past_its_timeout_is_killed_and_failed(site):
    pidfile = site.tmp / "script.pid"
    site.store.add("Forever", script=f'echo $$ > {pidfile}; echo waiting; exec sleep 60', max_attempts=1)
    proc = site.start("agent-001", AUTOPILOT_ISSUE_TIMEOUT="1", AUTOPILOT_GRACE_SECONDS="1")
    site.wait(lambda: site.store.get(1).status == "dead", "the timeout")
    try:
        assert not pid_alive(int(pidfile.read_text()))
    finally:
        kill_quietly(int(pidfile.read_text()))
    assert site.stop(proc) == 0
    assert site.store.get(1).error == "timed out after 1s (agent killed); last output: waiting"


# -- agent kinds with stand-in executables ------------------------------------

@pytest.mark.parametrize("kind", ["codex", "claude", "command"])
def test_agent_kinds_run_their_program_with_the_issue(site, kind):
    record = site.tmp / "calls.jsonl"
    credentials = site.tmp / "credentials"
    (credentials / "codex").mkdir(parents=True)
    (credentials / "codex" / "auth.json").write_text("{}")
    (credentials / "gitconfig").write_text("[core]\n")
    (credentials / "ssh").mkdir()  # an empty placeholder: skipped
    title = "Fix the 'parser'; now"
    site.store.add(title, body="It breaks on $HOME and `quotes`.", priority="urgent")
    template = "fake-agent --issue {number} --title {title} --priority {priority} --in {workspace}"
    proc = site.start("agent-001", AUTOPILOT_AGENT_KIND=kind, AUTOPILOT_AGENT_COMMAND=template,
                      FAKE_AGENT_RECORD=str(record))
    site.wait(lambda: site.store.get(1).status == "done", f"the {kind} agent")
    assert site.stop(proc) == 0
    (call,) = [json.loads(line) for line in record.read_text().splitlines()]
    ws = str(site.workspace("agent-001"))
    assert call["cwd"] == ws and call["stdin"] == "devnull"
    assert call["env"]["ISSUE_NUMBER"] == "1" and call["env"]["ISSUE_TITLE"] == title
    assert call["env"]["ISSUE_PRIORITY"] == "urgent" and call["env"]["GIT_AUTHOR_NAME"] == "agent-001"
    assert ".codex" in call["home"] and ".gitconfig" in call["home"] and ".ssh" not in call["home"]
    if kind == "command":
        assert call["name"] == "fake-agent"
        assert call["argv"] == ["--issue", "1", "--title", title, "--priority", "urgent", "--in", ws]
    else:
        assert call["name"] == kind
        prompt = call["argv"][{"codex": -1, "claude": 1}[kind]]
        expected = {"codex": ["exec", "--dangerously-bypass-approvals-and-sandbox", "--skip-git-repo-check",
                              "--ephemeral", "--json", "--color", "never", "-C", ws],
                    "claude": ["-p", prompt, "--dangerously-skip-permissions", "--output-format", "stream-json",
                               "--verbose", "--no-session-persistence"]}[kind]
        if kind == "codex":
            assert call["argv"][:len(expected)] == expected and call["argv"][-1] == prompt
            assert call["argv"][call["argv"].index("-o") + 1].endswith("issue-1-attempt-1.last.txt")
        else:
            assert call["argv"] == expected
        assert "#1" in prompt and title in prompt and "autopilot/issue-1" in prompt
        assert "Do NOT push" in prompt and "main" in prompt
        if kind == "claude":
            assert call["env"].get("IS_SANDBOX") == ("1" if os.geteuid() == 0 else None)
    issue = site.store.get(1)
    assert git(site.repo, "show", f"{issue.commit}:agent-edits.txt") == \
        f"{call['name']} edited for issue 1\n"
    committed = json.loads(git(site.repo, "show", f"{issue.commit}:.{call['name']}.argv.json"))
    assert committed[0].endswith(call["name"]) and committed[1:] == call["argv"]
    assert commit_info(site.repo, issue.commit)["author"] == "agent-001"


# -- configuration and health -------------------------------------------------

def test_bad_configuration_stops_the_runtime_at_boot_with_one_line(site):
    proc = site.start("agent-001", AUTOPILOT_AGENT_KIND="gpt")
    assert proc.wait(timeout=30) == 2
    out = (site.tmp / "agent-001.out").read_text().strip().splitlines()
    assert out == ["parallel-autopilot runtime: AUTOPILOT_AGENT_KIND='gpt' is unknown: "
                   "use one of script, codex, claude, command"]
    proc = site.start("agent-002", AUTOPILOT_AGENT_KIND="codex", PATH="/usr/bin:/bin")
    assert proc.wait(timeout=30) == 2
    assert "needs 'codex', which is not on PATH" in (site.tmp / "agent-002.out").read_text()
    site.store.add("Untouched", script="true")
    proc = site.start("agent-003", AUTOPILOT_BASE_BRANCH="trunk")
    assert proc.wait(timeout=30) == 6
    assert "base branch 'trunk' does not exist" in (site.tmp / "agent-003.out").read_text()
    assert site.store.get(1).attempts == 0  # nothing was claimed, nothing burnt


def test_health_goes_green_after_boot_and_red_when_the_heartbeat_stops(site):
    def health(agent):
        return subprocess.run([sys.executable, "-I", "-S", "-c", HEALTH, str(ROOT)], capture_output=True,
                              text=True, env={"AUTOPILOT_HEARTBEAT_FILE": str(site.heartbeat(agent)),
                                              "AUTOPILOT_HEALTH_MAX_AGE": "3"})
    assert health("agent-001").returncode == 1  # not booted
    proc = site.start("agent-001")
    site.wait(lambda: health("agent-001").returncode == 0, "healthy")
    first = os.stat(site.heartbeat("agent-001")).st_mtime
    site.wait(lambda: os.stat(site.heartbeat("agent-001")).st_mtime > first, "the heartbeat to be touched again")
    assert site.stop(proc) == 0
    os.utime(site.heartbeat("agent-001"), (time.time() - 60, time.time() - 60))
    result = health("agent-001")
    assert result.returncode == 1 and result.stdout.startswith("unhealthy: heartbeat 60")
    assert site.store.agents()[0].state == "stopped"


HEALTH = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
          "runpy.run_module('parallel_autopilot.runtime.health', run_name='__main__', alter_sys=True)")


def test_the_runtime_imports_with_the_standard_library_only():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "import parallel_autopilot.runtime.agent, parallel_autopilot.runtime.health; "
            "bad = sorted(n for n, m in sys.modules.items() if getattr(m, '__file__', None) "
            "and 'site-packages' in m.__file__ or n.split('.')[0] in ('invoke', 'yaml', 'psutil', 'docker')); "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the loop's parts, on a fake clock ------------------------------------------

from parallel_autopilot.runtime import agent as agent_module  # noqa: E402
from parallel_autopilot.runtime.settings import RuntimeSettings  # noqa: E402


def test_idle_polls_are_jittered_by_30_percent():
    assert agent_module.jittered(10, lambda: 0.0) == pytest.approx(7)
    assert agent_module.jittered(10, lambda: 0.5) == pytest.approx(10)
    assert agent_module.jittered(10, lambda: 0.999999) == pytest.approx(13, abs=1e-4)


def test_heartbeat_file_follows_loop_progress_and_the_watchdog_exits_70(tmp_path):
    now = [100.0]
    exits, killed = [], []
    settings = RuntimeSettings.from_env({
        "AUTOPILOT_AGENT_ID": "1", "AUTOPILOT_DB": str(tmp_path / "db"), "AUTOPILOT_WORKSPACE": str(tmp_path),
        "AUTOPILOT_LOGS": str(tmp_path / "logs"), "AUTOPILOT_WATCHDOG_SECONDS": "20",
        "AUTOPILOT_HEARTBEAT_FILE": str(tmp_path / "hb")})
    agent = agent_module.Agent(settings, monotonic=lambda: now[0], exit=exits.append,
                               kill_descendants=lambda: killed.append(True) or [])
    heartbeat = tmp_path / "hb"

    def look(at):
        now[0] = at
        if heartbeat.exists():
            heartbeat.unlink()
        return agent.check_progress(at), heartbeat.exists()

    assert look(101) == (True, False)  # not booted yet: never healthy before boot is done
    agent._booted = True
    agent.mark()  # progress at 101
    assert look(105) == (True, True)
    assert look(111.5) == (True, False)  # stalled past watchdog/2: health goes red...
    assert exits == []
    assert look(122) == (False, False)  # ...and past the watchdog: exit 70
    assert exits == [70] and killed == [True]
    assert agent.log.events()[-1]["event"] == "watchdog"
    # a heartbeat thread that stopped ticking trips it too
    exits.clear()
    agent.mark()
    agent._heartbeat_tick = 100.0
    assert look(122) == (False, False) and exits == [70]
    assert "the heartbeat thread made no progress" in agent.log.agent_log.read_text().splitlines()[-1]


# -- model CLIs: usage and rate limits (stand-in; the real CLIs: tests/containers/test_agent_clis_real.py) ----

RATE_LIMITED_CODEX = r'''#!/bin/sh
# first call: what Codex CLI 0.171 prints when it gives up on a 429; later: one turn with usage
count_file="$HOME/.codex-calls"
n=$(cat "$count_file" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "$count_file"
if [ "$n" = 1 ]; then
  echo '{"type":"error","message":"exceeded retry limit, last status: 429 Too Many Requests"}'
  echo '{"type":"turn.failed","error":{"message":"exceeded retry limit, last status: 429 Too Many Requests"}}'
  exit 1
fi
echo done > resolved.txt
echo '{"type":"turn.completed","usage":{"input_tokens":100,"cached_input_tokens":0,"output_tokens":7}}'
'''


def test_a_rate_limited_cli_releases_the_issue_unpaid_waits_and_records_usage(site, tmp_path):
    bin_dir = tmp_path / "cli-bin"
    bin_dir.mkdir()
    (bin_dir / "codex").write_text(RATE_LIMITED_CODEX)
    (bin_dir / "codex").chmod(0o755)
    site.store.add("rate limited once", max_attempts=1)  # a counted attempt would make it dead
    proc = site.start("agent-001", AUTOPILOT_AGENT_KIND="codex", AUTOPILOT_QUOTA_BACKOFF_SECONDS="2",
                      PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}")
    row = site.wait(lambda: next((a for a in site.store.agents() if a.state == "quota"), None), "the quota wait")
    assert row.waiting_until and row.waiting_until > time.time() - 1
    assert site.store.get(1).status == "ready" and site.store.get(1).attempts == 0  # refunded
    site.wait(lambda: site.store.get(1).status == "done", "the retry after the wait")
    assert site.stop(proc) == 0
    issue = site.store.get(1)
    assert issue.attempts == 1 and issue.usage["input_tokens"] == 100 and issue.usage["output_tokens"] == 7
    (quota,) = site.events("agent-001", "quota")
    assert "429" in quota["message"] and quota["issue"] == 1


# -- through the queue gateway (queue_access: gateway, the default in containers) --------

GATEWAY_BOOT = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
                "runpy.run_module('parallel_autopilot.issues.gateway', run_name='__main__', alter_sys=True)")


def start_gateway(site: Site, agents: list[str]) -> subprocess.Popen:
    """The gateway as its service runs it (standard library only), serving ``agents``' sockets."""
    for agent in agents:
        (site.tmp / "gateway" / agent).mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AUTOPILOT_DB": str(site.db),
           "AUTOPILOT_GATEWAY_DIR": str(site.tmp / "gateway"), "AUTOPILOT_BACKOFF_SECONDS": "0",
           "AUTOPILOT_SNAPSHOT_SECONDS": "0"}
    out = open(site.tmp / "gateway.out", "ab")
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", GATEWAY_BOOT, str(ROOT)], env=env,
                            stdout=out, stderr=subprocess.STDOUT)
    out.close()
    site.procs.append(proc)
    site.wait(lambda: all((site.tmp / "gateway" / a / "queue.sock").exists() for a in agents), "the gateway")
    return proc


def through_gateway(site: Site, agent: str) -> dict[str, str]:
    """What the compose file sets for an agent: its own socket, no database."""
    return {"AUTOPILOT_QUEUE_SOCKET": str(site.tmp / "gateway" / agent / "queue.sock"), "AUTOPILOT_DB": ""}


def test_three_agents_through_the_gateway_do_each_issue_once(site):
    agents = ["agent-001", "agent-002", "agent-003"]
    start_gateway(site, agents)
    issues = site.store.add_many({"title": f"Write file {i}", "script": 'echo "$ISSUE_NUMBER" > "issue-$ISSUE_NUMBER.txt"'}
                                 for i in range(12))
    procs = [site.start(a, **through_gateway(site, a)) for a in agents]
    site.wait(lambda: site.store.counts()["done"] == 12, "12 issues done")
    assert [site.stop(p) for p in procs] == [0, 0, 0]
    claims = claimed_events(site.store)
    assert all(len(claims[i.number]) == 1 for i in issues)
    for issue in site.store.list():
        assert issue.commit == git(site.repo, "rev-parse", f"autopilot/issue-{issue.number}").strip()
        assert (site.agent_dir(issue.owner) / f"issue-{issue.number}-attempt-1.log").exists()
    assert {row.id: row.state for row in site.store.agents()} == dict.fromkeys(agents, "stopped")
    assert not [e for e in site.store.events() if e.kind.startswith("refused")]


def test_a_gateway_killed_mid_issue_comes_back_and_the_agent_finishes_it_once(site):
    gateway = start_gateway(site, ["agent-001"])
    site.store.add("Slow", script=f"sleep 2; echo done > done.txt; echo ran >> {site.tmp}/ledger.txt")
    agent = site.start("agent-001", **through_gateway(site, "agent-001"))
    site.wait(lambda: site.store.get(1).status == "claimed", "the claim")
    gateway.kill()  # SIGKILL while the agent works: its renewals and its complete must wait, not fail
    gateway.wait()
    time.sleep(1)
    start_gateway(site, ["agent-001"])
    site.wait(lambda: site.store.get(1).status == "done", "#1 done after the restart")
    assert site.stop(agent) == 0
    assert (site.tmp / "ledger.txt").read_text() == "ran\n"  # ran once, completed once
    kinds_of = [e.kind for e in site.store.events(1)]
    assert kinds_of.count("claimed") == 1 and kinds_of.count("done") == 1
    assert not [k for k in kinds_of if k.startswith("refused")]
    assert "queue gateway unreachable" in (site.agent_dir("agent-001") / "agent.log").read_text()
