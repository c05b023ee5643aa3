"""parallel_autopilot.fleet without Docker: readiness, counts, logs, waiting (fakes for the daemon).

The fakes go in through the Fleet's seams: ``docker=`` for the daemon, a subclass for a
listing given in advance or a store that must not be opened. Nothing is patched.
"""

from __future__ import annotations

import itertools
import threading
from types import SimpleNamespace

import pytest
from support.fleet_fakes import FakeDocker

from parallel_autopilot import config, fleet
from parallel_autopilot.errors import AgentNotFound, AgentsUnhealthy, InvalidAgentCount, InvalidAgentId, InvalidInput


def status(**changes) -> fleet.AgentStatus:
    base = dict(id="agent-001", container="pa-x-agent-001", state="running", health="starting",
                activity="idle", issue=None, issue_title=None, since=1000.0, uptime=3.0,
                heartbeat_age=0.5, restarts=0)
    return fleet.AgentStatus(**{**base, **changes})


@pytest.mark.parametrize("changes, ready", [
    ({}, True),                                            # reported since it started
    ({"health": "healthy", "heartbeat_age": None}, True),  # Docker's check passed
    ({"health": "unhealthy"}, False),
    ({"state": "restarting"}, False),
    ({"heartbeat_age": 4.0}, False),                       # the report is older than the container
    ({"heartbeat_age": None}, False),                      # never reported
    ({"activity": "stopped"}, False),                      # a previous run's last word
    ({"activity": "working", "issue": 3}, True),
])
def test_ready_means_running_and_reported_by_this_incarnation(changes, ready):
    assert status(**changes).ready is ready
    assert status(**changes).to_dict()["ready"] is ready


@pytest.fixture
def settings(git_repo):
    return config.load({}, repo=str(git_repo), max_agents=4)


@pytest.mark.parametrize("value", [0, -1, 5, "abc", "", None, "2.5"])
def test_counts_outside_one_to_max_are_refused_with_the_range(settings, value):
    with pytest.raises(InvalidAgentCount, match="1 to 4"):
        fleet.Fleet.open(settings).check_count(value)


def test_counts_inside_the_range_are_numbers(settings):
    assert [fleet.Fleet.open(settings).check_count(v) for v in (1, "4", " 2 ")] == [1, 4, 2]


class Listed(fleet.Fleet):
    """A Fleet whose agents are given: each ``list()`` is the next of ``listings``."""

    def __init__(self, settings, listings):
        super().__init__(settings)
        self.listings = iter(listings)

    def list(self, now=None):  # noqa: A003 - the Fleet's name
        return next(self.listings)


class StoreLess(fleet.Fleet):
    """A Fleet that fails the test the moment anything opens its store."""

    @property
    def store(self):
        pytest.fail("the store was opened")


def daemon(containers: list):
    """The Docker client as ``Fleet.list`` asks it: ping, and ``containers`` whatever the filter."""
    return SimpleNamespace(ping=lambda: True, containers=SimpleNamespace(list=lambda **_: containers))


def test_wait_healthy_returns_when_all_are_ready_and_names_the_laggards_otherwise(settings):
    ticks = iter(range(100))
    booting = Listed(settings, [[status(heartbeat_age=None)], [status()]])
    assert [a.id for a in booting.wait_healthy(["agent-001"], progress=lambda _: None,
                                               clock=lambda: next(ticks), sleep=lambda _: None)] == ["agent-001"]
    unhealthy = Listed(settings, itertools.repeat([status(health="unhealthy")]))
    with pytest.raises(AgentsUnhealthy, match=r"agent-001 \(running/unhealthy\), agent-002 \(missing\)"):
        unhealthy.wait_healthy(["agent-001", "agent-002"], timeout=3, progress=lambda _: None,
                               clock=lambda: next(ticks), sleep=lambda _: None)


def test_logs_of_one_agent_only_tail_and_follow(settings):
    the_fleet = fleet.Fleet.open(settings, docker=FakeDocker())  # no container: only the log files count
    for agent in ("agent-001", "agent-002"):
        path = fleet.agent_log_path(settings, agent)
        path.parent.mkdir(parents=True)
        path.write_text("".join(f"2026-01-01T00:00:0{i}Z {agent} line {i}\n" for i in range(5)))
    assert list(the_fleet.logs("2", tail=2)) == [
        "2026-01-01T00:00:03Z agent-002 line 3", "2026-01-01T00:00:04Z agent-002 line 4"]
    merged = list(the_fleet.logs(None, tail=4))
    assert merged[0].startswith("agent-001 | ") and {m.split(" | ")[0] for m in merged} == {"agent-001", "agent-002"}

    polling = threading.Event()

    class Stop(threading.Event):
        """Tells the test when the follower first polls: its offsets are taken by then."""

        def wait(self, timeout=None):
            polling.set()
            return super().wait(timeout)

    stop = Stop()
    lines = the_fleet.logs("002", tail=0, follow=True, stop=stop, poll=0.01)
    got = []

    def follow():
        for line in lines:
            got.append(line)
            stop.set()

    reader = threading.Thread(target=follow)
    reader.start()
    assert polling.wait(5), "the follower never started polling"
    with fleet.agent_log_path(settings, "agent-001").open("a") as other:
        other.write("not mine\n")
    with fleet.agent_log_path(settings, "agent-002").open("a") as mine:
        mine.write("new line\n")
    reader.join(5)
    assert got == ["new line"]


def test_logs_of_an_unknown_or_malformed_agent_are_refused(settings):
    the_fleet = fleet.Fleet.open(settings, docker=FakeDocker())
    with pytest.raises(AgentNotFound, match="agent-009"):
        the_fleet.logs("9")
    with pytest.raises(InvalidAgentId):
        the_fleet.logs("../../etc/passwd")


def test_parse_docker_times_with_nanoseconds():
    assert fleet._parse_time("2026-11-27T21:22:56.123456789Z") == pytest.approx(1795814576.123456)
    assert fleet._parse_time("0001-01-01T00:00:00Z") is None


@pytest.mark.parametrize("state, restarts, expected", [
    ({"Status": "running"}, 0, None),
    ({"Status": "exited", "ExitCode": 0}, 0, None),                      # docker stop: a clean exit
    ({"Status": "exited", "ExitCode": 137}, 0, "killed (exit 137)"),     # docker kill / SIGKILL
    ({"Status": "exited", "ExitCode": 137, "OOMKilled": True}, 0, "out of memory (killed by the kernel)"),
    ({"Status": "exited", "ExitCode": 2}, 0, "exited with code 2"),
    ({"Status": "restarting", "ExitCode": 70}, 4, "crash-looping (4 restarts)"),
    ({"Status": "exited", "ExitCode": 70}, 5, "crash-looping (5 restarts)"),
    ({"Status": "running"}, 3, "restarted 3 times"),
])
def test_problem_names_why_a_container_is_not_working(state, restarts, expected):
    assert fleet.problem(state, restarts) == expected


class FakeContainer:
    def __init__(self, agent, status, code=0):
        self.name, self.labels = f"pa-{agent}", {fleet.LABEL_AGENT: agent}
        self.attrs = {"State": {"Status": status, "ExitCode": code, "StartedAt": "2026-01-01T00:00:00Z"},
                      "RestartCount": 0}


def test_list_agents_shows_killed_and_vanished_agents_with_their_problem(settings):
    store = fleet.store_for(settings)
    for agent in ("agent-001", "agent-002", "agent-003", "agent-004"):
        store.agent_heartbeat(agent, "working", issue=7)
    store.agent_heartbeat("agent-004", "stopped")  # said goodbye: not missing
    containers = [FakeContainer("agent-001", "running"), FakeContainer("agent-002", "exited", 137)]
    agents = {a.id: a for a in fleet.Fleet.open(settings, docker=daemon(containers)).list()}
    assert sorted(agents) == ["agent-001", "agent-002", "agent-003"]
    assert (agents["agent-001"].issue, agents["agent-001"].problem) == (7, None)
    # the killed agent's last report said "working on #7": it works on nothing now
    assert (agents["agent-002"].issue, agents["agent-002"].activity, agents["agent-002"].problem) == (
        None, "exited", "killed (exit 137)")
    assert (agents["agent-003"].state, agents["agent-003"].container, agents["agent-003"].problem) == (
        "missing", None, "container gone")


def test_on_a_shared_queue_each_host_lists_and_frees_only_its_own_agents(git_repo, pg_url):
    ws1 = config.load({}, repo=str(git_repo), queue=pg_url, host="ws1")
    ws2 = ws1.replace(host="ws2")
    one, two = fleet.store_for(ws1), fleet.store_for(ws2)
    try:
        assert one is not two and (one.host, two.host, one.shared) == ("ws1", "ws2", True)
        assert fleet.store_for(ws1) is one  # cached per queue and host
        one.add_many([{"title": "first"}, {"title": "second"}])
        mine, theirs = one.claim("agent-001"), two.claim("agent-001")  # the same id on both hosts
        one.agent_heartbeat("agent-001", "working", issue=mine.issue.number, token=mine.token)
        two.agent_heartbeat("agent-001", "working", issue=theirs.issue.number, token=theirs.token)
        two.agent_heartbeat("agent-002", "idle")
        containers = [FakeContainer("agent-001", "running")]
        the_fleet = fleet.Fleet.open(ws1, docker=daemon(containers))
        # ws2's agent-001 and agent-002 are not ws1's "container gone"
        assert [(a.id, a.host, a.issue, a.problem) for a in the_fleet.list()] == [
            ("agent-001", "ws1", mine.issue.number, None)]
        assert the_fleet.release_gone() == {}
        containers.clear()  # ws1's agent-001 container is gone: only ws1's claim comes back
        assert the_fleet.release_gone() == {"agent-001": [mine.issue.number]}
        assert one.get(mine.issue.number).status == "ready"
        kept = one.get(theirs.issue.number)
        assert (kept.status, kept.owner, kept.host, kept.token) == ("claimed", "agent-001", "ws2", theirs.token)
        # the issues.* tasks speak for the same host (the merge queue merges only its host's issues)
        from parallel_autopilot.tasks.issues import interactive_store
        assert interactive_store(ws2).host == "ws2"
    finally:
        fleet.close_store(ws1)


def test_start_refuses_a_loopback_tcp_queue_on_network_none_before_creating_anything(git_repo):
    # agents that open the queue themselves (queue_access: mount; the gateway is on the host's network)
    settings = config.load({}, repo=str(git_repo), queue="postgresql://ap:pw@127.0.0.1:5432/backlog",
                           network="none", queue_access="mount")
    with pytest.raises(InvalidInput, match="autopilot.network: host") as caught:
        StoreLess.open(settings, docker=FakeDocker()).start(1, progress=lambda _: None)
    assert "\n" not in str(caught.value) and "pw" not in str(caught.value)
    assert not (git_repo / ".worktrees").exists()
