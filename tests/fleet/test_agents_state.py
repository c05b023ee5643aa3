"""`agents.start` / `agents.restart` / `agents.status` report ONE state per agent, the real one."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from operator import attrgetter

import pytest

from parallel_autopilot.fleet import AgentStatus
from parallel_autopilot.tasks.agents import status_table

state, doing = attrgetter("status"), attrgetter("doing")  # the library's words, which every edge shows


def agent(**fields) -> AgentStatus:
    values = dict(id="agent-001", container="c", state="running", health="starting", activity="idle", issue=None,
                  issue_title=None, since=time.time() - 2, uptime=2.0, heartbeat_age=0.4, restarts=0)
    values.update(fields)
    return AgentStatus(**values)


def test_a_booted_agent_is_ready_though_dockers_first_health_check_has_not_run():
    a = agent()
    assert a.ready and state(a) == "ready" and doing(a) == "idle"
    assert "starting" not in status_table([a])


def test_just_restarted_the_old_incarnations_stopped_is_not_shown():
    a = agent(activity="stopped", uptime=0.8, heartbeat_age=3.0)  # the row is older than the container
    assert (state(a), doing(a)) == ("starting", "booting")
    assert state(agent(health="unhealthy")) == "unhealthy"
    assert state(agent(state="exited", uptime=None)) == "exited"
    assert doing(agent(activity="working", issue=7, issue_title="Fix it")) == "working on #7 Fix it"


def _cli(repo, *args):
    env = {**os.environ, "INVOKE_AUTOPILOT_NETWORK": "none", "INVOKE_AUTOPILOT_PROFILE": "light",
           "INVOKE_AUTOPILOT_MEMORY": "256m", "INVOKE_AUTOPILOT_CPUS": "0.5",
           "INVOKE_AUTOPILOT_HEALTH_INTERVAL_SECONDS": "30", "INVOKE_AUTOPILOT_STOP_GRACE_SECONDS": "5"}
    proc = subprocess.run(["parallel-autopilot", *args], cwd=repo, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    return proc.stdout


def _row(out: str, ident: str) -> list[str]:
    return [line.split() for line in out.splitlines() if line.startswith(ident + "  ")][-1]  # the table's row


@pytest.mark.docker
@pytest.mark.slow
def test_start_and_restart_print_the_state_they_announced(git_repo):
    # a slow Docker health interval: Docker's own health still says "starting" when we print
    try:
        out = _cli(git_repo, "agents.start", "--n", "1")
        assert "agent-001 ready" in out
        assert _row(out, "agent-001")[1:4] == [socket.gethostname(), "ready", "idle"], out  # the HOST column
        assert "database checked, snapshot autopilot-" in out  # agents.start: quick_check, then a snapshot
        assert len(list((git_repo / ".autopilot" / "snapshots").glob("autopilot-*.db"))) == 1
        out = _cli(git_repo, "agents.restart", "--id", "1")
        assert _row(out, "agent-001")[1:4] == [socket.gethostname(), "ready", "idle"], out  # the HOST column
    finally:
        _cli(git_repo, "agents.stop")


@pytest.mark.docker
def test_status_watch_is_a_live_view_that_ends_cleanly_on_ctrl_c(git_repo):
    """Under a REAL pseudo-terminal: the rich view redraws, Ctrl-C (SIGINT) ends it with exit 0."""
    import pty
    import select
    import signal

    master, slave = pty.openpty()
    proc = subprocess.Popen(["parallel-autopilot", "agents.status", "--watch", "0.3"], cwd=git_repo,
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            env={**os.environ, "TERM": "xterm", "COLUMNS": "120"})
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    while seen.count(b"(Ctrl-C stops)") < 2 and time.monotonic() < deadline:  # drawn, then redrawn
        if select.select([master], [], [], 1)[0]:
            try:
                seen += os.read(master, 65536)
            except OSError:
                break
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C: the whole foreground group
    code = proc.wait(timeout=30)
    while select.select([master], [], [], 0.2)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    text = seen.decode(errors="replace")
    assert code == 0, text
    assert text.count("(Ctrl-C stops)") >= 2 and "no agents" in text
    assert "Traceback" not in text and "interrupted" not in text
