"""The shared issue queue on PostgreSQL: one backlog for agents on many hosts.

The same public API and semantics as :class:`parallel_autopilot.issues.IssueStore`
(read its docstring first); what differs is how PostgreSQL gives them:

- **Claim**: ONE statement (``PgIssueStore._CLAIM``, beside ``claim``; one round
  trip, one transaction): the abandoned issues whose attempts are used up become
  dead, and ONE UPDATE leases the best eligible issue, picked ``FOR UPDATE SKIP
  LOCKED`` (priority then age, attempts below the limit inside the pick), so
  concurrent claimers on many hosts never wait for each other nor take the same row.
- **Fencing**: every renew/complete/fail/release is one ``UPDATE ... WHERE number
  AND token AND status = 'claimed'``. Under READ COMMITTED a concurrent writer of
  the row makes PostgreSQL re-check that WHERE on the committed row, so a stale
  token matches nothing; the refusal is recorded and LeaseLost raised.
- **Clock**: the lease clock is the DATABASE's (``now()``, one value per
  transaction), never a host's: hosts' clocks differ. An explicit ``now=`` (or a
  ``clock`` given to the store, for tests) still wins.
- **Schema**: versioned in ``autopilot_schema``; migrations run in ONE transaction
  (PostgreSQL's DDL is transactional) under an advisory lock, so hosts starting
  together migrate once and a failing migration leaves nothing behind.
- **Hosts**: many workstations share the queue (``store.shared``), and agent ids
  repeat on each: an agent is (host, id). ``issues.host`` names the claiming
  agent's host, the agents table is keyed by (host, id); release_agent and the
  stale rule only ever match an agent's own host.
- **Connection loss** (a restart, a failover, a network cut): the store reconnects
  with backoff (one log line per outage) for up to ``reconnect_seconds``. A fenced
  write whose outcome is unknown is never sent twice blindly: the store first
  looks whether it took effect (its event with that token, or the claim's nonce).

Driver: pg8000 (pure Python; ``pip install 'parallel-autopilot[postgres]'``),
imported only when a store is opened.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
import uuid
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import Conflict, InvalidInput, IssueNotFound, LeaseLost, QueueUnavailable
from . import forksafe
from .fields import PRIORITIES, validate_fields, validate_result
from .records import (
    DEFAULT_BACKOFF_SECONDS, DEFAULT_LEASE_SECONDS, DEFAULT_MAX_ATTEMPTS, STATUSES, AgentRow, Claim, Event,
    Issue, agent_key, issue_from_row,
)
from .urls import redact

log = logging.getLogger(__name__)

DEFAULT_RECONNECT_SECONDS = 120.0
#: pg8000's one socket timeout: to connect, and for every reply. A network that swallows
#: packets stalls a call this long before the reconnect path takes over; a longer lock wait
#: counts as a lost connection (and is retried, fenced as any other).
DEFAULT_SOCKET_TIMEOUT = 30.0
ANALYZE_AFTER = 200  # issues added at once
#: pg_advisory_xact_lock keys: schema migration, issue numbering
_MIGRATE_LOCK, _NUMBER_LOCK = 0x5041_0001, 0x5041_0002

#: The one clock expression: an explicit ``now`` wins, else the server's (constant in a transaction).
NOW = "COALESCE(CAST(:now AS float8), CAST(EXTRACT(EPOCH FROM now()) AS float8))"

#: SQLSTATEs that mean "the connection is gone or the server is not serving (yet)".
_CONNECTION_CODES = {"08000", "08001", "08003", "08004", "08006", "57P01", "57P02", "57P03", "53300"}

MIGRATIONS: list[list[str]] = [
    # 1: the schema of the SQLite store's version 3, plus claim_nonce (how a claim whose
    # reply was lost with the connection is recognised after reconnecting)
    [
        """CREATE TABLE issues (
            number       bigint PRIMARY KEY,
            title        text NOT NULL,
            body         text NOT NULL DEFAULT '',
            priority     text NOT NULL CHECK (priority IN ('urgent','high','medium','low')),
            rank         integer NOT NULL,
            script       text,
            status       text NOT NULL DEFAULT 'ready'
                         CHECK (status IN ('ready','claimed','done','failed','dead','blocked',
                                           'empty','merged','rejected')),
            attempts     integer NOT NULL DEFAULT 0,
            max_attempts integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
            due_at       float8 NOT NULL,
            owner        text,
            token        bigint NOT NULL DEFAULT 0,
            lease_until  float8,
            heartbeat_at float8,
            claimed_at   float8,
            branch       text,
            commit_sha   text,
            duration     float8,
            error        text,
            created_at   float8 NOT NULL,
            updated_at   float8 NOT NULL,
            transition   text,
            actor        text,
            note         text,
            check_cmd    text,
            check_status text,
            check_duration float8,
            check_output text,
            feedback     text,
            completed_at float8,
            merge_commit text,
            merged_at    float8,
            usage        text,
            claim_nonce  text
        )""",
        # the pick walks only the open issues, in claim order
        """CREATE INDEX issues_pick ON issues (rank, created_at, number)
           WHERE status IN ('ready', 'failed', 'claimed')""",
        "CREATE INDEX issues_owner ON issues (owner) WHERE status = 'claimed'",
        "CREATE INDEX issues_nonce ON issues (claim_nonce) WHERE claim_nonce IS NOT NULL",
        """CREATE TABLE events (
            id     bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            at     float8 NOT NULL,
            issue  bigint,
            kind   text NOT NULL,
            worker text,
            token  bigint,
            detail text
        )""",
        "CREATE INDEX events_issue ON events (issue, id)",
        """CREATE TABLE agents (
            id           text PRIMARY KEY,
            state        text NOT NULL,
            issue        bigint,
            token        bigint,
            heartbeat_at float8 NOT NULL,
            started_at   float8 NOT NULL,
            incarnation  text,
            host         text,
            pid          integer
        )""",
        # every UPDATE of an issue that names a transition appends its event in the same statement
        """CREATE FUNCTION issues_transition() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               IF NEW.transition = 'claimed' AND OLD.status = 'claimed' THEN
                   INSERT INTO events (at, issue, kind, worker, token, detail)
                   VALUES (NEW.updated_at, NEW.number,
                           CASE WHEN OLD.lease_until <= NEW.updated_at THEN 'expired' ELSE 'abandoned' END,
                           OLD.owner, OLD.token, NULL);
               END IF;
               INSERT INTO events (at, issue, kind, worker, token, detail)
               VALUES (NEW.updated_at, NEW.number, NEW.transition, NEW.actor, NEW.token, NEW.note);
               RETURN NULL;
           END $$""",
        """CREATE TRIGGER issues_transition AFTER UPDATE ON issues
           FOR EACH ROW WHEN (NEW.transition IS NOT NULL) EXECUTE FUNCTION issues_transition()""",
        # The claim, one round trip and one transaction. First the abandoned issues whose
        # attempts are used up become dead (by number, as SQLite does, so the audit trail
        # reads the same on both); then ONE UPDATE leases the best eligible issue, picked
        # FOR UPDATE SKIP LOCKED: concurrent claimers on many hosts neither wait for each
        # other nor take the same row. The pick is one condition the partial index
        # issues_pick serves in claim order (an OR of the arms would sort every open issue).
        # Abandoned: claimed, and the lease expired or the owner's heartbeat is older than
        # p_stale_after seconds (NULL: only expiry counts).
        """CREATE FUNCTION autopilot_claim(p_now float8, p_stale_after float8, p_worker text,
                                           p_lease float8, p_nonce text)
           RETURNS SETOF issues LANGUAGE plpgsql AS $$
           DECLARE
               t_now float8 := COALESCE(p_now, CAST(EXTRACT(EPOCH FROM now()) AS float8));
               t_stale float8 := t_now - p_stale_after;
               r record;
           BEGIN
               FOR r IN SELECT number FROM issues
                        WHERE status = 'claimed' AND attempts >= max_attempts
                          AND (lease_until <= t_now OR owner IN (SELECT id FROM agents WHERE heartbeat_at < t_stale))
                        ORDER BY number FOR UPDATE SKIP LOCKED LOOP
                   UPDATE issues SET status = 'dead', lease_until = NULL, updated_at = t_now,
                          error = CASE WHEN lease_until <= t_now THEN 'lease expired on the last attempt'
                                       ELSE 'agent heartbeat stale on the last attempt' END,
                          transition = 'dead', actor = owner,
                          note = CASE WHEN lease_until <= t_now THEN 'lease expired' ELSE 'agent heartbeat stale' END
                   WHERE number = r.number;
               END LOOP;
               RETURN QUERY
               UPDATE issues i SET status = 'claimed', owner = p_worker, token = i.token + 1,
                      attempts = i.attempts + 1, lease_until = t_now + p_lease, heartbeat_at = t_now,
                      claimed_at = t_now, updated_at = t_now, transition = 'claimed', actor = p_worker,
                      note = 'attempt ' || (i.attempts + 1) || ' of ' || i.max_attempts, claim_nonce = p_nonce
               WHERE i.number = (
                   SELECT number FROM issues
                   WHERE status IN ('ready', 'failed', 'claimed') AND attempts < max_attempts
                     AND CASE WHEN status = 'claimed'
                              THEN lease_until <= t_now
                                   OR owner IN (SELECT id FROM agents WHERE heartbeat_at < t_stale)
                              ELSE due_at <= t_now END
                   ORDER BY rank, created_at, number
                   LIMIT 1
                   FOR UPDATE SKIP LOCKED)
               RETURNING i.*;
           END $$""",
    ],
    # 2: an agent waiting for a model's rate limit / quota to reset says until when (SQLite's 4)
    ["ALTER TABLE agents ADD COLUMN waiting_until float8"],
    # 3 (SQLite's 5): an agent's identity is (host, id), agent ids repeat on every host.
    # issues.host is the claiming agent's host; the agents table is keyed by (host, id);
    # rows that exist get :host, the migrating store's; the backfill is no event
    # (transition NULL).
    [
        "ALTER TABLE issues ADD COLUMN host text",
        "UPDATE issues SET host = :host, transition = NULL WHERE claimed_at IS NOT NULL",
        "UPDATE agents SET host = :host",
        "ALTER TABLE agents ALTER COLUMN host SET NOT NULL",
        "ALTER TABLE agents DROP CONSTRAINT agents_pkey",
        "ALTER TABLE agents ADD PRIMARY KEY (host, id)",
        "DROP INDEX issues_owner",
        "CREATE INDEX issues_owner ON issues (owner, host) WHERE status = 'claimed'",
        # the claim is one statement of the store's own now (PgIssueStore._CLAIM)
        "DROP FUNCTION autopilot_claim(float8, float8, text, float8, text)",
    ],
    # 4: a queue migrated to 3 by a first cut of it (bd9efff) got a host-aware stored claim: gone too
    ["DROP FUNCTION IF EXISTS autopilot_claim(float8, float8, text, float8, text, text)"],
]

_REFUSE = f"""
INSERT INTO events (at, issue, kind, worker, token, detail)
SELECT {NOW}, CAST(:number AS bigint), :kind, :worker, CAST(:token AS bigint),
       COALESCE((SELECT 'stale token ' || CAST(:token AS bigint) || '; issue is ' || status || ', token ' || token
                        || ' held by ' || COALESCE(owner, 'None')
                 FROM issues WHERE number = CAST(:number AS bigint)), 'issue does not exist')"""

_RELEASE_AGENT = f"""
UPDATE issues SET
       status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'ready' END,
       error = CASE WHEN attempts >= max_attempts THEN :reason ELSE error END,
       owner = CASE WHEN attempts >= max_attempts THEN owner END,
       lease_until = NULL, due_at = {NOW}, updated_at = {NOW},
       transition = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'released-agent' END,
       actor = :agent, note = :note
WHERE number = CAST(:number AS bigint) AND status = 'claimed' AND owner = :agent AND host = :host
RETURNING number"""


class _Uncertain(Exception):
    """A write whose COMMIT was sent when the connection broke: it may have happened."""


class _Replan(Exception):
    """A statement prepared before another host changed the schema: nothing ran; run it again."""


def connect_options(url: str) -> dict[str, Any]:
    """pg8000 keyword arguments for a ``postgresql://`` URL (libpq's forms).

    ``postgresql://user:pw@host:port/db``; a Unix socket directory as the host,
    URL-encoded (``postgresql://user@%2Frun%2Fpostgresql/db``) or as
    ``?host=/run/postgresql``. The password may instead come from ``PGPASSWORD``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise InvalidInput(f"{redact(url)} is not a postgresql:// URL: give postgresql://user@host/db")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"host", "port", "user", "password", "dbname", "application_name", "connect_timeout"}
    if unknown:
        raise InvalidInput(f"{redact(url)}: unsupported parameter(s) {', '.join(sorted(unknown))}: "
                           "use host, port, user, password, dbname, application_name, connect_timeout")
    try:
        port = int(query.get("port") or parts.port or 5432)
    except ValueError:
        raise InvalidInput(f"{redact(url)}: the port is not a number") from None
    host = query.get("host") or (unquote(parts.hostname) if parts.hostname else "")
    raw_host = parts.netloc.rpartition("@")[2]
    if "%2f" in raw_host.lower():  # a socket directory, URL-encoded (urlsplit lowercases hostname)
        host = unquote(raw_host.rsplit(":", 1)[0] if parts.port else raw_host)
    options: dict[str, Any] = {
        "user": query.get("user") or (unquote(parts.username) if parts.username else None)
                or os.environ.get("PGUSER") or "postgres",
        "database": query.get("dbname") or unquote(parts.path.lstrip("/")) or None,
        "password": query.get("password") or (unquote(parts.password) if parts.password else None)
                    or os.environ.get("PGPASSWORD"),
        "timeout": float(query.get("connect_timeout") or DEFAULT_SOCKET_TIMEOUT),
        "application_name": query.get("application_name") or "parallel-autopilot",
    }
    if not host or host.startswith("/"):
        options["unix_sock"] = f"{host or '/var/run/postgresql'}/.s.PGSQL.{port}"
    else:
        options["host"], options["port"] = host, port
    return options


def _connection_lost(err: BaseException) -> bool:
    import pg8000

    if isinstance(err, (OSError, EOFError)):
        return True
    if isinstance(err, pg8000.InterfaceError):
        # pg8000 says so for socket failures; other InterfaceErrors are bugs, not outages
        text = str(err)
        return isinstance(err.__cause__, OSError) or any(
            m in text for m in ("network error", "Can't create a connection", "connection is closed",
                                "unexpected message"))
    if isinstance(err, pg8000.DatabaseError) and err.args and isinstance(err.args[0], dict):
        return err.args[0].get("C") in _CONNECTION_CODES
    return False


_INHERITED = forksafe.INHERITED
_STORES: "weakref.WeakSet[PgIssueStore]" = weakref.WeakSet()
forksafe.reset_in_children(_STORES)


class PgIssueStore:
    """The shared issue queue in the PostgreSQL database at ``url``.

    ``host`` is the machine whose agents this store speaks for (default: this
    one's name). Thread-safe (one connection behind a lock); fork-safe (a child
    process opens its own connection and never touches the parent's).
    """

    #: Many hosts' agents claim from this queue.
    shared = True

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
        reconnect_seconds: float = DEFAULT_RECONNECT_SECONDS,
        on_reconnect: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        host: str | None = None,
    ):
        self.url = redact(url)
        self.host = host or socket.gethostname()
        self._options = connect_options(url)
        self.clock = clock  # None: the database's clock
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.reconnect_seconds = reconnect_seconds
        self.on_reconnect = on_reconnect or log.warning
        self._sleep = sleep
        self._lock = threading.RLock()
        self._conn = None
        self._pid = -1
        self._outage = False
        _STORES.add(self)
        self._retrying(lambda conn: None)  # connect and migrate now: a bad URL fails here

    def __repr__(self) -> str:
        return f"PgIssueStore({self.url!r})"

    # -- connection ---------------------------------------------------------

    def _discard_inherited(self) -> None:
        if self._conn is not None and self._pid != os.getpid():
            _INHERITED.append(self._conn)  # closing it would end the PARENT's session
            self._conn = None

    def _connect(self):
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self._discard_inherited()
        try:
            import pg8000.native
        except ImportError:
            raise InvalidInput("a postgresql:// queue needs the pg8000 driver: "
                               "pip install 'parallel-autopilot[postgres]'") from None
        try:
            conn = pg8000.native.Connection(**self._options)
        except pg8000.DatabaseError as err:
            if _connection_lost(err):
                raise
            # the server answered and said no: a wrong user, password or database is no outage
            raise QueueUnavailable(f"the issue queue {self.url} refused the connection ({_describe(err)}): "
                                   "check the user, password and database name in autopilot.queue") from None
        self._conn, self._pid = conn, os.getpid()
        self._migrate(conn)
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - it is broken already
                pass

    def _migrate(self, conn) -> None:
        rows = conn.run("SELECT to_regclass('autopilot_schema') IS NOT NULL")
        if rows[0][0]:
            version = conn.run("SELECT version FROM autopilot_schema")[0][0]
            self._check_version(version)
            if version == len(MIGRATIONS):
                return
        conn.run("BEGIN")
        try:
            # hosts starting together: one migrates, the others wait here, then find it done
            conn.run(f"SELECT pg_advisory_xact_lock({_MIGRATE_LOCK})")
            conn.run("CREATE TABLE IF NOT EXISTS autopilot_schema (version integer NOT NULL)")
            rows = conn.run("SELECT version FROM autopilot_schema")
            if not rows:
                conn.run("INSERT INTO autopilot_schema VALUES (0)")
            version = rows[0][0] if rows else 0
            self._check_version(version)
            for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    conn.run(statement, host=self.host)  # :host in a backfill (version 3)
                conn.run("UPDATE autopilot_schema SET version = :v", v=number)
            conn.run("COMMIT")
        except BaseException:
            self._rollback(conn)
            raise

    def _check_version(self, version: int) -> None:
        if version > len(MIGRATIONS):
            raise Conflict(
                f"{self.url} has schema version {version}, newer than this parallel-autopilot "
                f"knows ({len(MIGRATIONS)}): upgrade parallel-autopilot (and rebuild the agent image)"
            )

    @staticmethod
    def _rollback(conn) -> None:
        try:
            conn.run("ROLLBACK")
        except Exception:  # noqa: BLE001 - a lost connection has rolled back by itself
            pass

    def _retrying(self, op: Callable[[Any], Any], verify: Callable[[Any], Any] | None = None,
                  uncertain_ok: bool = True) -> Any:
        """Run ``op(conn)``; on a lost connection reconnect with backoff and run it again.

        Where ``op`` may have taken effect before the connection broke, ``verify(conn)``
        runs first after reconnecting: a non-None answer is the outcome, and ``op`` is
        not sent again. A transaction lost at COMMIT with ``uncertain_ok=False`` is
        not repeated (QueueUnavailable says so).
        """
        with self._lock:
            deadline = time.monotonic() + self.reconnect_seconds
            delay, sent = 0.05, False
            while True:
                try:
                    conn = self._connect()
                    if sent and verify is not None:
                        outcome = verify(conn)
                        if outcome is not None:
                            self._recovered()
                            return outcome
                    sent = True
                    result = op(conn)
                    self._recovered()
                    return result
                except _Replan:
                    continue  # the statement did not run: prepare it anew, no outage
                except _Uncertain as err:
                    self._drop()
                    if not uncertain_ok:
                        raise QueueUnavailable(
                            f"lost the connection to {self.url} while committing: the change may or may "
                            "not have been made; look (issues.list) before repeating it") from err.__cause__
                    self._wait(err.__cause__, deadline, delay)
                except Exception as err:  # noqa: BLE001 - only connection loss is retried
                    if not _connection_lost(err):
                        raise
                    self._drop()
                    self._wait(err, deadline, delay)
                delay = min(delay * 2, 2.0)

    def _wait(self, err: BaseException | None, deadline: float, delay: float) -> None:
        reason = _describe(err)
        if time.monotonic() + delay > deadline:
            self._outage = False
            raise QueueUnavailable(f"cannot reach the issue queue {self.url} ({reason}) for "
                                   f"{self.reconnect_seconds:.0f} s: start the server or fix autopilot.queue")
        if not self._outage:
            self._outage = True
            self.on_reconnect(f"issue queue {self.url} unreachable ({reason}): reconnecting with backoff")
        self._sleep(delay * random.uniform(0.7, 1.3))

    def _recovered(self) -> None:
        self._outage = False

    @contextmanager
    def _transaction(self, conn) -> Iterator[Any]:
        conn.run("BEGIN")
        try:
            yield conn
        except BaseException:
            self._rollback(conn)
            raise
        try:
            conn.run("COMMIT")
        except Exception as err:  # noqa: BLE001
            if _connection_lost(err):
                raise _Uncertain() from err
            raise

    @staticmethod
    def _exec(conn, sql: str, **params) -> tuple[list, list]:
        """Run a statement prepared once per connection (parsed and planned once); rows, column names."""
        import pg8000

        statements = conn.__dict__.setdefault("_autopilot_statements", {})
        statement = statements.get(sql)
        if statement is None:
            statement = statements[sql] = conn.prepare(sql)
        try:
            rows = statement.run(**params)
        except pg8000.DatabaseError as err:
            code = err.args[0].get("C") if err.args and isinstance(err.args[0], dict) else None
            if code == "0A000" and "cached plan" in str(err.args[0].get("M", "")):
                # "cached plan must not change result type": a migration made elsewhere added a
                # column under this connection's prepared SELECT * / RETURNING *
                statements.clear()
                raise _Replan() from err
            raise
        return rows or [], [c["name"] for c in statement.columns or ()]

    def _rows(self, conn, sql: str, **params) -> list[dict[str, Any]]:
        rows, names = self._exec(conn, sql, **params)
        return [dict(zip(names, row)) for row in rows]

    def _read(self, sql: str, **params) -> list[dict[str, Any]]:
        return self._retrying(lambda conn: self._rows(conn, sql, **params))

    def close(self) -> None:
        """Close this process's connection (an inherited one is left alone)."""
        with self._lock:
            self._discard_inherited()
            self._drop()

    def __enter__(self) -> "PgIssueStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _now(self, now: float | None) -> float | None:
        """An explicit time, the injected clock's, or None: the database's clock."""
        if now is not None:
            return float(now)
        return None if self.clock is None else float(self.clock())

    # -- adding -------------------------------------------------------------

    def add(self, title: str, body: str = "", priority: str = "medium", script: str | None = None,
            max_attempts: int | None = None, number: int | None = None, now: float | None = None,
            check: str | None = None) -> Issue:
        """Add one ready issue and return it."""
        fields = {"title": title, "body": body, "priority": priority, "script": script,
                  "max_attempts": max_attempts, "number": number, "check": check}
        return self.add_many([fields], now=now)[0]

    def add_many(self, items: Iterable[Mapping[str, Any]], now: float | None = None) -> list[Issue]:
        """Add issues in ONE transaction: all are added, or (on any error) none."""
        now = self._now(now)
        checked = [validate_fields(item, f"issue {i + 1}") for i, item in enumerate(items)]

        def op(conn):
            with self._transaction(conn):
                # numbers as SQLite gives them (one above the highest): serialise the adders
                conn.run(f"SELECT pg_advisory_xact_lock({_NUMBER_LOCK})")
                rows = []
                for fields in checked:
                    if fields["number"] is not None and conn.run(
                            "SELECT 1 FROM issues WHERE number = CAST(:n AS bigint)", n=fields["number"]):
                        raise Conflict(f"issue #{fields['number']} already exists: "
                                       "leave 'number' out to get a new one")
                    rows += self._rows(conn, f"""
                        WITH n AS (SELECT {NOW} AS now)
                        INSERT INTO issues (number, title, body, priority, rank, script, check_cmd,
                                            max_attempts, due_at, created_at, updated_at)
                        SELECT COALESCE(CAST(:number AS bigint),
                                        (SELECT COALESCE(MAX(number), 0) + 1 FROM issues)),
                               :title, :body, :priority, CAST(:rank AS integer), :script, :check_cmd,
                               CAST(:max_attempts AS integer), n.now, n.now, n.now
                        FROM n RETURNING *""",
                        number=fields["number"], title=fields["title"], body=fields["body"],
                        priority=fields["priority"], rank=PRIORITIES.index(fields["priority"]),
                        script=fields["script"], check_cmd=fields["check"],
                        max_attempts=fields["max_attempts"] or self.max_attempts, now=now)
                    conn.run("INSERT INTO events (at, issue, kind) VALUES (CAST(:at AS float8), "
                             "CAST(:issue AS bigint), 'added')", at=rows[-1]["created_at"],
                             issue=rows[-1]["number"])
                return [self._issue(r) for r in rows]

        added = self._retrying(op, uncertain_ok=False)
        if len(added) >= ANALYZE_AFTER:
            self._analyze()
        return added

    def _analyze(self) -> None:
        """Tell the planner the tables' new sizes now, not at autovacuum's next round:
        until then it takes a big backlog for a tiny one and sorts it on every claim."""
        self._retrying(lambda conn: conn.run("ANALYZE issues, events, agents"))

    # -- the lease verbs ----------------------------------------------------

    #: The claim: ONE statement, one round trip, one transaction. ``bury``: the abandoned
    #: issues whose attempts are used up become dead; their events are written here in
    #: number order (transition NULL keeps the trigger out), so the audit trail reads
    #: as SQLite's does, ahead of the claim's own event (the trigger fires at the end of
    #: the statement). ``pick``: the best eligible issue - ready or failed and due, or
    #: abandoned (claimed, and the lease expired or the heartbeat of the claim's OWN
    #: (host, owner) agent older than :stale_after seconds; NULL: only expiry counts) -
    #: attempts below the limit, priority then age, FOR UPDATE SKIP LOCKED: concurrent
    #: claimers on many hosts neither wait for each other nor take the same row. One
    #: condition the partial index issues_pick serves in claim order (an OR of arms
    #: would sort every open issue). The two sets are disjoint (attempts >= / < max).
    _CLAIM = """
        WITH clock AS (SELECT t.now, t.now - CAST(:stale_after AS float8) AS stale_before
                       FROM (SELECT COALESCE(CAST(:now AS float8), CAST(EXTRACT(EPOCH FROM now()) AS float8))
                             AS now) t),
        bury AS (
            UPDATE issues d SET status = 'dead', lease_until = NULL, updated_at = clock.now,
                   error = CASE WHEN d.lease_until <= clock.now THEN 'lease expired on the last attempt'
                                ELSE 'agent heartbeat stale on the last attempt' END,
                   transition = NULL, actor = d.owner,
                   note = CASE WHEN d.lease_until <= clock.now THEN 'lease expired' ELSE 'agent heartbeat stale' END
            FROM clock
            WHERE d.number IN (
                SELECT number FROM issues x, clock
                WHERE x.status = 'claimed' AND x.attempts >= x.max_attempts
                  AND (x.lease_until <= clock.now
                       OR EXISTS (SELECT 1 FROM agents a WHERE a.host = x.host AND a.id = x.owner
                                                          AND a.heartbeat_at < clock.stale_before))
                FOR UPDATE OF x SKIP LOCKED)
            RETURNING d.number, d.updated_at, d.actor, d.token, d.note),
        buried AS (
            INSERT INTO events (at, issue, kind, worker, token, detail)
            SELECT updated_at, number, 'dead', actor, token, note FROM bury ORDER BY number),
        pick AS (
            SELECT number FROM issues p, clock
            WHERE p.status IN ('ready', 'failed', 'claimed') AND p.attempts < p.max_attempts
              AND CASE WHEN p.status = 'claimed'
                       THEN p.lease_until <= clock.now
                            OR EXISTS (SELECT 1 FROM agents a WHERE a.host = p.host AND a.id = p.owner
                                                               AND a.heartbeat_at < clock.stale_before)
                       ELSE p.due_at <= clock.now END
            ORDER BY p.rank, p.created_at, p.number
            LIMIT 1
            FOR UPDATE OF p SKIP LOCKED)
        UPDATE issues i SET status = 'claimed', owner = :worker, host = :host, token = i.token + 1,
               attempts = i.attempts + 1, lease_until = clock.now + CAST(:lease AS float8),
               heartbeat_at = clock.now, claimed_at = clock.now, updated_at = clock.now,
               transition = 'claimed', actor = :worker,
               note = 'attempt ' || (i.attempts + 1) || ' of ' || i.max_attempts, claim_nonce = :nonce
        FROM pick, clock
        WHERE i.number = pick.number
        RETURNING i.*"""

    def claim(self, worker: str, lease_seconds: float = DEFAULT_LEASE_SECONDS,
              now: float | None = None, stale_after: float | None = None) -> Claim | None:
        """Lease the best eligible issue to ``worker``, or return None (see IssueStore.claim)."""
        now = self._now(now)
        nonce = uuid.uuid4().hex
        params = {"now": now, "stale_after": stale_after, "worker": worker, "lease": float(lease_seconds),
                  "nonce": nonce, "host": self.host}

        def verify(conn):
            # the reply was lost: did the claim happen? (the nonce is this call's alone)
            rows = self._rows(conn, "SELECT * FROM issues WHERE claim_nonce = :nonce AND status = 'claimed'",
                              nonce=nonce)
            return rows[0] if rows else None

        row = self._retrying(lambda conn: next(iter(self._rows(conn, self._CLAIM, **params)), False), verify)
        if not row:
            return None
        issue = self._issue(row)
        return Claim(issue=issue, token=issue.token, worker=worker, lease_until=issue.lease_until)

    def renew(self, claim: Claim, lease_seconds: float = DEFAULT_LEASE_SECONDS,
              now: float | None = None) -> Claim:
        """Extend a live lease (the heartbeat); raise LeaseLost if it is not live."""
        now = self._now(now)
        # a repeated renew is harmless: it extends the same live lease again, or is refused
        row = self._fenced(claim, "renew", now, f"""
            WITH n AS (SELECT {NOW} AS now)
            UPDATE issues SET lease_until = n.now + CAST(:lease AS float8), heartbeat_at = n.now,
                   updated_at = n.now, transition = NULL
            FROM n
            WHERE number = CAST(:number AS bigint) AND token = CAST(:token AS bigint) AND status = 'claimed'
              AND lease_until > n.now
            RETURNING issues.*""", {"lease": float(lease_seconds)}, kinds=None)
        issue = self._issue(row)
        return Claim(issue=issue, token=claim.token, worker=claim.worker, lease_until=issue.lease_until)

    def complete(self, claim: Claim, result: Mapping[str, Any] | None = None,
                 now: float | None = None) -> Issue:
        """Mark the claimed issue done with its result (branch, commit, duration, check, usage)."""
        now = self._now(now)
        result = validate_result(result)
        return self._issue(self._fenced(claim, "complete", now, f"""
            UPDATE issues SET status = 'done', lease_until = NULL, branch = :branch, commit_sha = :commit,
                   duration = CAST(:duration AS float8), error = NULL, updated_at = {NOW},
                   completed_at = {NOW}, check_status = :check_status,
                   check_duration = CAST(:check_duration AS float8), check_output = :check_output,
                   usage = :usage, feedback = NULL, transition = 'done', actor = :worker, note = :detail
            WHERE number = CAST(:number AS bigint) AND token = CAST(:token AS bigint) AND status = 'claimed'
            RETURNING *""",
            {"branch": result.get("branch"), "commit": result.get("commit"),
             "duration": result.get("duration"), "check_status": result.get("check_status"),
             "check_duration": result.get("check_duration"), "check_output": result.get("check_output"),
             "usage": json.dumps(result["usage"]) if result.get("usage") is not None else None,
             "detail": json.dumps(result) if result else None}, kinds=("done",)))

    def fail(self, claim: Claim, error: str, now: float | None = None, feedback: str | None = None,
             check: Mapping[str, Any] | None = None) -> Issue:
        """Record a failed attempt: retried after a backoff, or dead at the limit.

        ``feedback`` goes to the next attempt's prompt; ``check`` records the
        failing check's result (as :meth:`IssueStore.fail`).
        """
        now = self._now(now)
        attempts = max(claim.issue.attempts, 1)
        backoff = self.backoff_seconds * 2 ** (attempts - 1)
        check = validate_result(check)
        return self._issue(self._fenced(claim, "fail", now, f"""
            UPDATE issues SET
                   status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'failed' END,
                   due_at = {NOW} + CAST(:backoff AS float8), lease_until = NULL, error = :error,
                   updated_at = {NOW}, feedback = :feedback,
                   check_status = COALESCE(:check_status, check_status),
                   check_duration = COALESCE(CAST(:check_duration AS float8), check_duration),
                   check_output = COALESCE(:check_output, check_output),
                   transition = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'failed' END,
                   actor = :worker, note = :detail
            WHERE number = CAST(:number AS bigint) AND token = CAST(:token AS bigint) AND status = 'claimed'
            RETURNING *""",
            {"backoff": float(backoff), "error": str(error)[:4000], "detail": str(error)[:500],
             "feedback": str(feedback)[:4000] if feedback else None,
             "check_status": check.get("check_status"), "check_duration": check.get("check_duration"),
             "check_output": check.get("check_output")},
            kinds=("failed", "dead")))

    def empty(self, claim: Claim, result: Mapping[str, Any] | None = None, now: float | None = None) -> Issue:
        """The attempt succeeded but changed nothing: status ``empty`` (as :meth:`IssueStore.empty`)."""
        now = self._now(now)
        result = validate_result(result)
        return self._issue(self._fenced(claim, "empty", now, f"""
            UPDATE issues SET status = 'empty', lease_until = NULL, branch = :branch, commit_sha = NULL,
                   duration = CAST(:duration AS float8), error = 'the attempt changed nothing',
                   updated_at = {NOW}, completed_at = {NOW}, check_status = :check_status,
                   check_duration = CAST(:check_duration AS float8), check_output = :check_output,
                   usage = :usage, transition = 'empty', actor = :worker, note = 'no change'
            WHERE number = CAST(:number AS bigint) AND token = CAST(:token AS bigint) AND status = 'claimed'
            RETURNING *""",
            {"branch": result.get("branch"), "duration": result.get("duration"),
             "check_status": result.get("check_status"), "check_duration": result.get("check_duration"),
             "check_output": result.get("check_output"),
             "usage": json.dumps(result["usage"]) if result.get("usage") is not None else None},
            kinds=("empty",)))

    # -- the merge queue's verbs (host side) --------------------------------

    def mark_merged(self, number: int, commit: str, merge_commit: str, now: float | None = None) -> Issue:
        """``done`` -> ``merged`` with the base commit that contains it (guarded by the commit)."""
        now = self._now(now)

        def op(conn):
            rows = self._rows(conn, f"""
                UPDATE issues SET status = 'merged', merge_commit = :merge, merged_at = {NOW},
                       updated_at = {NOW}, error = NULL, feedback = NULL,
                       transition = 'merged', actor = 'merge-queue', note = :merge
                WHERE number = CAST(:number AS bigint) AND status = 'done' AND commit_sha = :commit
                RETURNING *""", number=int(number), commit=commit, merge=merge_commit, now=now)
            return rows[0] if rows else False

        def verify(conn):  # the reply was lost: merged already, with this merge commit?
            rows = self._rows(conn, "SELECT * FROM issues WHERE number = CAST(:n AS bigint) AND status = 'merged'"
                                    " AND merge_commit = :m", n=int(number), m=merge_commit)
            return rows[0] if rows else None

        row = self._retrying(op, verify)
        if row is False:
            raise Conflict(f"issue #{number} is no longer done at {commit[:12]}: not marked merged")
        return self._issue(row)

    def reject(self, number: int, commit: str | None, report: str, requeue: bool = False,
               now: float | None = None) -> Issue:
        """``done`` -> ``rejected`` (or back to ``ready`` with ``requeue``), as :meth:`IssueStore.reject`."""
        now = self._now(now)

        def op(conn):
            with self._transaction(conn):
                rows = conn.run("SELECT attempts < max_attempts FROM issues WHERE number = CAST(:n AS bigint)"
                                " AND status = 'done' AND commit_sha IS NOT DISTINCT FROM :c FOR UPDATE",
                                n=int(number), c=commit)
                if not rows:
                    return False
                again = bool(requeue) and bool(rows[0][0])
                return self._rows(conn, f"""
                    UPDATE issues SET status = :status, owner = CASE WHEN CAST(:again AS boolean) THEN NULL ELSE owner END,
                           due_at = {NOW}, error = :report, feedback = :report, updated_at = {NOW},
                           transition = 'rejected', actor = 'merge-queue', note = :note
                    WHERE number = CAST(:n AS bigint) RETURNING *""",
                    status="ready" if again else "rejected", again=again, report=str(report)[:4000],
                    note=("re-queued: " if again else "") + str(report)[:400], n=int(number), now=now)[0]

        row = self._retrying(op)
        if row is False:
            raise Conflict(f"issue #{number} is no longer done at {(commit or 'no commit')[:12]}: not rejected")
        return self._issue(row)

    def release(self, claim: Claim, now: float | None = None) -> Issue:
        """Give the issue back at once (graceful shutdown); the attempt is refunded."""
        now = self._now(now)
        return self._issue(self._fenced(claim, "release", now, f"""
            UPDATE issues SET status = 'ready', owner = NULL, lease_until = NULL,
                   attempts = GREATEST(attempts - 1, 0), due_at = {NOW}, updated_at = {NOW},
                   transition = 'released', actor = :worker, note = NULL
            WHERE number = CAST(:number AS bigint) AND token = CAST(:token AS bigint) AND status = 'claimed'
            RETURNING *""", {}, kinds=("released",)))

    def _fenced(self, claim: Claim, verb: str, now: float | None, sql: str, params: dict,
                kinds: tuple[str, ...] | None) -> dict[str, Any]:
        """One fenced UPDATE; its row, or (refused) the refusal recorded and LeaseLost raised."""
        params = {**params, "now": now, "number": claim.number, "token": claim.token, "worker": claim.worker}

        def op(conn):
            rows = self._rows(conn, sql, **params)
            if rows:
                return rows[0]
            self._exec(conn, _REFUSE, now=now, number=claim.number, kind=f"refused-{verb}", worker=claim.worker,
                     token=claim.token)
            return False

        def verify(conn):
            # the reply was lost: a verb that took effect left its event with this token
            # (each token can leave 'claimed' once), so it is not sent a second time
            if kinds is None:
                return None
            found = conn.run("SELECT 1 FROM events WHERE issue = CAST(:n AS bigint) AND token = CAST(:t AS bigint)"
                             " AND kind = ANY(CAST(:kinds AS text[]))", n=claim.number, t=claim.token,
                             kinds="{" + ",".join(kinds) + "}")
            if not found:
                return None
            return self._rows(conn, "SELECT * FROM issues WHERE number = CAST(:n AS bigint)", n=claim.number)[0]

        row = self._retrying(op, verify)
        if row is False:
            raise LeaseLost(
                f"lease lost on issue #{claim.number} (token {claim.token}, {claim.worker}): "
                f"{verb} refused; the issue belongs to a newer claim or was changed"
            )
        return row

    # -- operator verbs -----------------------------------------------------

    def retry(self, number: int, now: float | None = None) -> Issue:
        """Put a failed, dead, blocked, done, empty or rejected issue back to ready with fresh attempts."""
        return self._operator(number, "retry", now, ("failed", "dead", "blocked", "done", "ready", "empty",
                                                     "rejected"),
                              f"status = 'ready', attempts = 0, due_at = {NOW}, error = NULL")

    def block(self, number: int, now: float | None = None) -> Issue:
        """Take a ready or failed issue out of the queue until retried."""
        return self._operator(number, "block", now, ("ready", "failed", "blocked"), "status = 'blocked'")

    def _operator(self, number: int, verb: str, now: float | None, allowed: tuple, assignment: str) -> Issue:
        now = self._now(now)

        def op(conn):
            with self._transaction(conn):
                rows = conn.run("SELECT status, owner FROM issues WHERE number = CAST(:n AS bigint) FOR UPDATE",
                                n=int(number))
                if not rows:
                    raise IssueNotFound(f"no issue #{number}: see `issues.list`")
                status, owner = rows[0]
                if status not in allowed:
                    raise Conflict(f"issue #{number} is {status}" + (f" by {owner}" if status == "claimed" else "")
                                   + f": cannot {verb} it now (stop its agent first, or wait)")
                return self._rows(conn, f"""UPDATE issues SET {assignment}, updated_at = {NOW},
                                                transition = :verb, actor = 'operator', note = NULL
                                            WHERE number = CAST(:n AS bigint) RETURNING *""",
                                  now=now, n=int(number), verb=verb)[0]

        return self._issue(self._retrying(op))

    # -- the agents registry ------------------------------------------------
    # Who works where: one row per agent, keyed by (host, id) - agent ids repeat on every
    # host of a shared queue. Its own section, not its own module: freeing a silent
    # agent's claims is one transaction over this table AND the issues, on this store's
    # connection.


    def agent_heartbeat(self, agent_id: str, state: str, issue: int | None = None,
                        token: int | None = None, incarnation: str | None = None,
                        pid: int | None = None, now: float | None = None,
                        waiting_until: float | None = None) -> None:
        """Record what this host's agent ``agent_id`` is doing now (upsert of its (host, id) row)."""
        now = self._now(now)
        self._retrying(lambda conn: self._exec(
            conn, f"""INSERT INTO agents AS a (host, id, state, issue, token, heartbeat_at, started_at, incarnation,
                                          pid, waiting_until)
                VALUES (:host, :id, :state, CAST(:issue AS bigint), CAST(:token AS bigint), {NOW}, {NOW}, :inc,
                        CAST(:pid AS integer), CAST(:waiting AS float8))
                ON CONFLICT (host, id) DO UPDATE SET state = EXCLUDED.state, issue = EXCLUDED.issue,
                       token = EXCLUDED.token, heartbeat_at = EXCLUDED.heartbeat_at,
                       waiting_until = EXCLUDED.waiting_until, pid = COALESCE(EXCLUDED.pid, a.pid),
                       started_at = CASE WHEN a.incarnation IS NOT DISTINCT FROM EXCLUDED.incarnation
                                         THEN a.started_at ELSE EXCLUDED.started_at END,
                       incarnation = EXCLUDED.incarnation""",
            id=agent_id, state=state, issue=issue, token=token, now=now, inc=incarnation, host=self.host, pid=pid,
            waiting=waiting_until))

    def agents(self, host: str | None = None) -> list[AgentRow]:
        """Every agent that ever reported (of every host, or only ``host``'s), by id then host."""
        if host is None:
            return [AgentRow(**r) for r in self._read("SELECT * FROM agents ORDER BY id, host")]
        return [AgentRow(**r) for r in self._read("SELECT * FROM agents WHERE host = :h ORDER BY id", h=host)]

    def release_agent(self, agent_id: str, now: float | None = None, reason: str = "agent gone") -> list[int]:
        """Free at once every claim held by this host's ``agent_id`` (crash recovery; the attempt counts)."""
        now = self._now(now)

        def op(conn):
            with self._transaction(conn):
                return self._release_agent(conn, now, self.host, agent_id, reason)

        return self._retrying(op)

    def _release_agent(self, conn, now: float | None, host: str, agent_id: str, reason: str) -> list[int]:
        # one issue at a time, by number: the audit trail then reads as SQLite's does
        # (one UPDATE of many rows would record them in the table's physical order)
        numbers = [r[0] for r in self._exec(
            conn, "SELECT number FROM issues WHERE status = 'claimed' AND owner = :agent AND host = :host"
                  " ORDER BY number FOR UPDATE", agent=agent_id, host=host)[0]]
        for number in numbers:
            self._exec(conn, _RELEASE_AGENT, now=now, number=number, agent=agent_id, host=host,
                       reason=f"{reason} on the last attempt", note=reason)
        return numbers

    def release_stale_agents(self, stale_after: float, now: float | None = None) -> dict[str, list[int]]:
        """Free the claims of agents whose heartbeat is older than ``stale_after`` seconds.

        Every host's agents (a dead host's claims come back); the keys name the agent
        as :meth:`IssueStore.release_stale_agents` does (``agent-001@ws2`` for another host's).
        """
        now = self._now(now)

        def op(conn):
            freed = {}
            with self._transaction(conn):
                # the agents' rows are locked and their staleness re-checked on the newest
                # version: an agent that heartbeats meanwhile keeps its claim
                owners = conn.run(
                    f"""SELECT a.host, a.id FROM agents a
                        WHERE a.heartbeat_at < {NOW} - CAST(:stale AS float8)
                          AND EXISTS (SELECT 1 FROM issues i WHERE i.status = 'claimed'
                                                              AND i.owner = a.id AND i.host = a.host)
                        ORDER BY a.host, a.id FOR UPDATE""", now=now, stale=float(stale_after))
                for host, owner in owners:
                    numbers = self._release_agent(conn, now, host, owner, "agent heartbeat stale")
                    if numbers:
                        freed[agent_key(owner, host, self.host)] = numbers
            return freed

        return self._retrying(op)

    # -- reading ------------------------------------------------------------

    _issue = staticmethod(issue_from_row)

    def get(self, number: int) -> Issue:
        """The issue with that number; IssueNotFound if there is none."""
        rows = self._read("SELECT * FROM issues WHERE number = CAST(:n AS bigint)", n=int(number))
        if not rows:
            raise IssueNotFound(f"no issue #{number}: see `issues.list`")
        return self._issue(rows[0])

    def list(self, status: str | Iterable[str] | None = None) -> list[Issue]:
        """Issues by number, optionally only those with the given status(es)."""
        if status is None:
            return [self._issue(r) for r in self._read("SELECT * FROM issues ORDER BY number")]
        wanted = [status] if isinstance(status, str) else list(status)
        bad = [s for s in wanted if s not in STATUSES]
        if bad:
            raise InvalidInput(f"unknown status {bad[0]!r}: use one of {', '.join(STATUSES)}")
        return [self._issue(r) for r in self._read(
            "SELECT * FROM issues WHERE status = ANY(CAST(:s AS text[])) ORDER BY rank, created_at, number",
            s="{" + ",".join(wanted) + "}")]

    def counts(self) -> dict[str, int]:
        """Number of issues in each status (every status present, zeros included)."""
        counts = dict.fromkeys(STATUSES, 0)
        for row in self._read("SELECT status, COUNT(*) AS n FROM issues GROUP BY status"):
            counts[row["status"]] = int(row["n"])
        return counts

    def events(self, number: int | None = None, limit: int | None = None) -> list[Event]:
        """The audit trail, oldest first; of one issue when ``number`` is given."""
        where = "WHERE issue = CAST(:n AS bigint)" if number is not None else ""
        params = {"n": number} if number is not None else {}
        if limit is None:
            sql = f"SELECT * FROM events {where} ORDER BY id"
        else:
            sql = f"SELECT * FROM (SELECT * FROM events {where} ORDER BY id DESC LIMIT {int(limit)}) e ORDER BY id"
        return [Event(**r) for r in self._read(sql, **params)]

    def quick_check(self) -> None:
        """The server answers and the schema is this version's (PostgreSQL checks its own pages)."""
        self._read("SELECT 1 FROM issues LIMIT 1")

    def backup(self, target: str | os.PathLike) -> None:
        """Copy the whole backlog, consistently, into a new SQLite database at ``target``."""
        from . import transfer

        transfer.pg_to_sqlite(self, target)


def _describe(err: BaseException | None) -> str:
    if err is None:
        return "connection lost"
    if err.args and isinstance(err.args[0], dict):
        return str(err.args[0].get("M", "server error"))
    return str(err) or err.__class__.__name__
