"""The issue store: claim order, fencing, retries, crash recovery, schema, filesystems, fork.

Time moves through the fake ``clock`` (or ``now=``), never by sleeping. The
many-process hammer lives in test_issues_hammer.py, the model-based test in
test_issues_statemachine.py.
"""

from __future__ import annotations

import functools
import gc
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import weakref

import pytest

from parallel_autopilot import issues
from parallel_autopilot.issues import sqlite as sqlitestore
from parallel_autopilot.errors import (
    Conflict, InvalidInput, IssueNotFound, LeaseLost, UnsafeFilesystem,
)
from parallel_autopilot.issues import (
    MIGRATIONS, IssueStore, check_filesystem, filesystem_type, is_url, open_store,
)

#: Tests marked so are about SQLite itself (its files, WAL, fork, filesystems, its
#: schema history): they run against SQLite alone. Everything on the ``store`` (or
#: ``queue_target``) fixture runs against BOTH backends; PostgreSQL's own schema,
#: fork and reconnect tests are in test_pgstore.py.
sqlite_only = pytest.mark.sqlite_only


def kinds(store, number=None):
    return [e.kind for e in store.events(number)]


# -- claim order --------------------------------------------------------------


def test_priority_then_age_decides_the_claim(store, clock):
    low = store.add("low, oldest", priority="low")
    clock.advance(1)
    medium = store.add("medium", priority="medium")
    clock.advance(1)
    urgent_old = store.add("urgent, older", priority="urgent")
    clock.advance(1)
    high = store.add("high", priority="high")
    clock.advance(1)
    urgent_new = store.add("urgent, newer", priority="urgent")
    # same priority, same second: the lower number (added first) wins
    same_a, same_b = store.add_many([{"title": "tie a", "priority": "high"},
                                     {"title": "tie b", "priority": "high"}])
    clock.advance(1)

    order = [store.claim(f"agent-{i:03d}").number for i in range(1, 8)]

    assert order == [urgent_old.number, urgent_new.number, high.number, same_a.number,
                     same_b.number, medium.number, low.number]
    assert store.claim("agent-009") is None


def test_an_issue_added_later_is_not_claimable_before_it_exists(store, clock):
    store.add("future", now=clock.now + 100)
    assert store.claim("agent-001") is None
    assert store.claim("agent-001", now=clock.now + 100).issue.title == "future"


def test_exhausted_issue_at_the_head_does_not_block_the_rest(store, clock):
    head = store.add("urgent, one attempt only", priority="urgent", max_attempts=1)
    rest = [store.add(f"low {i}", priority="low") for i in range(3)]
    lost = store.claim("agent-001", lease_seconds=10)
    assert lost.number == head.number
    clock.advance(11)  # the only attempt's lease expires: the head is exhausted

    got = [store.claim(f"agent-{i:03d}", lease_seconds=10) for i in (2, 3, 4)]

    assert [c.number for c in got] == [i.number for i in rest]
    dead = store.get(head.number)
    assert dead.status == "dead" and dead.attempts == 1
    assert dead.error == "lease expired on the last attempt"
    assert kinds(store, head.number)[-1] == "dead"
    with pytest.raises(LeaseLost):  # and the late holder cannot finish it any more
        store.complete(lost)
    assert store.claim("agent-005") is None


def test_exhausted_head_among_many_ready_issues(store, clock):
    """The attempt limit is inside the pick: the best row is the best ELIGIBLE one."""
    for i in range(5):
        head = store.add(f"urgent {i}", priority="urgent", max_attempts=1)
        store.claim("agent-001", lease_seconds=1)
    ready = store.add("medium", priority="medium")
    clock.advance(2)
    assert store.claim("agent-002").number == ready.number
    counts = store.counts()
    assert (counts["dead"], counts["claimed"]) == (5, 1)
    assert store.get(head.number).status == "dead"


# -- retries, release, operator verbs -----------------------------------------


def test_failure_backs_off_then_dead_after_max_attempts_with_last_error(store, clock):
    issue = store.add("flaky", max_attempts=4)  # backoff 30 s, doubling per attempt
    for attempt, backoff in ((1, 30), (2, 60), (3, 120)):
        claim = store.claim("agent-001")
        assert claim.issue.attempts == attempt
        failed = store.fail(claim, f"error {attempt}")
        assert failed.status == "failed" and failed.error == f"error {attempt}"
        assert failed.due_at == clock.now + backoff
        clock.advance(backoff - 0.5)
        assert store.claim("agent-002") is None, "claimed during its backoff"
        clock.advance(0.5)
    last = store.claim("agent-003")
    dead = store.fail(last, "error 4\nwith a traceback")

    assert dead.status == "dead" and dead.attempts == 4
    assert dead.error == "error 4\nwith a traceback"
    clock.advance(10_000)
    assert store.claim("agent-004") is None
    assert [k for k in kinds(store, issue.number) if k != "claimed"] == ["added", "failed", "failed", "failed", "dead"]


def test_graceful_release_refunds_the_attempt(store, clock):
    issue = store.add("interrupted by a shutdown", max_attempts=1)
    for _ in range(5):  # more releases than attempts: never dead
        claim = store.claim("agent-001")
        released = store.release(claim)
        assert released.status == "ready" and released.attempts == 0 and released.owner is None
    again = store.claim("agent-002")  # at once, no backoff
    assert again.number == issue.number and again.issue.attempts == 1
    assert again.token == 6


def test_release_agent_frees_its_claims_at_once_and_counts_the_attempt(store, clock):
    a, b, c = (store.add(t) for t in ("a", "b", "c"))
    store.add("last try", max_attempts=1)
    mine = [store.claim("agent-001", lease_seconds=900) for _ in range(2)]
    other = store.claim("agent-002", lease_seconds=900)
    last = store.claim("agent-001", lease_seconds=900)

    freed = store.release_agent("agent-001", reason="container gone")

    assert freed == sorted([m.number for m in mine] + [last.number])
    for m in mine:
        issue = store.get(m.number)
        assert (issue.status, issue.attempts, issue.owner, issue.lease_until) == ("ready", 1, None, None)
    assert store.get(last.number).status == "dead"
    assert store.get(last.number).error == "container gone on the last attempt"
    assert store.get(other.number).status == "claimed"
    assert [store.claim("agent-003").number for _ in range(2)] == [m.number for m in mine]
    for m in mine:
        with pytest.raises(LeaseLost):
            store.complete(m)
    assert store.release_agent("agent-001") == []


def test_release_stale_agents_frees_only_silent_agents(store, clock):
    for t in "abc":
        store.add(t)
    store.agent_heartbeat("agent-001", "working", now=clock.now - 100)
    store.agent_heartbeat("agent-002", "working")
    silent = store.claim("agent-001")
    alive = store.claim("agent-002")
    host = store.claim("host-process")  # no agent row: left alone

    assert store.release_stale_agents(stale_after=60) == {"agent-001": [silent.number]}
    assert store.get(silent.number).status == "ready"
    assert store.get(alive.number).status == "claimed"
    assert store.get(host.number).status == "claimed"
    assert store.release_stale_agents(stale_after=60) == {}


def test_claim_takes_over_a_silent_agents_issue_ahead_of_newer_ones(store, clock):
    old, newer = store.add("old"), store.add("newer")
    store.agent_heartbeat("agent-001", "working")
    dead = store.claim("agent-001")
    assert dead.number == old.number
    clock.advance(5)
    store.agent_heartbeat("agent-002", "idle")
    # silent for 5 s, threshold 6 s: not yet abandoned, the newer issue is next
    assert store.claim("agent-002", stale_after=6).number == newer.number
    store.add("newest")
    clock.advance(2)
    store.agent_heartbeat("agent-003", "idle")
    # silent for 7 s now: its issue is claimable at once, before the newest, lease or not
    again = store.claim("agent-003", stale_after=6)
    assert (again.number, again.token, again.issue.attempts) == (old.number, dead.token + 1, 2)
    assert again.lease_until > clock.now + 800  # the default lease is far from expired
    kinds = [(e.kind, e.worker) for e in store.events(old.number)][-2:]
    assert kinds == [("abandoned", "agent-001"), ("claimed", "agent-003")]
    # fencing holds: the presumed-dead holder changes nothing
    before = store.get(old.number)
    for verb in (lambda: store.complete(dead, {"branch": "b"}), lambda: store.fail(dead, "x"),
                 lambda: store.release(dead), lambda: store.renew(dead)):
        with pytest.raises(LeaseLost):
            verb()
    assert store.get(old.number) == before


def test_claim_stale_rule_is_off_without_stale_after_and_spares_live_and_host_workers(store, clock):
    a, b, c, d = (store.add(t) for t in "abcd")
    store.agent_heartbeat("agent-001", "working")
    silent = store.claim("agent-001")
    host = store.claim("host-process")  # no agent row: only its lease can expire
    store.agent_heartbeat("agent-002", "working")
    live = store.claim("agent-002")
    clock.advance(30)
    store.agent_heartbeat("agent-002", "working")
    assert store.claim("agent-009").number == d.number  # no stale_after: the old rule
    assert store.claim("agent-009", stale_after=6).number == silent.number
    assert store.claim("agent-009", stale_after=6) is None  # live agent and host worker keep theirs
    assert {store.get(n.number).owner for n in (host, live)} == {"host-process", "agent-002"}


def test_a_silent_agents_issue_on_its_last_attempt_goes_dead_not_around(store, clock):
    issue = store.add("fragile", max_attempts=1)
    store.agent_heartbeat("agent-001", "working")
    store.claim("agent-001")
    clock.advance(10)
    store.agent_heartbeat("agent-002", "idle")
    assert store.claim("agent-002", stale_after=6) is None
    dead = store.get(issue.number)
    assert (dead.status, dead.error) == ("dead", "agent heartbeat stale on the last attempt")


def test_operator_block_and_retry(store, clock):
    issue = store.add("x", max_attempts=1)
    blocked = store.block(issue.number)
    assert blocked.status == "blocked"
    assert store.claim("agent-001") is None
    assert store.retry(issue.number).status == "ready"

    claim = store.claim("agent-001")
    with pytest.raises(Conflict, match="claimed by agent-001"):
        store.block(issue.number)
    with pytest.raises(Conflict):
        store.retry(issue.number)
    store.fail(claim, "boom")
    assert store.get(issue.number).status == "dead"

    retried = store.retry(issue.number)
    assert (retried.status, retried.attempts, retried.error) == ("ready", 0, None)
    claim = store.claim("agent-002")
    assert claim.number == issue.number and claim.token == 2
    store.complete(claim)
    with pytest.raises(Conflict):
        store.block(issue.number)
    with pytest.raises(IssueNotFound):
        store.retry(999)
    with pytest.raises(IssueNotFound):
        store.block(999)
    assert kinds(store, issue.number).count("retry") == 2
    assert [e.worker for e in store.events(issue.number) if e.kind == "block"] == ["operator"]


# -- fencing --------------------------------------------------------------------


def _verbs(store, claim):
    return {
        "renew": lambda: store.renew(claim, lease_seconds=10),
        "complete": lambda: store.complete(claim, {"branch": "agent/001", "commit": "abc"}),
        "fail": lambda: store.fail(claim, "late failure"),
        "release": lambda: store.release(claim),
    }


def _row(store, number):
    """The raw row, every column (the store's bookkeeping too)."""
    if not isinstance(store, IssueStore):
        return store._read("SELECT * FROM issues WHERE number = CAST(:n AS bigint)", {"n": number})
    with sqlite3.connect(store.path) as con:
        return con.execute("SELECT * FROM issues WHERE number = ?", (number,)).fetchone()


@pytest.mark.parametrize("verb", ["renew", "complete", "fail", "release"])
@pytest.mark.parametrize("then", ["reclaimed", "completed by the new holder", "released by agent"])
def test_a_stale_worker_can_change_nothing(store, clock, verb, then):
    issue = store.add("contested")
    stale = store.claim("agent-001", lease_seconds=10)
    if then == "released by agent":
        store.release_agent("agent-001")
    else:
        clock.advance(11)
        fresh = store.claim("agent-002", lease_seconds=10)
        assert (fresh.number, fresh.token) == (stale.number, stale.token + 1)
        if then == "completed by the new holder":
            store.complete(fresh)
    before, seen = _row(store, issue.number), len(store.events())

    with pytest.raises(LeaseLost, match=f"#{issue.number}.*{verb} refused"):
        _verbs(store, stale)[verb]()

    assert _row(store, issue.number) == before
    refused = store.events()[seen:]
    assert [(e.kind, e.worker, e.token, e.issue) for e in refused] == [
        (f"refused-{verb}", "agent-001", stale.token, issue.number)]
    assert f"stale token {stale.token}" in refused[0].detail


def test_the_new_holder_is_unaffected_by_the_stale_one(store, clock):
    store.add("contested")
    stale = store.claim("agent-001", lease_seconds=10)
    clock.advance(11)
    fresh = store.claim("agent-002", lease_seconds=10)
    for call in _verbs(store, stale).values():
        with pytest.raises(LeaseLost):
            call()
    fresh = store.renew(fresh, lease_seconds=10)
    done = store.complete(fresh, {"branch": "agent/002", "commit": "f00", "duration": 1.5})
    assert (done.status, done.owner, done.branch, done.commit, done.duration) == (
        "done", "agent-002", "agent/002", "f00", 1.5)
    assert [(e.kind, e.token) for e in store.events() if e.kind in ("done", "claimed", "expired")] == [
        ("claimed", 1), ("expired", 1), ("claimed", 2), ("done", 2)]


def test_renew_extends_only_a_live_lease(store, clock):
    store.add("x")
    claim = store.claim("agent-001", lease_seconds=10)
    clock.advance(9)
    claim = store.renew(claim, lease_seconds=10)
    assert claim.lease_until == clock.now + 10
    clock.advance(9)
    assert store.claim("agent-002") is None  # renewed: still held
    clock.advance(1)  # exactly at lease_until: expired
    with pytest.raises(LeaseLost):
        store.renew(claim)
    assert kinds(store)[-1] == "refused-renew"
    assert store.claim("agent-002").token == claim.token + 1  # and claimable at that instant


def test_an_expired_lease_nobody_reclaimed_can_still_be_finished(store, clock):
    """Documented: the holder is the only one with that token."""
    store.add("slow but alone")
    claim = store.claim("agent-001", lease_seconds=10)
    clock.advance(100)
    assert store.complete(claim).status == "done"


def test_complete_with_an_unknown_result_field_changes_nothing(store):
    store.add("x")
    claim = store.claim("agent-001")
    with pytest.raises(InvalidInput, match="unknown result field"):
        store.complete(claim, {"branch": "b", "sha": "123"})
    assert store.get(claim.number).status == "claimed"


def test_fenced_call_on_a_missing_issue_is_refused(store):
    store.add("x")
    claim = store.claim("agent-001")
    ghost = issues.Claim(issue=claim.issue.__class__(**{**claim.issue.to_dict(), "number": 42}),
                         token=1, worker="agent-001", lease_until=claim.lease_until)
    with pytest.raises(LeaseLost):
        store.complete(ghost)
    assert store.events()[-1].detail == "issue does not exist"


# -- crash: SIGKILL between claim and complete -----------------------------------

CLAIM_AND_HANG = textwrap.dedent("""
    import sys, time
    from parallel_autopilot.issues import open_store
    store = open_store(sys.argv[1])
    claim = store.claim(sys.argv[2], lease_seconds=2.0)
    print(claim.number, claim.token, repr(claim.issue.claimed_at), repr(claim.lease_until), flush=True)
    time.sleep(600)
""")


def _claim_then_sigkill(path, worker):
    child = subprocess.Popen([sys.executable, "-c", CLAIM_AND_HANG, str(path), worker],
                             stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line, "the child did not claim"
    finally:
        child.kill()  # SIGKILL: no cleanup code of the child runs
        child.wait(timeout=10)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    number, token, claimed_at, lease_until = line.split()
    return int(number), int(token), float(claimed_at), float(lease_until)


def _integrity(target):
    if is_url(target):
        return "ok"  # PostgreSQL's own business: a killed client cannot damage its files
    path = str(target) if str(target).endswith(".db") else os.path.join(target, "autopilot.db")
    with sqlite3.connect(path) as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0]


def test_sigkilled_worker_issue_is_claimable_after_its_lease_expires(queue_target):
    path = queue_target
    with open_store(path) as store:
        store.add("killed mid-work")
        number, token, claimed_at, lease_until = _claim_then_sigkill(path, "agent-007")
        assert lease_until == pytest.approx(claimed_at + 2.0)
        held = store.get(number)
        assert (held.status, held.owner, held.token) == ("claimed", "agent-007", token)

        assert store.claim("agent-008", now=lease_until - 0.01) is None
        rescued = store.claim("agent-008", now=lease_until + 0.01)

        assert (rescued.number, rescued.token, rescued.issue.attempts) == (number, token + 1, 2)
        assert [e.worker for e in store.events(number) if e.kind == "expired"] == ["agent-007"]
    assert _integrity(path) == "ok"


def test_sigkilled_worker_issue_is_claimable_at_once_after_release_agent(queue_target):
    path = queue_target
    with open_store(path) as store:
        store.add("killed mid-work")
        number, token, claimed_at, lease_until = _claim_then_sigkill(path, "agent-007")
        soon = claimed_at + 0.1  # long before the lease expires
        assert store.claim("agent-008", now=soon) is None

        assert store.release_agent("agent-007", now=soon) == [number]
        rescued = store.claim("agent-008", now=soon)

        assert (rescued.number, rescued.token) == (number, token + 1)
        assert "released-agent" in kinds(store, number)
    assert _integrity(path) == "ok"


# -- schema, WAL, connections -----------------------------------------------------


@sqlite_only
def test_schema_is_versioned_and_wal_is_set(tmp_path):
    path = tmp_path / "state" / "autopilot.db"
    IssueStore(path).close()
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"issues", "events", "agents"} <= tables
    with IssueStore(path) as store:  # re-opening neither re-creates nor loses anything
        store.add("kept")
    with IssueStore(path) as store:
        assert [i.title for i in store.list()] == ["kept"]
        assert store._read("PRAGMA busy_timeout")[0][0] == 30_000


@sqlite_only
def test_a_new_migration_applies_once_and_a_failing_one_applies_nothing(tmp_path):
    path = tmp_path / "autopilot.db"
    with IssueStore(path) as store:
        store.add("old row")
    broken = "CREATE TABLE extra (x); CREATE TABLE issues (y)"  # second statement fails
    with pytest.raises(sqlite3.OperationalError):
        IssueStore(path, migrations=MIGRATIONS + [broken])
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'extra'").fetchone()[0] == 0

    newer = MIGRATIONS + ["ALTER TABLE issues ADD COLUMN labels TEXT"]
    IssueStore(path, migrations=newer).close()
    IssueStore(path, migrations=newer).close()  # already applied: not applied twice (it would fail)
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1
        assert con.execute("SELECT title, labels FROM issues").fetchall() == [("old row", None)]


@sqlite_only
def test_a_database_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "autopilot.db"
    IssueStore(path).close()
    with sqlite3.connect(path) as con:
        con.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(Conflict, match="newer"):
        IssueStore(path)


def _in_child(body):
    """Fork; run ``body()`` (its int is the exit code) in the child; return the child's exit code."""
    pid = os.fork()
    if pid == 0:  # the child: must never return into pytest
        code = 99
        try:
            signal.alarm(20)  # a deadlocked child dies instead of hanging the suite
            code = body()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


class TrackedConnection(sqlite3.Connection):
    """A connection a test can hold a weak reference to (to see whether it was dropped)."""


@sqlite_only
def test_store_used_after_fork_reconnects(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite3, "connect", functools.partial(sqlite3.connect, factory=TrackedConnection))
    path = tmp_path / "autopilot.db"
    store = IssueStore(path)
    store.add("for the child")
    parent_conn = weakref.ref(store._conn)  # only the store holds it strongly
    parent_conn_id = id(store._conn)

    def child():
        claim = store.claim("child")
        store.complete(claim, {"branch": "from-child"})
        if store._conn is parent_conn():
            return 2
        # the parent's connection must be neither used nor closed here: dropping it
        # would close it, which runs SQLite's close path on the parent's locks
        gc.collect()
        return 0 if parent_conn() is not None else 3

    code = _in_child(child)

    assert code == 0, {2: "reused the parent's connection", 3: "closed the inherited connection"}.get(code, code)
    assert id(store._conn) == parent_conn_id  # the parent keeps its own
    done = store.get(1)
    assert (done.status, done.owner, done.branch) == ("done", "child", "from-child")
    store.add("parent goes on")
    assert store.claim("parent").number == 2
    store.close()
    assert _integrity(path) == "ok"


@sqlite_only
def test_fork_while_another_thread_holds_the_store_works_in_the_child(tmp_path):
    path = tmp_path / "autopilot.db"
    store = IssueStore(path)
    store.add("x")
    held, done = threading.Event(), threading.Event()

    def hold():
        with store._lock:  # as if mid-transaction in another thread at the moment of fork()
            held.set()
            done.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    try:
        code = _in_child(lambda: 0 if store.claim("child") is not None else 1)
    finally:
        done.set()
        thread.join()
    assert code == 0, f"the child failed or deadlocked on the parent's lock (exit {code})"
    assert store.get(1).owner == "child"
    store.close()


# -- filesystems ----------------------------------------------------------------

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
30 22 0:40 / {base}/mnt rw,relatime shared:7 master:3 - {fstype} source:/export rw
31 22 8:2 / {base}/mnt/local\\040disk rw,relatime - ext4 /dev/sdb1 rw
"""


@sqlite_only
@pytest.mark.parametrize("fstype", ["nfs", "nfs4", "cifs", "smb3", "9p", "virtiofs", "fuse",
                                    "fuse.sshfs", "fuse.grpcfuse", "fuseblk", "fakeowner", "vboxsf"])
def test_check_filesystem_refuses_network_and_fuse(tmp_path, fstype):
    base = os.path.realpath(tmp_path)
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO.format(base=base, fstype=fstype))

    with pytest.raises(UnsafeFilesystem) as err:
        check_filesystem(os.path.join(base, "mnt", "repo", ".autopilot"), str(mountinfo))
    message = str(err.value)
    assert "\n" not in message and fstype in message and "autopilot.state_dir" in message
    # the longest mount point wins: a local disk mounted inside it is fine
    check_filesystem(os.path.join(base, "mnt", "local disk", ".autopilot"), str(mountinfo))
    # and a sibling whose name merely starts alike is not inside it
    check_filesystem(os.path.join(base, "mntx", ".autopilot"), str(mountinfo))
    assert filesystem_type(os.path.join(base, "mntx"), str(mountinfo)) == "ext4"


@sqlite_only
@pytest.mark.parametrize("fstype", ["ext4", "xfs", "btrfs", "overlay", "tmpfs", "zfs"])
def test_check_filesystem_accepts_local_disks_and_this_machine(tmp_path, fstype):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO.format(base=os.path.realpath(tmp_path), fstype=fstype))
    check_filesystem(tmp_path / "mnt" / ".autopilot", str(mountinfo))
    check_filesystem(tmp_path)  # the real /proc/self/mountinfo
    check_filesystem(tmp_path, str(tmp_path / "no-such-mountinfo"))  # no /proc: cannot tell, allowed


@sqlite_only
def test_store_refuses_an_unsafe_state_directory(tmp_path, monkeypatch):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO.format(base=os.path.realpath(tmp_path), fstype="virtiofs"))
    monkeypatch.setattr(sqlitestore, "check_filesystem",
                        lambda d: check_filesystem(d, str(mountinfo)))
    with pytest.raises(UnsafeFilesystem, match="virtiofs"):
        IssueStore(tmp_path / "mnt" / ".autopilot" / "autopilot.db")
    assert not (tmp_path / "mnt" / ".autopilot" / "autopilot.db").exists()


# -- reading ------------------------------------------------------------------------


def test_list_counts_and_events(store, clock):
    a = store.add("a", priority="low")
    b = store.add("b", priority="urgent")
    store.complete(store.claim("agent-001"))
    assert [i.number for i in store.list()] == [a.number, b.number]
    assert [i.number for i in store.list("done")] == [b.number]
    assert [i.number for i in store.list(["ready", "done"])] == [b.number, a.number]
    assert store.counts() == {"ready": 1, "claimed": 0, "done": 1, "failed": 0, "dead": 0, "blocked": 0,
                              "empty": 0, "merged": 0, "rejected": 0, "over_budget": 0}
    with pytest.raises(InvalidInput, match="unknown status 'bogus'"):
        store.list("bogus")
    assert [e.kind for e in store.events(limit=2)] == ["claimed", "done"]
    assert kinds(store, a.number) == ["added"]
    with pytest.raises(IssueNotFound):
        store.get(99)


def test_add_many_is_all_or_nothing(store):
    store.add("exists", number=5)
    with pytest.raises(Conflict, match="#5 already exists"):
        store.add_many([{"title": "fine"}, {"title": "clash", "number": 5}])
    with pytest.raises(InvalidInput, match="issue 2"):
        store.add_many([{"title": "fine"}, {"title": "bad", "priority": "whenever"}])
    assert [i.number for i in store.list()] == [5]
    assert store.add("next").number == 6


@sqlite_only
def test_a_version_1_database_upgrades_and_keeps_its_audit_trail(tmp_path):
    from support.clock import T0

    path = tmp_path / "autopilot.db"
    with IssueStore(path, migrations=MIGRATIONS[:1]) as old, old.transaction() as conn:  # as version 1 wrote it
        number = conn.execute("""INSERT INTO issues (title, priority, rank, due_at, created_at, updated_at)
                                 VALUES ('from before', 'medium', 2, ?, ?, ?)""", (T0, T0, T0)).lastrowid
        conn.execute("INSERT INTO events (at, issue, kind) VALUES (?, ?, 'added')", (T0, number))
    with IssueStore(path) as store:
        claim = store.claim("agent-001", now=T0 + 1)
        store.complete(claim, {"branch": "b"}, now=T0 + 2)
        kinds = [(e.kind, e.worker, e.token) for e in store.events(claim.number)]
        upgraded = store.get(claim.number)
    assert kinds == [("added", None, None), ("claimed", "agent-001", 1), ("done", "agent-001", 1)]
    assert (upgraded.title, upgraded.status, upgraded.completed_at) == ("from before", "done", T0 + 2)


# -- verified work and the merge queue's verbs (both backends) ------------------

def test_empty_fail_with_feedback_merged_and_rejected(store, clock):
    a, b, c, d = (store.add(t) for t in ("no change", "red", "good", "conflicts"))
    claim = store.claim("agent-001")
    empty = store.empty(claim, {"branch": "autopilot/issue-1", "duration": 1.0, "check_status": "none"})
    assert (empty.status, empty.commit, empty.error) == ("empty", None, "the attempt changed nothing")
    with pytest.raises(LeaseLost):
        store.empty(claim)  # fenced like every ending

    red = store.claim("agent-001")
    failed = store.fail(red, "check failed (exit code 1)", feedback="`pytest` exit code 1:\nFAILED test_x",
                        check={"check_status": "failed", "check_duration": 2.5, "check_output": "FAILED test_x"})
    assert (failed.status, failed.feedback, failed.check_status, failed.check_output) == (
        "failed", "`pytest` exit code 1:\nFAILED test_x", "failed", "FAILED test_x")

    good = store.claim("agent-002")
    store.complete(good, {"branch": "autopilot/issue-3", "commit": "c" * 40, "check_status": "passed",
                          "usage": {"input_tokens": 10, "output_tokens": 2}})
    with pytest.raises(Conflict):
        store.mark_merged(c.number, "f" * 40, "m" * 40)  # not at that commit: left alone
    merged = store.mark_merged(c.number, "c" * 40, "m" * 40)
    assert (merged.status, merged.merge_commit, merged.usage) == ("merged", "m" * 40,
                                                                  {"input_tokens": 10, "output_tokens": 2})

    clash = store.claim("agent-002")
    assert clash.number == d.number
    store.complete(clash, {"branch": "autopilot/issue-4", "commit": "d" * 40})
    requeued = store.reject(d.number, "d" * 40, "conflict in shapes.py", requeue=True)
    assert (requeued.status, requeued.owner, requeued.feedback) == ("ready", None, "conflict in shapes.py")
    again = store.claim("agent-003")
    assert again.number == d.number and again.issue.feedback == "conflict in shapes.py"
    store.complete(again, {"branch": "autopilot/issue-4", "commit": "e" * 40})
    rejected = store.reject(d.number, "e" * 40, "conflict in shapes.py")
    assert (rejected.status, rejected.error) == ("rejected", "conflict in shapes.py")
    assert [e.kind for e in store.events(d.number)].count("rejected") == 2
    for number in (a.number, d.number):  # empty and rejected can be retried by hand
        assert store.retry(number).status == "ready"


def test_review_verbs_priority_send_back_dismiss_and_record_name_who_did_it(store, clock):
    """Issue 22: the verbs behind the GUI's review, on both backends, each in the trail with its actor."""
    issue = store.add_many([{"title": "x", "max_attempts": 1}], actor="gui")[0]
    assert store.set_priority(issue.number, "urgent", actor="cli:ann").priority == "urgent"
    with pytest.raises(InvalidInput, match="priority 'soon' is not one of"):
        store.set_priority(issue.number, "soon")
    claim = store.claim("agent-001")
    with pytest.raises(Conflict, match="claimed by agent-001"):
        store.send_back(issue.number, "again")
    store.complete(claim, {"commit": "c" * 40})
    with pytest.raises(InvalidInput, match="needs a note"):
        store.send_back(issue.number, "  ")
    back = store.send_back(issue.number, "  cover the edge case  ", actor="gui")
    # its one attempt is used: a person's send-back grants one more
    assert (back.status, back.feedback, back.attempts, back.max_attempts) == ("ready", "cover the edge case", 1, 2)
    claim = store.claim("agent-002")
    assert claim.issue.feedback == "cover the edge case"
    store.complete(claim, {"commit": "d" * 40})
    assert store.dismiss(issue.number, "not wanted", actor="gui").status == "rejected"
    assert store.get(issue.number).error == "not wanted"
    with pytest.raises(Conflict):
        store.dismiss(issue.number)  # rejected already
    event = store.record(issue.number, "merge-requested", "gui")
    assert (event.issue, event.kind, event.worker) == (issue.number, "merge-requested", "gui")
    assert store.record(None, "merge-loop-started", "gui").issue is None
    with pytest.raises(IssueNotFound):
        store.record(999, "merge-requested", "gui")
    assert [(e.kind, e.worker) for e in store.events(issue.number)] == [
        ("added", "gui"), ("priority", "cli:ann"), ("claimed", "agent-001"), ("done", "agent-001"),
        ("sent-back", "gui"), ("claimed", "agent-002"), ("done", "agent-002"), ("rejected", "gui"),
        ("merge-requested", "gui")]
