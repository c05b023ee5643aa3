"""What is PostgreSQL's own in the PostgreSQL store: schema and migrations, the database's
clock, URLs and passwords, fork, and connection loss. The shared semantics are tested
against both backends in test_issues.py, test_issues_statemachine.py and test_issues_hammer.py.

Against the session's real server (conftest.pg_cluster); connection loss against a
server of the test's own, restarted or cutting the store's session.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import pg8000
import pg8000.native
import pytest

from parallel_autopilot import config
from parallel_autopilot.bench import pgcluster
from parallel_autopilot.issues import postgres as pgstore
from parallel_autopilot.errors import Conflict, InvalidInput, LeaseLost, QueueUnavailable
from parallel_autopilot.issues import IssueStore, open_store
from parallel_autopilot.issues.postgres import PgIssueStore, connect_options, redact


def _sql(url, statement, **params):
    con = pg8000.native.Connection(**connect_options(url))
    try:
        return con.run(statement, **params)
    finally:
        con.close()


def _columns(url, table):
    return {r[0]: r[1] for r in _sql(url, "SELECT column_name, data_type FROM information_schema.columns "
                                          "WHERE table_name = :t", t=table)}


# -- one public API ------------------------------------------------------------------------


def test_the_public_api_is_the_sqlite_stores_verb_for_verb():
    """Same names, same parameters and defaults; ``transaction()`` alone differs: it hands
    out a raw sqlite3 connection, which has no PostgreSQL equivalent behind the same API."""
    import inspect

    sqlite_api = {n: inspect.signature(f) for n, f in inspect.getmembers(IssueStore, inspect.isfunction)
                  if not n.startswith("_")}
    pg_api = {n: inspect.signature(f) for n, f in inspect.getmembers(PgIssueStore, inspect.isfunction)
              if not n.startswith("_")}
    assert set(sqlite_api) - set(pg_api) == {"transaction"}
    assert {n: s for n, s in sqlite_api.items() if n != "transaction"} == {n: pg_api[n] for n in sqlite_api
                                                                           if n != "transaction"}


# -- open_store, URLs, passwords ----------------------------------------------------


def test_open_store_picks_the_backend_from_the_target(tmp_path, pg_url):
    with open_store(tmp_path / "state") as a, open_store(tmp_path / "other.db") as b, open_store(pg_url) as c:
        assert isinstance(a, IssueStore) and a.path == tmp_path / "state" / "autopilot.db"
        assert isinstance(b, IssueStore) and b.path == tmp_path / "other.db"
        assert isinstance(c, PgIssueStore) and c.url == pg_url


def test_url_forms_and_the_password_never_shown(monkeypatch):
    opts = connect_options("postgresql://app:pw%40x@db.example:6000/queue?application_name=ws1")
    assert {k: opts[k] for k in ("user", "password", "host", "port", "database", "application_name")} == {
        "user": "app", "password": "pw@x", "host": "db.example", "port": 6000, "database": "queue",
        "application_name": "ws1"}
    assert connect_options("postgresql://app@%2Frun%2Fpg:5433/q")["unix_sock"] == "/run/pg/.s.PGSQL.5433"
    assert connect_options("postgres:///q?host=/run/pg")["unix_sock"] == "/run/pg/.s.PGSQL.5432"
    monkeypatch.setenv("PGPASSWORD", "from-env")
    assert connect_options("postgresql://app@h/q")["password"] == "from-env"
    assert redact("postgresql://app:secret@db.example:6000/q") == "postgresql://app@db.example:6000/q"
    with pytest.raises(InvalidInput, match="unsupported parameter") as err:
        connect_options("postgresql://app:secret@h/q?sslmode=require")
    assert "secret" not in str(err.value)


def test_an_unreachable_server_is_one_line_without_the_password(tmp_path):
    lines = []
    url = f"postgresql://app:secret@/q?host={tmp_path}"  # no server listens there
    with pytest.raises(QueueUnavailable) as err:
        PgIssueStore(url, reconnect_seconds=0.3, on_reconnect=lines.append)
    message = str(err.value)
    assert "\n" not in message and "secret" not in message and "autopilot.queue" in message
    assert f"postgresql://app@/q?host={tmp_path}" in message
    assert len(lines) == 1 and "secret" not in lines[0]


def test_a_database_that_does_not_exist_is_one_line_at_once(pg_url):
    database = connect_options(pg_url)["database"]
    url = pg_url.replace(f"postgres@/{database}?", "postgres:secret@/no_such_db?")
    started = time.monotonic()
    with pytest.raises(QueueUnavailable, match='database "no_such_db" does not exist') as err:
        PgIssueStore(url)
    assert time.monotonic() - started < 5  # not retried as if the server were away
    assert "secret" not in str(err.value) and "autopilot.queue" in str(err.value)


def test_the_queue_setting_from_file_and_environment_and_refused_when_not_a_url(git_repo, monkeypatch, pg_url):
    assert config.load(cwd=git_repo).queue_target == str(git_repo.resolve() / ".autopilot")
    (git_repo / "invoke.yaml").write_text(f"autopilot:\n  queue: '{pg_url}'\n")
    assert config.load(cwd=git_repo).queue_target == pg_url
    secret = pg_url.replace("postgres@", "postgres:hunter2@")
    monkeypatch.setenv("INVOKE_AUTOPILOT_QUEUE", secret)
    s = config.load(cwd=git_repo)
    assert s.queue == secret and s.as_dict()["queue"] == pg_url  # shown without the password
    monkeypatch.setenv("INVOKE_AUTOPILOT_QUEUE", "/srv/queue.db")
    with pytest.raises(InvalidInput, match="not a postgresql:// URL"):
        config.load(cwd=git_repo)


def test_issue_tasks_use_the_configured_postgresql_queue(git_repo, pg_url):
    import shutil
    import subprocess

    program = shutil.which("parallel-autopilot")
    if program is None:
        pytest.skip("the console program is not installed (pip install -e .)")
    env = {**os.environ, "INVOKE_AUTOPILOT_QUEUE": pg_url}
    out = subprocess.run([program, "issues.add", "--title", "shared"], cwd=git_repo, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    listed = subprocess.run([program, "issues.list"], cwd=git_repo, env=env, capture_output=True, text=True,
                            timeout=60).stdout
    assert "shared" in listed
    assert not (git_repo / ".autopilot" / "autopilot.db").exists()  # nothing went to SQLite
    with open_store(pg_url) as pg:
        assert [i.title for i in pg.list()] == ["shared"]


# -- schema -------------------------------------------------------------------------


def test_schema_is_versioned_and_covers_every_sqlite_column(tmp_path, pg_url):
    PgIssueStore(pg_url).close()
    assert _sql(pg_url, "SELECT version FROM autopilot_schema") == [[len(pgstore.MIGRATIONS)]]
    with IssueStore(tmp_path / "autopilot.db") as lite, sqlite3.connect(lite.path) as con:
        for table in ("issues", "events", "agents"):
            sqlite_columns = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
            # a column added to the SQLite schema needs its PostgreSQL migration too
            assert sqlite_columns <= set(_columns(pg_url, table)), table
    with PgIssueStore(pg_url) as store:  # re-opening neither re-creates nor loses anything
        store.add("kept")
    with PgIssueStore(pg_url) as store:
        assert [i.title for i in store.list()] == ["kept"]


def test_a_failing_migration_applies_nothing_and_a_new_one_applies_once(pg_url):
    with PgIssueStore(pg_url) as store:
        store.add("old row")
    good = pgstore.MIGRATIONS
    with pytest.raises(pg8000.DatabaseError, match="already exists"):
        PgIssueStore(pg_url, migrations=good + [["CREATE TABLE extra (x int)", "CREATE TABLE issues (y int)"]])
    # transactional DDL: the first statement of the failed migration is gone too
    assert _sql(pg_url, "SELECT version, to_regclass('extra') IS NULL FROM autopilot_schema") == [[len(good), True]]

    newer = good + [["ALTER TABLE issues ADD COLUMN labels text"]]
    PgIssueStore(pg_url, migrations=newer).close()
    PgIssueStore(pg_url, migrations=newer).close()  # already applied: not applied twice (it would fail)
    assert _sql(pg_url, "SELECT title, labels FROM issues") == [["old row", None]]
    assert _sql(pg_url, "SELECT version FROM autopilot_schema") == [[len(good) + 1]]


def test_a_store_already_open_keeps_working_when_another_host_adds_a_column(pg_url):
    """Hosts upgrade one at a time: a running agent's prepared statements outlive a migration."""
    old = PgIssueStore(pg_url)
    old.add("before")
    claim = old.claim("agent-001")  # its SELECT * / RETURNING * statements are prepared now
    old.get(claim.number)
    upgraded = pgstore.MIGRATIONS + [["ALTER TABLE issues ADD COLUMN labels text"]]
    PgIssueStore(pg_url, migrations=upgraded).close()  # the upgraded host migrates
    assert old.get(claim.number).status == "claimed"  # a statement prepared before the migration
    done = old.complete(claim, {"branch": "b"})
    assert (done.status, old.get(claim.number).status) == ("done", "done")
    assert [e.kind for e in old.events(claim.number)] == ["added", "claimed", "done"]
    old.close()


def test_a_database_of_a_newer_version_is_refused(pg_url):
    PgIssueStore(pg_url).close()
    _sql(pg_url, "UPDATE autopilot_schema SET version = version + 1")
    with pytest.raises(Conflict, match="newer"):
        PgIssueStore(pg_url)


# -- the clock ------------------------------------------------------------------------


def test_the_lease_clock_is_the_databases_not_the_hosts(pg_url, monkeypatch):
    """Hosts' clocks differ: a host whose clock is a day ahead still leases by the server's."""
    with PgIssueStore(pg_url) as store:
        store.add("x")
        monkeypatch.setattr(time, "time", lambda: 1_900_000_000.0)  # this host's clock is far off
        claim = store.claim("agent-001", lease_seconds=60)
        server = float(_sql(pg_url, "SELECT extract(epoch FROM now())")[0][0])
    assert abs(claim.issue.claimed_at - server) < 30
    assert claim.lease_until == pytest.approx(claim.issue.claimed_at + 60)
    assert store.get(claim.number).status == "claimed"


# -- fork -----------------------------------------------------------------------------


def test_a_store_used_after_fork_opens_its_own_session_and_leaves_the_parents(pg_url):
    store = PgIssueStore(pg_url)
    store.add("for the child")
    backend = lambda: store._read("SELECT pg_backend_pid() AS pid")[0]["pid"]  # noqa: E731
    parent_backend = backend()
    pid = os.fork()
    if pid == 0:  # the child: must never return into pytest
        code = 99
        try:
            signal.alarm(20)
            claim = store.claim("child")
            store.complete(claim, {"branch": "from-child"})
            code = 0 if backend() != parent_backend else 2  # its own session, not the parent's
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # the parent's session survived the child (which never closed it) and goes on
    assert store.get(1).branch == "from-child"
    store.add("parent goes on")
    assert store.claim("parent").number == 2
    assert backend() == parent_backend  # the same session: not cut by the child, not reopened
    store.close()


# -- connection loss -----------------------------------------------------------------


@pytest.fixture
def own_cluster():
    """A server of this test's own (to restart, or to cut sessions on)."""
    problem = pgcluster.unavailable()
    if problem:
        pytest.skip(f"PostgreSQL: {problem}")
    with pgcluster.Cluster() as cluster:
        yield cluster


def test_the_store_reconnects_after_a_restart_logging_one_line(own_cluster):
    lines = []
    url = own_cluster.create_database()
    store = PgIssueStore(url, on_reconnect=lines.append)
    store.add("before")
    claim = store.claim("agent-001", lease_seconds=600)
    own_cluster.restart()
    done = store.complete(claim, {"branch": "b"})  # the first call after the restart
    assert done.status == "done"
    assert [e.kind for e in store.events(claim.number)] == ["added", "claimed", "done"]
    assert len(lines) == 1 and "unreachable" in lines[0], lines
    store.add("after")
    assert len(lines) == 1
    store.close()


def test_a_server_that_stays_away_ends_in_one_line_after_the_window(own_cluster):
    url = own_cluster.create_database()
    store = PgIssueStore(url, reconnect_seconds=1.0, on_reconnect=lambda line: None)
    own_cluster.stop()
    started = time.monotonic()
    with pytest.raises(QueueUnavailable, match="cannot reach the issue queue"):
        store.counts()
    assert time.monotonic() - started < 10
    own_cluster.start()
    assert store.counts()["ready"] == 0  # and it comes back by itself


class ReplyLost(PgIssueStore):
    """Stand-in BESIDE the real restart tests: the server runs the statement, then the
    connection dies before the reply arrives (the one case a restart rarely hits).
    ``_exec`` is where every statement meets the server; armed, this store cuts its own
    session right after the first statement holding ``marker`` ran."""

    def __init__(self, url, cluster, marker, **options):
        self.cluster, self.marker = cluster, marker
        self.armed = False
        super().__init__(url, **options)

    def _exec(self, conn, sql, **params):
        result = super()._exec(conn, sql, **params)
        if self.armed and self.marker in sql:
            self.armed = False
            # the statement committed (autocommit); now the session is cut under the store
            _sql(self.cluster.url(conn_db(self)),
                 "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE application_name = 'parallel-autopilot' AND pid <> pg_backend_pid()")
            raise pg8000.InterfaceError("network error")
        return result


def conn_db(store):
    return store._options["database"]


@pytest.mark.parametrize("verb", ["claim", "complete", "fail", "release"])
def test_a_fenced_write_whose_reply_was_lost_is_not_done_twice(own_cluster, verb):
    url = own_cluster.create_database()
    markers = {"claim": "claim_nonce = :nonce", "complete": "status = 'done'", "fail": "THEN 'dead' ELSE 'failed'",
               "release": "transition = 'released'"}
    store = ReplyLost(url, own_cluster, markers[verb], on_reconnect=lambda line: None)
    store.add("once only")
    claim = None if verb == "claim" else store.claim("agent-001")
    store.armed = True

    reply_lost = store
    if verb == "claim":
        claim = store.claim("agent-001")
        assert claim is not None and claim.token == 1
        assert store.claim("agent-002") is None  # the claim was taken once, and it is ours
    else:
        issue = getattr(store, verb)(claim, *(["boom"] if verb == "fail" else []))
        assert issue.token == claim.token
    assert not reply_lost.armed, "the reply was never lost: the stand-in did not find its statement"
    kinds = [e.kind for e in store.events()]
    assert kinds.count({"claim": "claimed", "complete": "done", "fail": "failed",
                        "release": "released"}[verb]) == 1, kinds
    assert not [k for k in kinds if k.startswith("refused")], kinds
    if verb != "claim":
        with pytest.raises(LeaseLost):  # and the verb, repeated for real, is refused as it should be
            store.complete(claim)
    store.close()
