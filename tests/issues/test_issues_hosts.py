"""An agent's identity is (host, id): agent ids repeat on every workstation of a shared queue.

Two stores on ONE queue speak for the hosts ws1 and ws2, both with an agent-001;
everything runs against both backends (``queue_target``), the migrations of each
backend's previous schema at the end.
"""

from __future__ import annotations

import socket
from contextlib import ExitStack

import pytest

from support.clock import T0
from parallel_autopilot import issues
from parallel_autopilot.issues import postgres as pgstore
from parallel_autopilot.issues import IssueStore, open_store


@pytest.fixture
def hosts(queue_target, clock):
    """``(ws1, ws2, ws3)``: three stores on one queue, one per host, on the fake clock."""
    with ExitStack() as stack:
        yield tuple(stack.enter_context(open_store(queue_target, clock=clock, host=h)) for h in ("ws1", "ws2", "ws3"))


def test_the_host_defaults_to_this_machine_and_only_postgresql_is_shared(queue_target, clock):
    with open_store(queue_target, clock=clock) as store:
        assert store.host == socket.gethostname()
        assert store.shared is queue_target.startswith("postgresql://")


def test_a_claim_records_its_host_and_keeps_it_after_complete(hosts):
    ws1, ws2, _ = hosts
    never = ws1.add("never claimed")
    a, b = ws1.add("a", priority="high"), ws1.add("b", priority="high")
    assert never.host is None and ws1.get(never.number).to_dict()["host"] is None
    first = ws1.claim("agent-001")
    second = ws2.claim("agent-001")
    assert (first.number, first.issue.host) == (a.number, "ws1")
    assert (second.number, second.issue.host) == (b.number, "ws2")
    done = ws2.complete(second, {"branch": "b"})
    assert (done.status, done.owner, done.host) == ("done", "agent-001", "ws2")
    failed = ws1.fail(first, "boom")
    assert (failed.status, failed.host) == ("failed", "ws1")
    assert ws2.get(a.number).to_dict()["host"] == "ws1"


def test_release_agent_frees_only_its_own_hosts_claim(hosts):
    ws1, ws2, _ = hosts
    a, b = ws1.add("a"), ws1.add("b")
    mine = ws1.claim("agent-001")
    theirs = ws2.claim("agent-001")

    assert ws1.release_agent("agent-001", reason="container gone") == [a.number]
    assert ws1.get(a.number).status == "ready"
    kept = ws1.get(b.number)
    assert (kept.status, kept.owner, kept.host, kept.token) == ("claimed", "agent-001", "ws2", theirs.token)
    assert ws2.renew(theirs).token == theirs.token  # ws2's agent goes on undisturbed
    assert ws1.release_agent("agent-001") == []
    assert mine.number == a.number


def test_agents_are_keyed_by_host_and_id(hosts, clock):
    ws1, ws2, _ = hosts
    ws1.agent_heartbeat("agent-001", "idle", incarnation="i1", pid=10)
    ws2.agent_heartbeat("agent-001", "working", issue=7, incarnation="i2", pid=20)
    ws2.agent_heartbeat("agent-002", "idle")
    clock.advance(5)
    ws1.agent_heartbeat("agent-001", "working", issue=3, incarnation="i1")

    everyone = [(r.id, r.host, r.state, r.issue, r.pid) for r in ws1.agents()]
    assert everyone == [("agent-001", "ws1", "working", 3, 10), ("agent-001", "ws2", "working", 7, 20),
                        ("agent-002", "ws2", "idle", None, None)]
    assert [(r.id, r.host) for r in ws2.agents(host="ws1")] == [("agent-001", "ws1")]
    assert [(r.id, r.heartbeat_at) for r in ws1.agents(host="ws2")] == [("agent-001", T0), ("agent-002", T0)]
    assert ws1.agents(host="nowhere") == []


@pytest.mark.parametrize("silent", ["ws1", "ws2"])
def test_only_the_claims_own_agents_heartbeat_keeps_it_alive(hosts, clock, silent):
    """The same agent id on the other host heartbeating says nothing about this claim."""
    ws1, ws2, ws3 = hosts
    by_host = {"ws1": ws1, "ws2": ws2}
    live = "ws2" if silent == "ws1" else "ws1"
    first, second = ws1.add("first"), ws1.add("second")
    claims = {}
    for name in ("ws1", "ws2"):
        by_host[name].agent_heartbeat("agent-001", "working")
        claims[name] = by_host[name].claim("agent-001")
    clock.advance(30)
    by_host[live].agent_heartbeat("agent-001", "working")  # only the live host's agent-001 speaks

    taken = ws3.claim("agent-009", stale_after=10)
    assert taken is not None and taken.number == claims[silent].number
    assert [e.kind for e in ws3.events(taken.number)][-2:] == ["abandoned", "claimed"]
    assert ws3.claim("agent-009", stale_after=10) is None  # the live host's claim is not abandoned
    assert ws3.get(claims[live].number).host == live
    by_host[live].renew(claims[live])
    assert {first.number, second.number} == {c.number for c in claims.values()}


@pytest.mark.parametrize("silent", ["ws1", "ws2"])
def test_release_stale_agents_frees_every_hosts_silent_agents_and_names_the_host(hosts, clock, silent):
    ws1, ws2, _ = hosts
    by_host = {"ws1": ws1, "ws2": ws2}
    live = "ws2" if silent == "ws1" else "ws1"
    for t in "abc":
        ws1.add(t)
    for name in ("ws1", "ws2"):
        by_host[name].agent_heartbeat("agent-001", "working")
    claims = {name: by_host[name].claim("agent-001") for name in ("ws1", "ws2")}
    clock.advance(100)
    by_host[live].agent_heartbeat("agent-001", "working")

    # ws1 sweeps: its own agent is named plainly, another host's with @host
    expected = "agent-001" if silent == "ws1" else "agent-001@ws2"
    assert ws1.release_stale_agents(stale_after=60) == {expected: [claims[silent].number]}
    assert ws1.get(claims[silent].number).status == "ready"
    assert ws1.get(claims[live].number).status == "claimed"
    assert ws1.release_stale_agents(stale_after=60) == {}


def test_release_stale_agents_from_another_host_names_ws1s_agent_with_its_host(hosts, clock):
    ws1, ws2, _ = hosts
    ws1.add("a")
    ws1.agent_heartbeat("agent-001", "working")
    claim = ws1.claim("agent-001")
    clock.advance(100)
    assert ws2.release_stale_agents(stale_after=60) == {"agent-001@ws1": [claim.number]}


# -- migrations: the rows that exist take the migrating store's host ------------------

def _assert_migrated(target, store, done, held, never, events_before):
    assert (store.get(done).host, store.get(held).host, store.get(never).host) == ("ws7", "ws7", None)
    assert [(r.id, r.host) for r in store.agents()] == [("agent-001", "ws7")]
    assert len(store.events()) == events_before  # the backfill is no event
    # and the identity works on the migrated rows: ws7's agent-002 is released, another host's is not
    with open_store(target, host="ws8") as other:
        assert other.release_agent("agent-002") == []
    assert store.release_agent("agent-002") == [held]


@pytest.mark.sqlite_only
def test_a_version_4_sqlite_queue_migrates_with_its_rows_on_the_stores_host(tmp_path):
    path = tmp_path / "autopilot.db"
    with IssueStore(path, migrations=issues.MIGRATIONS[:4]) as old, old.transaction() as conn:  # as version 4 wrote it
        for title, owner, claimed_at in (("done before", "agent-001", T0), ("held before", "agent-002", T0),
                                         ("never claimed", None, None)):
            conn.execute("""INSERT INTO issues (title, priority, rank, due_at, created_at, updated_at, owner,
                                                 claimed_at, status, transition)
                            VALUES (?, 'medium', 2, ?, ?, ?, ?, ?, ?, 'claimed')""",
                         (title, T0, T0, T0, owner, claimed_at, {"agent-001": "done", "agent-002": "claimed"}
                          .get(owner, "ready")))
        conn.execute("""INSERT INTO agents (id, state, heartbeat_at, started_at, host)
                        VALUES ('agent-001', 'idle', ?, ?, 'container-hostname')""", (T0, T0))
        events_before = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    with IssueStore(path, host="ws7") as store:
        assert store._connect().execute("PRAGMA user_version").fetchone()[0] == len(issues.MIGRATIONS) >= 5
        _assert_migrated(path, store, 1, 2, 3, events_before)


def test_a_postgresql_queue_of_the_previous_version_migrates_with_its_rows_on_the_stores_host(pg_url):
    with pgstore.PgIssueStore(pg_url, migrations=pgstore.MIGRATIONS[:2]) as old:
        old._retrying(lambda conn: conn.run(
            """INSERT INTO issues (number, title, priority, rank, due_at, created_at, updated_at, owner,
                                   claimed_at, status, transition)
               VALUES (1, 'done before', 'medium', 2, 0, 0, 0, 'agent-001', 0, 'done', 'done'),
                      (2, 'held before', 'medium', 2, 0, 0, 0, 'agent-002', 0, 'claimed', 'claimed'),
                      (3, 'never claimed', 'medium', 2, 0, 0, 0, NULL, NULL, 'ready', NULL)"""))
        old._retrying(lambda conn: conn.run("""INSERT INTO agents (id, state, heartbeat_at, started_at, host)
                                               VALUES ('agent-001', 'idle', 0, 0, NULL)"""))
        events_before = len(old.events())
    with pgstore.PgIssueStore(pg_url, host="ws7") as store:
        assert store._read("SELECT version FROM autopilot_schema")[0]["version"] == len(pgstore.MIGRATIONS) >= 3
        _assert_migrated(pg_url, store, 1, 2, 3, events_before)
