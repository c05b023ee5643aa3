"""Agents in REAL containers on ONE real PostgreSQL queue, from two "hosts" (issue 13).

Two clones of one origin are two workstations on this machine: two compose
projects, 3 agent containers each, ``host`` ws1 and ws2, one database on the
session's PostgreSQL server (conftest ``pg_cluster``, Unix socket only). The
containers run with network ``none``: they reach the server through its socket
directory, mounted at the same path, and read the URL (with a password in it)
from the 0400 secret file. Both test functions share the running fleets.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from parallel_autopilot import fleet
from parallel_autopilot.containers import compose
from parallel_autopilot.containers import provision as containers
from parallel_autopilot.containers import image
from parallel_autopilot.containers import queueaccess
from support.images import BUILT_TEST_IMAGES
from support.waiting import wait_for
from test_fleet_docker import drained, git, make_repo, make_settings

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TAG = "parallel-autopilot:test-pg"
PASSWORD = "pw-Xq71-not-for-logs"
STALE_SECONDS = 6.0  # the runtime's default AUTOPILOT_STALE_SECONDS
HOSTS = ("ws1", "ws2")


def _clone(origin: Path, path: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(origin), str(path)], check=True, capture_output=True)
    git(path, "config", "user.name", "Host User")
    git(path, "config", "user.email", "host@example.invalid")
    return path


def git_dir(settings) -> str:
    """The user's .git, mounted read-only at its own path into every agent."""
    return containers.compose_env(settings, strict=False)["AUTOPILOT_GIT_DIR"]


def pg_socket_dir(settings) -> str:
    """The PostgreSQL server's socket directory, as the compose variables name it."""
    return containers.compose_env(settings, strict=False)["AUTOPILOT_QUEUE_SOCKET_DIR"]


def _done(store) -> list[int]:
    return sorted(e.issue for e in store.events() if e.kind == "done")


@pytest.fixture(scope="module")
def two_hosts(pg_cluster, tmp_path_factory):
    """{host: Settings} of two clones, 3 agents each on one PostgreSQL queue, and the measurements."""
    root = tmp_path_factory.mktemp("pg-hosts")
    # the secret files go under the runtime directory: the test's own, so nothing is left behind
    previous = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(root)
    origin = make_repo(root / "origin")
    url = pg_cluster.create_database("pa_two_hosts").replace("postgresql://postgres@",
                                                               f"postgresql://postgres:{PASSWORD}@")
    settings = {host: make_settings(_clone(origin, root / host), queue=url, host=host, image=TAG,
                                    network="none")
                for host in HOSTS}
    BUILT_TEST_IMAGES.add(TAG)
    measured: dict = {}
    try:
        started = time.monotonic()
        image.ensure_image(settings["ws1"], progress=lambda _: None, rebuild=True)
        measured["image build with pg8000 staged (s)"] = round(time.monotonic() - started, 1)
        for host in HOSTS:
            fleet.Fleet.open(settings[host]).start(3, progress=lambda _: None)
        yield settings, pg_cluster, measured
    finally:
        for host in HOSTS:
            try:
                fleet.Fleet.open(settings[host]).stop(progress=lambda _: None)
            except Exception:  # noqa: BLE001 - best-effort teardown
                pass
        subprocess.run(["docker", "rmi", "-f", TAG], capture_output=True)
        if previous is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = previous
        print("MEASURED", json.dumps(measured))


def test_two_hosts_drain_one_backlog_once_and_survive_a_server_restart(two_hosts):
    settings, cluster, measured = two_hosts
    store = fleet.store_for(settings["ws1"])
    assert store.shared and store.host == "ws1"

    # 60 script issues, 6 agents on 2 hosts
    added = [i.number for i in store.add_many(
        [{"title": f"shared {i}", "script": f"sleep 0.3; echo {i} > shared-{i}.txt"} for i in range(1, 61)])]
    begun = time.monotonic()
    # while both hosts work, ws1's crash recovery frees no claim of ws2's (same agent ids)
    wait_for(lambda: {i.host for i in store.list("claimed")} >= set(HOSTS), 60, 0.1, "claims from both hosts")
    assert fleet.Fleet.open(settings["ws1"]).release_gone() == {}
    assert {i.host for i in store.list("claimed")} >= set(HOSTS)
    # each host lists its own agents only: never the other's agent-001 as "container gone"
    for host in HOSTS:
        agents = fleet.Fleet.open(settings[host]).list()
        assert [(a.id, a.host, a.problem) for a in agents] == [(f"agent-00{n}", host, None) for n in (1, 2, 3)]
    wait_for(lambda: drained(store), 240, 0.2, "60 issues drained")
    measured["drain 60 issues, 2 hosts x 3 agents (s)"] = round(time.monotonic() - begun, 1)
    assert _done(store) == added  # every issue done exactly once (the events trail)
    issues = [store.get(n) for n in added]
    assert {i.status for i in issues} == {"done"}
    by_host = {h: sum(1 for i in issues if i.host == h) for h in HOSTS}
    assert all(by_host.values()) and sum(by_host.values()) == 60, by_host

    # the password is nowhere: compose config, docker inspect, the agent logs
    for host in HOSTS:
        s = settings[host]
        rendered = compose.run(s, ["config"], env=containers.compose_env(s, strict=False)).stdout
        assert PASSWORD not in rendered and "/run/secrets/autopilot-queue" in rendered
        uid = containers.repo_owner(s)[0]
        secret = queueaccess.secret_dir(s, compose.project_name(s), uid) / "queue-url"
        assert secret.is_relative_to(s.repo.parent) and PASSWORD in secret.read_text()  # what they read
        for agent in fleet.Fleet.open(s).list():
            inspected = subprocess.run(["docker", "inspect", agent.container], check=True, capture_output=True,
                                       text=True).stdout
            assert PASSWORD not in inspected
            assert f"AUTOPILOT_HOST={host}" in inspected
            # no agent holds the URL, its file or the server's socket: only the gateway does
            assert "AUTOPILOT_QUEUE_FILE" not in inspected and "/run/secrets/autopilot-queue" not in inspected
            assert str(secret) not in inspected and pg_socket_dir(s) not in inspected
            # every directory the host gives it (the image has no secret: it is built without one)
            in_agent = subprocess.run(["docker", "exec", agent.container, "sh", "-c",
                                       "grep -rlsD skip -- \"$0\" /workspace /logs /run /home /etc /tmp \"$1\" "
                                       "2>/dev/null; env | grep -c postgresql; true", PASSWORD, str(git_dir(s))],
                                      capture_output=True, text=True, timeout=120).stdout.split()
            assert in_agent == ["0"], in_agent  # no file it can read holds the password; no URL in its env
            output = subprocess.run(["docker", "logs", agent.container], capture_output=True, text=True)
            assert PASSWORD not in output.stdout + output.stderr
        gateway = subprocess.run(["docker", "inspect", f"{compose.project_name(s)}-gateway"], check=True,
                                 capture_output=True, text=True).stdout
        assert PASSWORD not in gateway and "AUTOPILOT_QUEUE_FILE=/run/secrets/autopilot-queue" in gateway
        for path in s.logs_path.rglob("*"):
            if path.is_file():
                assert PASSWORD not in path.read_text(errors="replace"), path

    # the server restarts while agents work: nothing lost, nothing done twice, agents recover
    more = [i.number for i in store.add_many(
        [{"title": f"restart {i}", "script": f"sleep 1; echo {i} > restart-{i}.txt"} for i in range(1, 19)])]
    wait_for(lambda: len(store.list("claimed")) >= 4, 60, 0.1, "agents at work")
    cluster.stop()
    time.sleep(3)
    cluster.start()
    back_at = time.time()
    first = wait_for(lambda: [e.at for e in store.events() if e.kind in ("claimed", "done") and e.at > back_at],
                     120, 0.2, "work after the restart")
    measured["first claim/done after the PG restart (s)"] = round(min(first) - back_at, 1)
    wait_for(lambda: drained(store), 240, 0.2, "the restart backlog drained")
    measured["restart backlog of 18 drained after the restart (s)"] = round(time.time() - back_at, 1)
    assert _done(store) == added + more
    assert {store.get(n).status for n in more} == {"done"}
    # the gateway, which holds the store, said so in one line per outage (not one per retry); its
    # agents waited for it and said at most one line each (a gateway starting after them)
    for s in settings.values():
        gateway_log = subprocess.run(["docker", "logs", f"{compose.project_name(s)}-gateway"], capture_output=True,
                                     text=True).stdout
        said = [line for line in gateway_log.splitlines() if "unreachable" in line]
        assert 1 <= len(said) <= 2, gateway_log
        for log in s.logs_path.rglob("agent.log"):
            lines = [line for line in log.read_text().splitlines() if "unreachable" in line]
            assert len(lines) <= 2, lines
    assert all(a.problem is None for h in HOSTS for a in fleet.Fleet.open(settings[h]).list())


def test_a_killed_hosts_issues_are_taken_over_by_the_other_host(two_hosts):
    settings, _, measured = two_hosts
    store = fleet.store_for(settings["ws1"])
    before = _done(store)
    added = [i.number for i in store.add_many(
        [{"title": f"kill {i}", "script": f"sleep 4; echo {i} > kill-{i}.txt"} for i in range(1, 13)])]
    victims = wait_for(lambda: (lambda a: a if len(a) == 3 else None)(
        [x for x in fleet.Fleet.open(settings["ws2"]).list() if x.issue is not None]), 60, 0.1, "ws2's agents at work")
    held = {a.issue: store.get(a.issue) for a in victims}
    assert {i.host for i in held.values()} == {"ws2"}
    subprocess.run(["docker", "kill", *[a.container for a in victims]], check=True, capture_output=True)
    killed_at = time.time()

    for number, issue in held.items():
        again = wait_for(lambda: (lambda i: i if i.token > issue.token else None)(store.get(number)),
                         90, 0.1, f"#{number} to be claimed again")
        assert again.host == "ws1"
    took = max(next(e.at for e in reversed(store.events(n)) if e.kind == "claimed") for n in held) - killed_at
    measured["takeover of ws2's 3 issues by ws1 after docker kill (s)"] = round(took, 1)
    assert took < STALE_SECONDS + 10  # the stale-agent window (plus a poll and a busy ws1), not the lease
    wait_for(lambda: drained(store), 180, 0.2, "the queue to drain on ws1 alone")
    assert _done(store) == sorted(before + added)  # the taken-over issues done once, by ws1
    assert all(store.get(n).host == "ws1" for n in held)
    # ws1 sees its 3 agents; ws2 sees its killed ones for what they are
    assert [a.problem for a in fleet.Fleet.open(settings["ws1"]).list()] == [None, None, None]
    assert {a.problem for a in fleet.Fleet.open(settings["ws2"]).list()} == {"killed (exit 137)"}
