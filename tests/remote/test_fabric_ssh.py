"""`fab -H` against a REAL OpenSSH server: the whole task runs on the workstation, never on the laptop.

The sshd, the workstation (a clone of the tree under test + its own target
repository and database) and the laptop (fab's cwd) come from
tests/support/ssh.py. Every test asserts the laptop stayed untouched where
it could have been touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

import parallel_autopilot
from parallel_autopilot import config
from parallel_autopilot.issues import IssueStore

from support.ssh import ROOT, free_port, git, laptop_untouched, run

pytestmark = pytest.mark.ssh


def one_line_error(proc: subprocess.CompletedProcess, code: int, pattern: str) -> str:
    """Assert fab failed with ``code`` and exactly one stderr line matching ``pattern``, no traceback."""
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    return lines[0]


def remote_store(station) -> IssueStore:
    return IssueStore(station.target / ".autopilot" / "autopilot.db")


def test_issue_tasks_act_on_the_workstations_database_and_never_on_the_laptop(workstation):
    title = "quote ' and \" and $HOME and `id`; rm -rf /"
    added = workstation.fab("issues.add", f"--title={title}", "--priority", "high")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == f"added #1 [high] {title}"
    listed = workstation.fab("issues.list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(i["number"], i["title"], i["priority"]) for i in json.loads(listed.stdout)] == [(1, title, "high")]
    with remote_store(workstation) as store:  # the workstation's own database holds it
        assert [i.title for i in store.list()] == [title]
    laptop_untouched(workstation.laptop)


def test_the_remote_tasks_own_error_and_exit_code_pass_through(workstation):
    proc = workstation.fab("issues.show", "99")
    one_line_error(proc, 3, r"^error: .*(99|no issue)")
    laptop_untouched(workstation.laptop)


@pytest.mark.parametrize("host, pattern", [
    ("ws-down", r"^error: ws-down: cannot connect to 127\.0\.0\.1:\d+: connection refused - is sshd running"),
    ("ws-wrongkey", r"^error: ws-wrongkey: SSH authentication as \w+@127\.0\.0\.1:\d+ failed .*check the key"),
    ("no-such-host.invalid", r"^error: no-such-host\.invalid: unknown host 'no-such-host\.invalid'"),
])
def test_a_host_that_cannot_be_used_is_one_line_and_a_nonzero_exit(workstation, host, pattern):
    one_line_error(workstation.fab("issues.list", host=host), 11, pattern)
    laptop_untouched(workstation.laptop)


def test_a_workstation_without_the_checkout_says_to_run_remote_setup(workstation):
    workstation.write_fab_config(remote_repo=str(workstation.dir / "not-there"))
    one_line_error(workstation.fab("issues.list"), 11,
                   r"^error: ws: no directory .*not-there: run `fab -H ws remote\.setup`")
    workstation.write_fab_config(remote_python=str(workstation.dir / "no-python"))
    one_line_error(workstation.fab("issues.list"), 11, r"^error: ws: no Python at .*no-python")


def test_several_hosts_run_at_once_each_line_prefixed_and_a_down_host_is_one_line(workstation):
    assert workstation.fab("issues.add", "--title=shared").returncode == 0
    proc = workstation.fab("issues.list", host="ws,ws-down,ws")
    assert proc.returncode == 11
    assert "Traceback" not in proc.stdout + proc.stderr
    out = proc.stdout.splitlines()
    assert sum(line.startswith("ws | #1 ") and "shared" in line for line in out) == 2
    assert all(line.startswith("ws | ") for line in out)
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("ws-down | error: ws-down: cannot connect"), errors


def test_configured_remote_hosts_are_used_when_no_host_is_given(workstation):
    workstation.write_fab_config(remote_hosts=["ws"])
    assert workstation.fab("issues.add", "--title=by config", host=None).returncode == 0
    with remote_store(workstation) as store:
        assert [i.title for i in store.list()] == ["by config"]
    laptop_untouched(workstation.laptop)


def test_without_a_host_fab_runs_the_task_here(workstation):
    proc = workstation.fab("issues.add", "--title=local", host=None)
    assert proc.returncode == 0, proc.stderr
    assert (workstation.laptop / ".autopilot" / "autopilot.db").exists()
    assert not (workstation.target / ".autopilot").exists()


# -- remote.setup and remote.sync: the laptop's own build ----------------------------------------

def upgraded_laptop(base: Path, version: str) -> Path:
    """A copy of the tool under test whose version is ``version``: the laptop after an upgrade."""
    root = base / "laptop-tool"
    shutil.copytree(ROOT / "parallel_autopilot", root / "parallel_autopilot",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("fabfile.py", "fabric.yaml"):
        shutil.copy(ROOT / name, root / name)
    init = root / "parallel_autopilot" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"', init.read_text()))
    return root


def without_pythonpath() -> dict:
    """This environment as an SSH session on the workstation sees it: no PYTHONPATH of the tests."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def remote_version(python: Path, cwd: Path) -> str:
    return run(python, "-m", "parallel_autopilot.program", "--version", cwd=cwd,
               env=without_pythonpath()).stdout.strip()


@pytest.mark.slow
@pytest.mark.docker
def test_setup_installs_the_laptops_build_agents_run_with_it_and_sync_installs_an_upgrade(agents_station,
                                                                                          built_test_image):
    station = agents_station
    fresh = station.dir / "ws" / "fresh install"
    tag = built_test_image(f"parallel-autopilot:ws-{os.getpid()}")
    with (station.target / "invoke.yaml").open("a") as settings_file:
        settings_file.write(f"  image: {tag}\n")
    git(station.target, "add", "invoke.yaml")
    git(station.target, "commit", "-q", "-m", "image tag")
    station.write_fab_config(remote_dir=str(fresh), remote_python=None, remote_repo=str(station.target))
    proc = station.fab("remote.setup", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    version = parallel_autopilot.__version__
    wheel = f"parallel_autopilot-{version}-py3-none-any.whl"
    steps = [line.split(": ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("ws: ")]
    assert steps[0].startswith("git ")
    assert steps[1:] == [f"venv {fresh}/.venv", f"installed {wheel} (the build this machine runs)",
                         f"parallel-autopilot {version} ready", steps[-1]] and re.match(r"docker \S+ ok$", steps[-1])
    assert not (fresh / ".git").exists()  # nothing of the tool's repository was needed there
    venv_python = fresh / ".venv" / "bin" / "python"
    where = run(venv_python, "-c", "import parallel_autopilot; print(parallel_autopilot.__file__)", cwd=station.dir,
                env=without_pythonpath())
    assert Path(where.stdout.strip()).is_relative_to(fresh / ".venv") and "site-packages" in where.stdout
    # the workstation runs the laptop's version, from its venv: its doctor says so, and agents start
    doctor = station.fab("doctor", "--n", "1", "--json", timeout=300)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    first = json.loads(doctor.stdout)["checks"][0]
    assert first["found"].startswith(f"{version} ({fresh}/.venv/")
    started = station.fab("agents.start", "--n", "1", timeout=900)
    assert started.returncode == 0, started.stdout + started.stderr
    agents = json.loads(station.fab("agents.status", "--json").stdout)
    assert [(a["id"], a["state"]) for a in agents] == [("agent-001", "running")]
    labels = json.loads(run("docker", "image", "inspect", tag, "--format", "{{json .Config.Labels}}").stdout)
    assert labels["parallel-autopilot.version"] == version
    assert station.fab("agents.stop").returncode == 0
    # setup again: the same steps, nothing broken
    again = station.fab("remote.setup", timeout=900)
    assert again.returncode == 0, again.stderr
    # the laptop upgrades; sync installs its new build there
    laptop_tool = upgraded_laptop(station.dir, version + ".post7")
    synced = run("fab", "--search-root", laptop_tool, "-H", "ws", "remote.sync", cwd=station.laptop,
                 env=station.env(PYTHONPATH=str(laptop_tool)), timeout=600, check=False)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert f"ws: parallel-autopilot {version}.post7 ready (was parallel-autopilot {version})" in synced.stdout
    assert remote_version(venv_python, station.dir) == f"parallel-autopilot {version}.post7"
    laptop_untouched(station.laptop)


def test_sync_before_setup_says_to_run_setup(workstation):
    workstation.write_fab_config(remote_dir=str(workstation.dir / "nothing-here"), remote_python=None)
    one_line_error(workstation.fab("remote.sync"), 11, r"^error: ws: no parallel-autopilot at .*: run "
                                                        r"`fab -H ws remote.setup` first")


# -- the GUI through a tunnel ----------------------------------------------------------------

def _listeners(port: int) -> list[tuple[str, int]]:
    return [(c.laddr.ip, c.pid) for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port]


def _wait(predicate, timeout=60.0, what="condition", explain=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} {explain()}")


def test_gui_runs_on_the_workstations_loopback_and_is_reached_through_the_tunnel(workstation):
    import httpx

    port, local = free_port(), free_port()
    output = workstation.dir / "gui.out"
    with output.open("w") as sink:
        proc = subprocess.Popen(
            ["fab", "--search-root", str(ROOT), "-H", "ws", "remote.gui", f"--port={port}", f"--local-port={local}"],
            cwd=workstation.laptop, env=workstation.env(), stdin=subprocess.PIPE, stdout=sink,
            stderr=subprocess.STDOUT, text=True)
    try:
        def answers():
            try:
                # the GUI accepts only its own port in Host (a browser on the laptop uses the same port)
                return httpx.get(f"http://127.0.0.1:{local}/api/agents", headers={"Host": f"127.0.0.1:{port}"},
                                 timeout=5)
            except httpx.HTTPError:
                return None

        response = _wait(answers, 90, "the GUI through the tunnel", lambda: output.read_text())
        assert response.status_code in (200, 503), response.text  # 503: no Docker is a valid GUI answer
        gui_sockets = _listeners(port)
        assert gui_sockets and all(ip == "127.0.0.1" for ip, _ in gui_sockets), gui_sockets
        assert all(ip == "127.0.0.1" for ip, _ in _listeners(local))
        gui_pids = {pid for _, pid in gui_sockets if pid}
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        assert _wait(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                                     for p in gui_pids), 30, "the remote GUI to stop")
        assert _wait(lambda: not _listeners(local), 10, "the tunnel to close")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    laptop_untouched(workstation.laptop)


# -- logs.tail --follow: a PTY, so Ctrl-C stops the remote tail --------------------------------

@pytest.mark.parametrize("hosts", ["ws", "ws,ws"])
def test_logs_follow_streams_new_lines_and_ctrl_c_stops_the_remote_tail(workstation, hosts):
    log = workstation.target / "docs" / "logs" / "agents" / "agent-001" / "agent.log"
    log.parent.mkdir(parents=True)
    log.write_text("2026-01-01T00:00:00Z old line\n")
    count = len(hosts.split(","))
    proc = subprocess.Popen(
        ["fab", "--search-root", str(ROOT), "-H", hosts, "logs.tail", "--id=1", "--follow"],
        cwd=workstation.laptop, env=workstation.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(count):
            assert "old line" in proc.stdout.readline()

        def remote_tails():
            found = [p for p in psutil.process_iter(["cmdline", "cwd"])
                     if "logs.tail" in (p.info["cmdline"] or []) and p.info["cwd"] == str(workstation.target)]
            return found if len(found) == count else None

        tails = _wait(remote_tails, 30, "the remote logs.tail processes")
        with log.open("a") as handle:
            handle.write("2026-01-01T00:00:01Z new line\n")
        for _ in range(count):
            assert "new line" in proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        assert proc.returncode != 0
        _wait(lambda: not any(t.is_running() and t.status() != psutil.STATUS_ZOMBIE for t in tails), 30,
              "the remote tail to stop")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    laptop_untouched(workstation.laptop)


# -- real agents on the workstation ---------------------------------------------------------

def _agents_registered() -> bool:
    from parallel_autopilot.tasks import ns

    return {"agents.start", "agents.status", "agents.stop"} <= set(ns.task_names)


@pytest.fixture
def agents_station(workstation):
    """The workstation, with every agent it started removed afterwards (by the fleet API, locally)."""
    if not _agents_registered():
        pytest.skip("the agents.* tasks are not registered in parallel_autopilot.tasks yet")
    yield workstation
    from parallel_autopilot import fleet

    try:
        fleet.Fleet.open(config.load(None, repo=str(workstation.target))).stop(progress=lambda _: None)
    except Exception:  # noqa: BLE001 - best-effort teardown
        pass


@pytest.mark.docker
@pytest.mark.slow
def test_fab_starts_real_agents_on_the_workstation_shows_them_in_one_table_and_stops_them(agents_station):
    station = agents_station
    started = station.fab("agents.start", "--n", "2", timeout=900)
    assert started.returncode == 0, started.stdout + started.stderr
    status = station.fab("agents.status", "--json")
    assert status.returncode == 0, status.stderr
    agents = json.loads(status.stdout)
    assert [(a["id"], a["state"], a["ready"]) for a in agents] == [
        ("agent-001", "running", True), ("agent-002", "running", True)]
    # several hosts: ONE table with a host column; the down host is one line; non-zero exit
    table = station.fab("agents.status", host="ws,ws-down")
    assert table.returncode == 11, table.stdout + table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["host", "agent"]
    assert [line.split()[:3] for line in lines[2:4]] == [["ws", "agent-001", "running"], ["ws", "agent-002", "running"]]
    assert len(lines) == 5 and lines[4].startswith("error: ws-down: cannot connect"), lines
    stopped = station.fab("agents.stop", "--id", "2")
    assert stopped.returncode == 0, stopped.stderr
    after = json.loads(station.fab("agents.status", "--json").stdout)
    assert [a["id"] for a in after] == ["agent-001"]
    assert station.fab("agents.stop").returncode == 0
    assert json.loads(station.fab("agents.status", "--json").stdout) == []
    laptop_untouched(station.laptop)


@pytest.mark.docker
def test_a_workstation_without_docker_gives_the_remote_tasks_one_line(agents_station):
    station = agents_station
    station.write_fab_config(remote_python=str(station.python_wrapper(
        "no-docker-python", DOCKER_HOST=f"unix://{station.dir}/no-docker.sock")))
    one_line_error(station.fab("agents.status"), 7, r"^error: Docker is not reachable .*: start the daemon")
    laptop_untouched(station.laptop)


def test_remote_test_runs_the_checkouts_test_command_with_the_arguments_and_its_exit_code(workstation):
    script = workstation.checkout / "scripts" / "test.sh"
    script.parent.mkdir(exist_ok=True)
    # a stand-in for scripts/test.sh: prints where it runs and its arguments, exits 5
    script.write_text('printf "%s\\n" "$PWD" "$@"\nexit 5\n')
    proc = workstation.fab("remote.test", "--args=-x -k 'a b' -m \"not docker\"")
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert [line.strip() for line in proc.stdout.splitlines()] == [str(workstation.checkout), "-x", "-k", "a b",
                                                                   "-m", "not docker"]
    laptop_untouched(workstation.laptop)


@pytest.mark.docker
def test_on_a_shared_postgresql_queue_fab_shows_the_workstations_own_agents_and_the_whole_backlog(
        workstation, pg_url):
    """Two hosts' agent-001 in one PostgreSQL queue: `fab -H ws` lists ws1's alone, never ws2's as gone."""
    from parallel_autopilot.issues import open_store

    with (workstation.target / "invoke.yaml").open("a") as f:
        f.write(f"  queue: {pg_url}\n  host: ws1\n")
    with open_store(pg_url, host="ws1") as ws1, open_store(pg_url, host="ws2") as ws2:
        ws1.add("ws1's issue"), ws2.add("ws2's issue")
        mine, theirs = ws1.claim("agent-001"), ws2.claim("agent-001")
        ws1.agent_heartbeat("agent-001", "working", issue=mine.number)
        ws2.agent_heartbeat("agent-001", "working", issue=theirs.number)
    status = workstation.fab("agents.status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    agents = json.loads(status.stdout)
    assert [(a["host"], a["id"], a["state"], a["problem"]) for a in agents] == [
        ("ws1", "agent-001", "missing", "container gone")]  # ws1's: it reported, no container here
    listed = workstation.fab("issues.list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    rows = rows if isinstance(rows, list) else rows.get("issues", rows)
    assert sorted((i["title"], i["host"]) for i in rows) == [("ws1's issue", "ws1"), ("ws2's issue", "ws2")]
    with open_store(pg_url, host="ws2") as ws2:
        assert ws2.get(theirs.number).status == "claimed"  # ws1's status read freed nothing of ws2's
    laptop_untouched(workstation.laptop)
