"""The shared issue queue on SQLite: one database, fenced leases, an audit trail.

(Open a queue with :func:`parallel_autopilot.issues.open_store`: it picks this
store or the PostgreSQL one.)

Standard library only: the same module runs on the host and in every agent
container, all of them on one database in a bind-mounted DIRECTORY.

The verbs, each next to its SQL::

    store = IssueStore(".autopilot/autopilot.db")
    store.add("Fix the parser", priority="high", script="make fix-parser")
    claim = store.claim("agent-001")          # None when nothing is eligible
    claim = store.renew(claim)                # heartbeat: every lease/3
    store.complete(claim, {"branch": ..., "commit": ..., "duration": ...})
    store.fail(claim, "tests failed", feedback=...)  # retried after a backoff
    store.empty(claim, result)                # succeeded but changed nothing
    store.mark_merged(n, commit, merge_commit)  # the merge queue: done -> merged
    store.reject(n, commit, report, requeue)  # the merge queue: done -> rejected (or ready)
    store.release(claim)                      # graceful: not an attempt
    store.release_agent("agent-001")          # crash recovery: counts as one (this host's agent-001)

Defaults: a lease of 900 s (the design's 15 minutes), 3 attempts, a backoff of
30 s doubling per attempt, a busy timeout of 30 s.

Fencing. ``claim`` increments the issue's never-decreasing ``token``. ``renew``
acts only while ``token`` matches and the lease has not expired; ``complete``,
``fail`` and ``release`` only while ``token`` matches and the issue is still
claimed (an expired lease that nobody re-claimed can still be finished: its
holder is the only one with that token). A stale call changes nothing, appends
a ``refused-<verb>`` event and raises :class:`LeaseLost`.

Time is a parameter: every verb takes ``now`` (seconds since the epoch),
defaulting to the store's clock. Times are stored as REAL epoch seconds, so a
comparison is a comparison of numbers, never of differently formatted text.

Writes. A claim and each fenced verb is ONE ``UPDATE ... RETURNING`` statement
(atomic on its own: the pick is a subquery of the UPDATE); the ``issues_transition``
trigger appends the audit event in that same statement, so the write lock is
held once and briefly. Reads that lead to writes (imports, operator verbs,
refusals, the stale-agent sweep) use explicit ``BEGIN IMMEDIATE``.

Hosts. An agent's identity is (host, id): agent ids repeat on every workstation
of a shared (PostgreSQL) queue. ``store.host`` is the machine whose agents the
store speaks for; a claim records it in ``issues.host``, the agents table is keyed
by (host, id), and release/stale detection only ever matches an agent's own host.
A SQLite queue is one host's (``store.shared`` is False).

Connections. ``isolation_level=None``; WAL is set when the database is created;
no transaction is held across agent work; a store used after ``fork()``
reconnects instead of sharing the parent's connection.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import struct
import threading
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from ..errors import Conflict, DatabaseDamaged, InvalidInput, IssueNotFound, LeaseLost
from ..platform import check_filesystem  # the network-filesystem refusal lives with the host facts
from . import forksafe
from .fields import PRIORITIES, validate_fields, validate_result
from .records import (
    DEFAULT_BACKOFF_SECONDS, DEFAULT_LEASE_SECONDS, DEFAULT_MAX_ATTEMPTS, STATUSES, AgentRow, Claim, Event,
    Issue, agent_key, issue_from_row,
)
from .schema import (
    AGENTS, AGENTS_KEY, EVENTS, FIRST_AGENTS, FIRST_STATUSES, ISSUES, add_column, columns, create_table, status_check,
)

DEFAULT_BUSY_TIMEOUT = 30.0

#: The portable column types of :mod:`.schema`, as SQLite declares them (its type affinities).
TYPES = {"bigint": "INTEGER", "integer": "INTEGER", "text": "TEXT", "float": "REAL", "identity": "INTEGER"}

#: Appends the audit event an UPDATE names (transition, actor, note), in the same statement.
_TRANSITION_TRIGGER = """CREATE TRIGGER issues_transition AFTER UPDATE ON issues WHEN NEW.transition IS NOT NULL
           BEGIN
               INSERT INTO events (at, issue, kind, worker, token, detail)
                   SELECT NEW.updated_at, NEW.number,
                          CASE WHEN OLD.lease_until <= NEW.updated_at THEN 'expired' ELSE 'abandoned' END,
                          OLD.owner, OLD.token, NULL
                   WHERE NEW.transition = 'claimed' AND OLD.status = 'claimed';
               INSERT INTO events (at, issue, kind, worker, token, detail)
                   VALUES (NEW.updated_at, NEW.number, NEW.transition, NEW.actor, NEW.token, NEW.note);
           END"""
#: The claim's index: each arm of ``_CLAIM`` walks it in claim order.
_PICK_INDEX = "CREATE INDEX issues_pick ON issues (status, rank, created_at, number)"

#: The schema's history (``PRAGMA user_version`` counts what was applied). A string is
#: a script of statements split on ";", a list its statements; ``:host`` is the
#: migrating store's host.
MIGRATIONS: list[str | list[str]] = [
    # 1: the initial schema
    [
        create_table("issues", columns(ISSUES, until="updated_at"), TYPES, status=status_check(FIRST_STATUSES)),
        _PICK_INDEX,
        create_table("events", EVENTS, TYPES),
        "CREATE INDEX events_issue ON events (issue, id)",
        create_table("agents", columns(AGENTS, FIRST_AGENTS), TYPES, id="PRIMARY KEY", host=""),
    ],
    # 2: every UPDATE of an issue names the event it records (transition, actor,
    # note); a trigger appends it in the same statement, so a claim or a
    # completion is ONE statement and ONE short hold of the write lock
    [
        add_column("issues", "transition", TYPES),
        add_column("issues", "actor", TYPES),
        add_column("issues", "note", TYPES),
        _TRANSITION_TRIGGER,
    ],
    # 3: verified work and a merge queue (statuses empty/merged/rejected, the check's
    # result, the report handed to the next attempt), model usage per issue. SQLite
    # cannot alter a CHECK constraint: the table is rebuilt, trigger and index with it.
    [
        "DROP TRIGGER issues_transition",
        create_table("issues_v3", columns(ISSUES, until="usage"), TYPES),
        """INSERT INTO issues_v3 (number, title, body, priority, rank, script, status, attempts,
                                 max_attempts, due_at, owner, token, lease_until, heartbeat_at,
                                 claimed_at, branch, commit_sha, duration, error, created_at,
                                 updated_at, transition, actor, note, completed_at)
           SELECT number, title, body, priority, rank, script, status, attempts, max_attempts,
                  due_at, owner, token, lease_until, heartbeat_at, claimed_at, branch, commit_sha,
                  duration, error, created_at, updated_at, NULL, NULL, NULL,
                  CASE WHEN status = 'done' THEN updated_at END
           FROM issues""",
        "DROP TABLE issues",
        "ALTER TABLE issues_v3 RENAME TO issues",
        _PICK_INDEX,
        _TRANSITION_TRIGGER,
    ],
    # 4: an agent waiting for a model's rate limit / quota to reset says until when
    [add_column("agents", "waiting_until", TYPES)],
    # 5: an agent's identity is (host, id), agent ids repeat on every host of a shared queue:
    # issues.host is the claiming agent's host; the agents table is keyed by (host, id).
    # Rows that exist get :host, the migrating store's (a SQLite queue was one host's all
    # along). transition = NULL: the backfill is no event.
    [
        add_column("issues", "host", TYPES),
        "UPDATE issues SET host = :host, transition = NULL WHERE claimed_at IS NOT NULL",
        create_table("agents_v5", AGENTS, TYPES, key=AGENTS_KEY),
        """INSERT INTO agents_v5 (host, id, state, issue, token, heartbeat_at, started_at, incarnation, pid,
                                 waiting_until)
           SELECT :host, id, state, issue, token, heartbeat_at, started_at, incarnation, pid, waiting_until
           FROM agents""",
        "DROP TABLE agents",
        "ALTER TABLE agents_v5 RENAME TO agents",
    ],
]


#: Snapshots of the database live in this directory next to it (see :mod:`.snapshots`).
SNAPSHOT_DIR = "snapshots"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_WAL_MAGICS = (0x377F0682, 0x377F0683)
#: SQLite's primary result codes that mean "this file is not (or no longer) a sound database".
_DAMAGE_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


def snapshot_dir(db: Path) -> Path:
    """Where the snapshots of the database at ``db`` are kept."""
    return Path(db).parent / SNAPSHOT_DIR


def damaged(db: Path, problem: str, foreign: bool = False, wal: Path | None = None) -> DatabaseDamaged:
    """The one line for a damaged database: the file, what is wrong, the fix."""
    db = Path(db)
    snaps = snapshot_dir(db)
    has_snapshot = snaps.is_dir() and any(snaps.glob("*.db"))
    what = "is not a parallel-autopilot database" if foreign else "is damaged"
    if wal is not None:
        fix = (f"move {wal} aside (SQLite would replay it into this file)"
               + (", or restore the latest snapshot with `parallel-autopilot issues.restore`" if has_snapshot else ""))
    elif has_snapshot:
        fix = (f"restore the latest snapshot with `parallel-autopilot issues.restore` "
               f"(it keeps this file aside; snapshots in {snaps})")
    elif foreign:
        fix = "move it away or set autopilot.state_dir to another directory"
    else:
        fix = f"no snapshot exists in {snaps}: move the file aside to start an empty queue"
    return DatabaseDamaged(f"{db} {what} ({problem}); it was left untouched: {fix}")


def _header_fields(header: bytes) -> tuple[int, int | None]:
    """Page size and (when the header vouches for it) the page count of a database header."""
    page_size = struct.unpack(">H", header[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    change_counter, pages, valid_for = (struct.unpack(">I", header[o:o + 4])[0] for o in (24, 28, 92))
    return page_size, (pages if pages and valid_for == change_counter else None)


def inspect_file(db: Path) -> None:
    """Refuse a damaged or foreign database file BEFORE SQLite touches it.

    Only reads. A missing file is a new queue. A zero-length file is one
    too (``sqlite3.connect`` leaves one when a process dies before its first
    write), unless snapshots exist: a database that has been snapshotted was
    not empty, so an empty file there is damage, not a fresh start. Checked:
    the SQLite magic; a size that holds the pages the header counts (only
    without a WAL: a checkpoint in progress may grow the file after its
    header); a WAL whose page size differs or whose first page carries
    another database's ``application_id`` (each database gets a random one
    when created: SQLite itself would replay a foreign WAL into this file;
    a WAL left by a database of the same age, never checkpointed, is not
    told apart here - ``PRAGMA quick_check`` at ``agents.start`` is the next net).
    """
    db = Path(db)
    try:
        size = db.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        snaps = snapshot_dir(db)
        if snaps.is_dir() and any(snaps.glob("*.db")):
            raise damaged(db, "a zero-length file where snapshots exist")
        return
    with db.open("rb") as handle:
        header = handle.read(100)
    if not header.startswith(_SQLITE_MAGIC):
        raise damaged(db, "not a SQLite database file")
    if len(header) < 100:
        raise damaged(db, f"truncated to {size} bytes")
    page_size, pages = _header_fields(header)
    wal = Path(f"{db}-wal")
    wal_size = wal.stat().st_size if wal.exists() else 0
    if wal_size == 0:
        size = db.stat().st_size  # measured after the header: a checkpoint meanwhile only grows it
        if pages is not None and size < pages * page_size:
            raise damaged(db, f"truncated: {size} bytes of the {pages * page_size} its header counts")
        return
    try:
        _inspect_wal(db, wal, page_size, struct.unpack(">I", header[68:72])[0])
    except DatabaseDamaged:
        # a writer puts a frame's header and its page in two writes: a frame caught between them
        # shows what was there before. Damage stays; a write in flight does not.
        time.sleep(0.1)
        _inspect_wal(db, wal, page_size, struct.unpack(">I", header[68:72])[0])


def _inspect_wal(db: Path, wal: Path, page_size: int, app_id: int) -> None:
    with wal.open("rb") as handle:
        head = handle.read(32)
        if len(head) < 32:
            return  # SQLite ignores a WAL shorter than its header
        magic, _version, wal_page, _seq, salt1, salt2 = struct.unpack(">6I", head[:24])
        if magic not in _WAL_MAGICS:
            return  # not a valid WAL: SQLite ignores it and starts a new one
        if wal_page != page_size:
            raise damaged(db, f"{wal.name} belongs to another database (page size {wal_page}, not {page_size})",
                          wal=wal)
        while True:
            frame = handle.read(24)
            if len(frame) < 24:
                return
            number, _commit, s1, s2 = struct.unpack(">4I", frame[:16])
            if (s1, s2) != (salt1, salt2):
                return  # frames of an older WAL generation: SQLite ignores them
            if number == 1:
                # the file's own id is 0 until the first checkpoint after its creation; once
                # set it never changes, so only a set id that differs is another database's
                page = handle.read(100)
                if app_id and (not page.startswith(_SQLITE_MAGIC) or struct.unpack(">I", page[68:72])[0] != app_id):
                    raise damaged(db, f"{wal.name} belongs to another database", wal=wal)
                handle.seek(wal_page - 100, os.SEEK_CUR)
            else:
                handle.seek(wal_page, os.SEEK_CUR)


#: Connections inherited across fork() (see forksafe): SQLite's close path in the child
#: would run on the parent's locks and WAL state
#: (https://www.sqlite.org/howtocorrupt.html#_carrying_an_open_database_connection_across_a_fork_;
#: rails/solid_queue#324 corrupted databases that way).
_INHERITED = forksafe.INHERITED
_STORES: "weakref.WeakSet[IssueStore]" = weakref.WeakSet()
forksafe.reset_in_children(_STORES)


class IssueStore:
    """The shared issue queue in the SQLite database at ``path``.

    The parent directory is created if missing and must be on a local
    filesystem. ``host`` is the machine whose agents this store speaks for
    (default: this one's name). Thread-safe (one connection behind a lock); fork-safe (a child
    process opens its own connection).
    """

    #: One host's queue: every claim in it was made on this machine.
    shared = False

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        clock: Callable[[], float] = time.time,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        check_fs: bool = True,
        host: str | None = None,
    ):
        self.path = Path(path)
        self.host = host or socket.gethostname()
        self.clock = clock
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.busy_timeout = busy_timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if check_fs:
            check_filesystem(self.path.parent)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._id: tuple[int, int] | None = None  # (device, inode) of the file the connection opened
        _STORES.add(self)
        self._inspect()
        with self._damage_as_error():
            self._connect()

    # -- connection ---------------------------------------------------------

    def _discard_inherited(self) -> None:
        if self._conn is not None and self._pid != os.getpid():
            _INHERITED.append(self._conn)
            self._conn = None

    def _inspect(self) -> None:
        """:func:`inspect_file`, unless this process already has a connection to that very file.

        Closing ANY descriptor of a file drops every POSIX lock this process holds
        on it, SQLite's included (https://www.sqlite.org/howtocorrupt.html#_posix_advisory_locks_canceled_by_a_separate_thread_doing_close_):
        a plain open/close beside a live connection would let another process
        checkpoint and delete the WAL under it. A file that is open here was
        inspected when it was opened, and SQLite itself watches it now.
        """
        file_id = self._file_id()
        if file_id is not None and any(
                other is not self and other._conn is not None and other._pid == os.getpid()
                and other._id == file_id for other in list(_STORES)):
            return
        inspect_file(self.path)

    def _file_id(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            now_id = self._file_id()
            if now_id is None or now_id == self._id:
                return self._conn
            # replaced under us (`issues.restore` renamed a snapshot into place): follow the new
            # file. The old connection is never closed: SQLite's close would checkpoint and then
            # unlink "<path>-wal" BY NAME - the new database's WAL.
            _INHERITED.append(self._conn)
            self._conn = None
            self._inspect()
        self._discard_inherited()  # where fork() bypassed the at-fork hook
        conn = sqlite3.connect(
            str(self.path),
            timeout=self.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if names and "issues" not in names:
            # another program's database: switching it to WAL or adding our tables would write into it
            conn.close()
            raise damaged(self.path, f"it holds the tables {', '.join(sorted(names)[:5])}", foreign=True)
        self._set_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        self._conn, self._pid, self._id = conn, os.getpid(), self._file_id()
        self._migrate(conn)
        return conn

    @contextmanager
    def _damage_as_error(self) -> Iterator[None]:
        """SQLite's "malformed" / "not a database" become :class:`DatabaseDamaged` (one line)."""
        try:
            yield
        except sqlite3.DatabaseError as err:
            code = getattr(err, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in _DAMAGE_CODES:
                raise damaged(self.path, str(err)) from None
            raise

    def _set_wal(self, conn: sqlite3.Connection) -> None:
        # Switching a new database to WAL needs an exclusive lock, and SQLite answers
        # "database is locked" at once, without waiting for the busy timeout, when
        # several processes create the database together (containers starting at the
        # same moment do): retry, within the busy timeout.
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                    return
                conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError as err:
                busy = getattr(err, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
                if not busy or time.monotonic() >= deadline:
                    raise
                time.sleep(random.uniform(0.002, 0.02))

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            # an older copy (say, an agent image built earlier) must not write a newer schema
            raise Conflict(
                f"{self.path} has schema version {version}, newer than this parallel-autopilot "
                f"knows ({len(MIGRATIONS)}): upgrade parallel-autopilot (and rebuild the agent image)"
            )
        if version == len(MIGRATIONS) and conn.execute("PRAGMA application_id").fetchone()[0]:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                statements = script.split(";") if isinstance(script, str) else script
                for statement in statements:
                    if statement.strip():
                        conn.execute(statement, {"host": self.host})  # :host in a backfill (v5)
                conn.execute(f"PRAGMA user_version = {number}")
            if not conn.execute("PRAGMA application_id").fetchone()[0]:
                # this database's own id, in its first page: a WAL whose first page carries
                # another id belongs to another database (see inspect_file)
                conn.execute(f"PRAGMA application_id = {random.randint(1, 2**31 - 1)}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any error)."""
        with self._lock, self._damage_as_error():
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # SQLite may already have rolled back (SQLITE_FULL, a failed COMMIT): a second
                # ROLLBACK would raise and hide the real error; a left-open one blocks every later BEGIN
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _write(self, sql: str, params: Mapping[str, Any]) -> sqlite3.Row | None:
        """ONE write statement in its own implicit transaction; its first returned row."""
        with self._lock, self._damage_as_error():
            return self._connect().execute(sql, params).fetchone()

    def _read(self, sql: str, params: Iterable[Any] | Mapping[str, Any] = ()) -> list[sqlite3.Row]:
        params = params if isinstance(params, Mapping) else tuple(params)
        with self._lock, self._damage_as_error():
            return self._connect().execute(sql, params).fetchall()

    def close(self) -> None:
        """Close this process's connection (an inherited one is left alone)."""
        with self._lock:
            self._discard_inherited()
            if self._conn is not None:
                self._conn.close()
            self._conn = None

    def __enter__(self) -> "IssueStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else float(now)

    @staticmethod
    def _event(conn, now, issue, kind, worker=None, token=None, detail=None) -> None:
        conn.execute(
            "INSERT INTO events (at, issue, kind, worker, token, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (now, issue, kind, worker, token, detail),
        )

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
        numbers = []
        with self.transaction() as conn:
            for fields in checked:
                if fields["number"] is not None and conn.execute(
                    "SELECT 1 FROM issues WHERE number = ?", (fields["number"],)
                ).fetchone():
                    raise Conflict(f"issue #{fields['number']} already exists: leave 'number' out to get a new one")
                cur = conn.execute(
                    """INSERT INTO issues (number, title, body, priority, rank, script, check_cmd,
                                           max_attempts, due_at, created_at, updated_at)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (fields["number"], fields["title"], fields["body"], fields["priority"],
                     PRIORITIES.index(fields["priority"]), fields["script"], fields["check"],
                     fields["max_attempts"] or self.max_attempts, now, now, now),
                )
                numbers.append(cur.lastrowid)
                self._event(conn, now, cur.lastrowid, "added")
        return [self.get(n) for n in numbers]

    # -- the lease verbs ----------------------------------------------------

    #: The claim: ONE statement picks the best eligible issue, leases it, counts the
    #: attempt and bumps the fencing token (the trigger records the event). Eligible:
    #: ready or failed and due, or abandoned - claimed, and the lease expired or the
    #: owner's heartbeat (its OWN (host, id) row: another host's agent-001 is another
    #: agent) is older than :stale_before (NULL: only expiry counts); attempts below
    #: the limit, inside the pick, so an exhausted issue never blocks the queue.
    #: One arm per status, each walking the issues_pick index in claim order and
    #: stopping at its first row: a single WHERE with OR would make SQLite sort every
    #: ready row on every claim. An abandoned issue competes in the same order, so it
    #: is taken ahead of newer issues of its priority, even while the queue is busy.
    _CLAIM = """
        UPDATE issues SET status = 'claimed', owner = :worker, host = :host, token = token + 1,
               attempts = attempts + 1, lease_until = :until, heartbeat_at = :now,
               claimed_at = :now, updated_at = :now, transition = 'claimed', actor = :worker,
               note = 'attempt ' || (attempts + 1) || ' of ' || max_attempts
        WHERE number = (
            SELECT number FROM (
                SELECT * FROM (SELECT number, rank, created_at FROM issues
                               WHERE status = 'ready' AND due_at <= :now AND attempts < max_attempts
                               ORDER BY rank, created_at, number LIMIT 1)
                UNION ALL
                SELECT * FROM (SELECT number, rank, created_at FROM issues
                               WHERE status = 'failed' AND due_at <= :now AND attempts < max_attempts
                               ORDER BY rank, created_at, number LIMIT 1)
                UNION ALL
                SELECT * FROM (SELECT number, rank, created_at FROM issues i
                               WHERE status = 'claimed' AND attempts < max_attempts
                                 AND (lease_until <= :now
                                      OR EXISTS (SELECT 1 FROM agents a WHERE a.host = i.host AND a.id = i.owner
                                                                         AND a.heartbeat_at < :stale_before))
                               ORDER BY rank, created_at, number LIMIT 1))
            ORDER BY rank, created_at, number LIMIT 1)
        RETURNING *"""

    #: Before the claim: abandoned issues (as in :attr:`_CLAIM`) whose last attempt it was become dead.
    _BURY = """
        UPDATE issues SET status = 'dead', lease_until = NULL, updated_at = :now,
               error = CASE WHEN lease_until <= :now THEN 'lease expired on the last attempt'
                            ELSE 'agent heartbeat stale on the last attempt' END,
               transition = 'dead', actor = owner,
               note = CASE WHEN lease_until <= :now THEN 'lease expired' ELSE 'agent heartbeat stale' END
        WHERE status = 'claimed' AND attempts >= max_attempts
          AND (lease_until <= :now
               OR EXISTS (SELECT 1 FROM agents a WHERE a.host = issues.host AND a.id = issues.owner
                                                  AND a.heartbeat_at < :stale_before))"""

    #: An idle agent polls often: "nothing to do" is answered from a read, without the
    #: write lock. Two answers: is anything claimable (the arms of :attr:`_CLAIM`), is
    #: anything to bury (:attr:`_BURY`). Each EXISTS stops at its first row.
    _ANYTHING = """
        SELECT EXISTS (SELECT 1 FROM issues WHERE status = 'ready' AND due_at <= :now AND attempts < max_attempts)
            OR EXISTS (SELECT 1 FROM issues WHERE status = 'failed' AND due_at <= :now AND attempts < max_attempts)
            OR EXISTS (SELECT 1 FROM issues i
                       WHERE status = 'claimed' AND attempts < max_attempts
                         AND (lease_until <= :now
                              OR EXISTS (SELECT 1 FROM agents a WHERE a.host = i.host AND a.id = i.owner
                                                                 AND a.heartbeat_at < :stale_before))),
               EXISTS (SELECT 1 FROM issues i
                       WHERE status = 'claimed' AND attempts >= max_attempts
                         AND (lease_until <= :now
                              OR EXISTS (SELECT 1 FROM agents a WHERE a.host = i.host AND a.id = i.owner
                                                                 AND a.heartbeat_at < :stale_before)))"""

    def claim(self, worker: str, lease_seconds: float = DEFAULT_LEASE_SECONDS,
              now: float | None = None, stale_after: float | None = None) -> Claim | None:
        """Lease the best eligible issue to ``worker``, or return None.

        Eligible: ready (or failed) and due, or abandoned - claimed with an
        expired lease, or (with ``stale_after``) held by an agent whose
        heartbeat has been silent that many seconds; and attempts below the
        limit. Best: priority urgent > high > medium > low, then oldest. An
        abandoned issue whose attempts are used up is marked dead in the same
        call. The previous holder is fenced out by the new token.
        """
        now = self._now(now)
        params = {"now": now, "stale_before": None if stale_after is None else now - stale_after}
        claimable, to_bury = self._read(self._ANYTHING, params)[0]
        if to_bury:
            self._write(self._BURY, params)
        if not claimable:
            return None
        row = self._write(self._CLAIM, {**params, "worker": worker, "host": self.host, "until": now + lease_seconds})
        if row is None:
            return None
        issue = self._issue(row)
        return Claim(issue=issue, token=issue.token, worker=worker, lease_until=issue.lease_until)

    def renew(self, claim: Claim, lease_seconds: float = DEFAULT_LEASE_SECONDS,
              now: float | None = None) -> Claim:
        """Extend a live lease (the heartbeat); raise LeaseLost if it is not live."""
        now = self._now(now)
        row = self._write(
            """UPDATE issues SET lease_until = :until, heartbeat_at = :now, updated_at = :now,
                      transition = NULL
               WHERE number = :number AND token = :token AND status = 'claimed'
                 AND lease_until > :now
               RETURNING *""",
            {"until": now + lease_seconds, "now": now, "number": claim.number, "token": claim.token})
        if row is None:
            raise self._refuse(now, claim, "renew")
        issue = self._issue(row)
        return Claim(issue=issue, token=claim.token, worker=claim.worker, lease_until=issue.lease_until)

    def complete(self, claim: Claim, result: Mapping[str, Any] | None = None,
                 now: float | None = None) -> Issue:
        """Mark the claimed issue done with its result (branch, commit, duration)."""
        now = self._now(now)
        result = validate_result(result)
        return self._fenced(
            claim, "complete", now,
            """UPDATE issues SET status = 'done', lease_until = NULL, branch = :branch,
                      commit_sha = :commit, duration = :duration, error = NULL, updated_at = :now,
                      completed_at = :now, check_status = :check_status,
                      check_duration = :check_duration, check_output = :check_output,
                      usage = :usage, feedback = NULL,
                      transition = 'done', actor = :worker, note = :detail
               WHERE number = :number AND token = :token AND status = 'claimed'
               RETURNING *""",
            {"branch": result.get("branch"), "commit": result.get("commit"),
             "duration": result.get("duration"), "check_status": result.get("check_status"),
             "check_duration": result.get("check_duration"), "check_output": result.get("check_output"),
             "usage": json.dumps(result["usage"]) if result.get("usage") is not None else None},
            detail=json.dumps(result) if result else None,
        )

    def fail(self, claim: Claim, error: str, now: float | None = None, feedback: str | None = None,
             check: Mapping[str, Any] | None = None) -> Issue:
        """Record a failed attempt: retried after a backoff, or dead at the limit.

        ``feedback`` (e.g. the failing check's last lines) is handed to the next
        attempt's prompt; ``check`` records the check's result (check_status,
        check_duration, check_output) when it was the check that failed.
        """
        now = self._now(now)
        attempts = max(claim.issue.attempts, 1)
        backoff = self.backoff_seconds * 2 ** (attempts - 1)
        check = validate_result(check)
        issue = self._fenced(
            claim, "fail", now,
            """UPDATE issues SET
                      status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'failed' END,
                      due_at = :now + :backoff, lease_until = NULL, error = :error, updated_at = :now,
                      feedback = :feedback, check_status = COALESCE(:check_status, check_status),
                      check_duration = COALESCE(:check_duration, check_duration),
                      check_output = COALESCE(:check_output, check_output),
                      transition = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'failed' END,
                      actor = :worker, note = :detail
               WHERE number = :number AND token = :token AND status = 'claimed'
               RETURNING *""",
            {"backoff": backoff, "error": str(error)[:4000],
             "feedback": str(feedback)[:4000] if feedback else None,
             "check_status": check.get("check_status"), "check_duration": check.get("check_duration"),
             "check_output": check.get("check_output")},
            detail=str(error)[:500],
        )
        return issue

    def empty(self, claim: Claim, result: Mapping[str, Any] | None = None, now: float | None = None) -> Issue:
        """The attempt succeeded but changed nothing: status ``empty`` (not done, not retried).

        An empty change is its own outcome: nothing to merge, and retrying the
        same instructions would most likely change nothing again (``issues.retry``
        puts it back).
        """
        now = self._now(now)
        result = validate_result(result)
        return self._fenced(
            claim, "empty", now,
            """UPDATE issues SET status = 'empty', lease_until = NULL, branch = :branch, commit_sha = NULL,
                      duration = :duration, error = 'the attempt changed nothing', updated_at = :now,
                      completed_at = :now, check_status = :check_status, check_duration = :check_duration,
                      check_output = :check_output, usage = :usage,
                      transition = 'empty', actor = :worker, note = :detail
               WHERE number = :number AND token = :token AND status = 'claimed'
               RETURNING *""",
            {"branch": result.get("branch"), "duration": result.get("duration"),
             "check_status": result.get("check_status"), "check_duration": result.get("check_duration"),
             "check_output": result.get("check_output"),
             "usage": json.dumps(result["usage"]) if result.get("usage") is not None else None},
            detail="no change",
        )

    # -- the merge queue's verbs (host side; the merge queue is their only caller) ------

    def mark_merged(self, number: int, commit: str, merge_commit: str, now: float | None = None) -> Issue:
        """``done`` -> ``merged`` with the base commit that contains it.

        Guarded by the commit: an issue retried (or re-done) meanwhile is left alone.
        """
        now = self._now(now)
        row = self._write(
            """UPDATE issues SET status = 'merged', merge_commit = :merge, merged_at = :now, updated_at = :now,
                      error = NULL, feedback = NULL, transition = 'merged', actor = 'merge-queue', note = :merge
               WHERE number = :number AND status = 'done' AND commit_sha = :commit
               RETURNING *""",
            {"number": number, "commit": commit, "merge": merge_commit, "now": now})
        if row is None:
            raise Conflict(f"issue #{number} is no longer done at {commit[:12]}: not marked merged")
        return self._issue(row)

    def reject(self, number: int, commit: str | None, report: str, requeue: bool = False,
               now: float | None = None) -> Issue:
        """``done`` -> ``rejected`` (red or conflicting on the base), the report in error and feedback.

        With ``requeue`` and attempts left, the issue goes back to ``ready`` at
        once as a new attempt whose prompt carries the report (the audit trail
        still says ``rejected``).
        """
        now = self._now(now)
        row = self._write(
            """UPDATE issues SET
                      status = CASE WHEN :requeue AND attempts < max_attempts THEN 'ready' ELSE 'rejected' END,
                      owner = CASE WHEN :requeue AND attempts < max_attempts THEN NULL ELSE owner END,
                      due_at = :now, error = :report, feedback = :report, updated_at = :now,
                      transition = 'rejected', actor = 'merge-queue',
                      note = CASE WHEN :requeue AND attempts < max_attempts THEN 're-queued: ' ELSE '' END
                             || substr(:report, 1, 400)
               WHERE number = :number AND status = 'done' AND commit_sha IS :commit
               RETURNING *""",
            {"number": number, "commit": commit, "report": str(report)[:4000], "requeue": bool(requeue),
             "now": now})
        if row is None:
            raise Conflict(f"issue #{number} is no longer done at {(commit or 'no commit')[:12]}: not rejected")
        return self._issue(row)

    def release(self, claim: Claim, now: float | None = None) -> Issue:
        """Give the issue back at once (graceful shutdown); the attempt is refunded."""
        now = self._now(now)
        return self._fenced(
            claim, "release", now,
            """UPDATE issues SET status = 'ready', owner = NULL, lease_until = NULL,
                      attempts = MAX(attempts - 1, 0), due_at = :now, updated_at = :now,
                      transition = 'released', actor = :worker, note = NULL
               WHERE number = :number AND token = :token AND status = 'claimed'
               RETURNING *""",
            {},
        )

    def _fenced(self, claim: Claim, verb: str, now: float, sql: str, params: dict,
                detail: str | None = None) -> Issue:
        row = self._write(sql, {**params, "now": now, "number": claim.number, "token": claim.token,
                                "worker": claim.worker, "detail": detail})
        if row is None:
            raise self._refuse(now, claim, verb)
        return self._issue(row)

    def _refuse(self, now: float, claim: Claim, verb: str) -> LeaseLost:
        """Record a refused fenced call (the issue is unchanged); the LeaseLost to raise."""
        with self.transaction() as conn:
            current = conn.execute("SELECT status, owner, token FROM issues WHERE number = ?",
                                   (claim.number,)).fetchone()
            detail = (f"stale token {claim.token}; issue is {current['status']}, token {current['token']}"
                      f" held by {current['owner']}" if current else "issue does not exist")
            self._event(conn, now, claim.number, f"refused-{verb}", claim.worker, claim.token, detail)
        return self._lost(claim, verb)

    def _lost(self, claim: Claim, verb: str) -> LeaseLost:
        return LeaseLost(
            f"lease lost on issue #{claim.number} (token {claim.token}, {claim.worker}): "
            f"{verb} refused; the issue belongs to a newer claim or was changed"
        )

    # -- operator verbs -----------------------------------------------------

    def retry(self, number: int, now: float | None = None) -> Issue:
        """Put a failed, dead, blocked, done, empty or rejected issue back to ready with fresh attempts."""
        return self._operator(number, "retry", now, ("failed", "dead", "blocked", "done", "ready", "empty",
                                                     "rejected"),
                              "status = 'ready', attempts = 0, due_at = :now, error = NULL")

    def block(self, number: int, now: float | None = None) -> Issue:
        """Take a ready or failed issue out of the queue until retried."""
        return self._operator(number, "block", now, ("ready", "failed", "blocked"), "status = 'blocked'")

    def _operator(self, number: int, verb: str, now: float | None, allowed: tuple, assignment: str) -> Issue:
        now = self._now(now)
        with self.transaction() as conn:
            row = conn.execute("SELECT status, owner FROM issues WHERE number = ?", (number,)).fetchone()
            if row is None:
                raise IssueNotFound(f"no issue #{number}: see `issues.list`")
            if row["status"] not in allowed:
                raise Conflict(
                    f"issue #{number} is {row['status']}"
                    + (f" by {row['owner']}" if row["status"] == "claimed" else "")
                    + f": cannot {verb} it now (stop its agent first, or wait)"
                )
            conn.execute(f"""UPDATE issues SET {assignment}, updated_at = :now,
                                    transition = :verb, actor = 'operator', note = NULL
                             WHERE number = :number""",
                         {"now": now, "number": number, "verb": verb})
        return self.get(number)

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
        with self.transaction() as conn:
            conn.execute(
                """INSERT INTO agents (host, id, state, issue, token, heartbeat_at, started_at, incarnation, pid,
                                      waiting_until)
                   VALUES (:host, :id, :state, :issue, :token, :now, :now, :inc, :pid, :waiting)
                   ON CONFLICT (host, id) DO UPDATE SET state = :state, issue = :issue, token = :token,
                          waiting_until = :waiting, heartbeat_at = :now, pid = COALESCE(:pid, pid),
                          started_at = CASE WHEN incarnation IS :inc THEN started_at ELSE :now END,
                          incarnation = :inc""",
                {"host": self.host, "id": agent_id, "state": state, "issue": issue, "token": token, "now": now,
                 "inc": incarnation, "pid": pid, "waiting": waiting_until},
            )

    def agents(self, host: str | None = None) -> list[AgentRow]:
        """Every agent that ever reported (of every host, or only ``host``'s), by id then host."""
        if host is None:
            rows = self._read("SELECT * FROM agents ORDER BY id, host")
        else:
            rows = self._read("SELECT * FROM agents WHERE host = ? ORDER BY id", (host,))
        return [AgentRow(**dict(r)) for r in rows]

    def release_agent(self, agent_id: str, now: float | None = None, reason: str = "agent gone") -> list[int]:
        """Free at once every claim held by this host's ``agent_id`` (crash recovery).

        Only claims made on ``store.host``: another host's agent of the same id
        is another agent. Unlike :meth:`release`, the interrupted attempt
        counts: an issue that keeps killing its agent ends dead instead of
        looping forever.
        """
        now = self._now(now)
        with self.transaction() as conn:
            return self._release_agent(conn, now, self.host, agent_id, reason)

    def _release_agent(self, conn, now: float, host: str, agent_id: str, reason: str) -> list[int]:
        rows = conn.execute(
            """UPDATE issues SET
                      status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'ready' END,
                      error = CASE WHEN attempts >= max_attempts THEN :reason ELSE error END,
                      owner = CASE WHEN attempts >= max_attempts THEN owner END,
                      lease_until = NULL, due_at = :now, updated_at = :now,
                      transition = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'released-agent' END,
                      actor = :agent, note = :note
               WHERE status = 'claimed' AND owner = :agent AND host = :host
               RETURNING number, token, status""",
            {"agent": agent_id, "host": host, "now": now, "reason": f"{reason} on the last attempt", "note": reason},
        ).fetchall()
        return sorted(row["number"] for row in rows)

    def release_stale_agents(self, stale_after: float, now: float | None = None) -> dict[str, list[int]]:
        """Free the claims of agents whose heartbeat is older than ``stale_after`` seconds.

        Any live agent calls this while idle, so a container that died without
        a word (``docker kill``, a lost host) gives its issue back within
        seconds, long before its lease expires. A falsely presumed-dead agent
        loses nothing but time: its next renew raises LeaseLost.
        Claims of workers with no agent row (plain host processes) are left alone.
        Every host's agents count (a dead host's claims come back); the keys name
        the agent: ``"agent-001"`` for this store's host, ``"agent-001@ws2"`` for another's.
        """
        now = self._now(now)
        freed = {}
        # staleness is read in the same write transaction as the release: an agent
        # that heartbeats meanwhile keeps its claim
        with self.transaction() as conn:
            owners = [(r["host"], r["id"]) for r in conn.execute(
                """SELECT DISTINCT a.host, a.id FROM agents a JOIN issues i ON i.owner = a.id AND i.host = a.host
                   WHERE i.status = 'claimed' AND a.heartbeat_at < ? ORDER BY a.host, a.id""",
                (now - stale_after,))]
            for host, owner in owners:
                numbers = self._release_agent(conn, now, host, owner, "agent heartbeat stale")
                if numbers:
                    freed[agent_key(owner, host, self.host)] = numbers
        return freed

    # -- reading ------------------------------------------------------------

    _issue = staticmethod(issue_from_row)

    def get(self, number: int) -> Issue:
        """The issue with that number; IssueNotFound if there is none."""
        rows = self._read("SELECT * FROM issues WHERE number = ?", (int(number),))
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
        marks = ",".join("?" * len(wanted))
        return [self._issue(r) for r in self._read(
            f"SELECT * FROM issues WHERE status IN ({marks}) ORDER BY rank, created_at, number", wanted)]

    def counts(self) -> dict[str, int]:
        """Number of issues in each status (every status present, zeros included)."""
        counts = dict.fromkeys(STATUSES, 0)
        for row in self._read("SELECT status, COUNT(*) AS n FROM issues GROUP BY status"):
            counts[row["status"]] = row["n"]
        return counts

    def events(self, number: int | None = None, limit: int | None = None) -> list[Event]:
        """The audit trail, oldest first; of one issue when ``number`` is given."""
        sql, params = "SELECT * FROM events", []
        if number is not None:
            sql, params = sql + " WHERE issue = ?", [number]
        sql += " ORDER BY id"
        if limit is not None:
            sql = f"SELECT * FROM ({sql[:-len(' ORDER BY id')]} ORDER BY id DESC LIMIT {int(limit)}) ORDER BY id"
        return [Event(**dict(r)) for r in self._read(sql, params)]

    def backup(self, target: str | os.PathLike) -> None:
        """Copy the database safely while it is in use (SQLite's backup API).

        One step under a read transaction, so the copy is one consistent state
        while agents keep writing. The copy is left in rollback-journal mode: a
        single self-contained file (a store opening it switches it to WAL).
        """
        with self._lock, self._damage_as_error():
            dest = sqlite3.connect(str(target), isolation_level=None)
            try:
                self._connect().backup(dest)
                dest.execute("PRAGMA journal_mode = DELETE")
            finally:
                dest.close()

    def quick_check(self) -> None:
        """``PRAGMA quick_check``: DatabaseDamaged unless SQLite finds the file sound."""
        with self._lock, self._damage_as_error():
            rows = [r[0] for r in self._connect().execute("PRAGMA quick_check(5)").fetchall()]
        if rows != ["ok"]:
            raise damaged(self.path, f"quick_check: {'; '.join(rows)[:200]}")
