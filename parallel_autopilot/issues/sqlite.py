"""The shared issue queue on SQLite: one database file, one host's agents.

(Open a queue with :func:`parallel_autopilot.issues.open_store`: it picks this
store or the PostgreSQL one. The verbs, their rules and their SQL are
:class:`~parallel_autopilot.issues.store.Store`'s, written once for both: read
:mod:`.store` first.)

Standard library only: the same module runs on the host and in every agent
container, all of them on one database in a bind-mounted DIRECTORY.

What is SQLite's own, here:

- **Claim**: three statements beside :meth:`IssueStore._claim`. An idle agent
  polls often, so "nothing to do" is answered by a read (``_ANYTHING``) without
  the write lock; abandoned issues on their last attempt are buried
  (``_BURY``); then ONE ``UPDATE ... RETURNING`` (``_CLAIM``, atomic on its own:
  the pick is a subquery of the UPDATE) leases the best eligible issue.
- **Transactions**: ``isolation_level=None``; one statement is its own
  transaction, a read that leads to writes runs under ``BEGIN IMMEDIATE``
  (:meth:`IssueStore.transaction`), which holds the database's write lock from
  the start; a busy timeout (30 s) waits for it.
- **The file**: WAL, set when the database is created; ``PRAGMA user_version``
  numbers the schema (:data:`MIGRATIONS`), ``PRAGMA application_id`` tells this
  database from another's WAL. A damaged or foreign file is refused before
  SQLite touches it (:func:`inspect_file`), and SQLite's "malformed" becomes
  :class:`DatabaseDamaged`; ``quick_check`` and ``backup`` (SQLite's online
  backup API) serve the snapshots (:mod:`.snapshots`).
- **Hosts**: a SQLite queue is one host's (``store.shared`` is False).
- **Connections**: no transaction is held across agent work; a store used after
  ``fork()`` reconnects instead of sharing the parent's connection; a file
  replaced under an open store (``issues.restore``) is followed, never closed
  under SQLite's feet.
"""

from __future__ import annotations

import os
import random
import sqlite3
import struct
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from ..errors import DatabaseDamaged
from .filesystems import check_filesystem
from . import forksafe
from .records import DEFAULT_BACKOFF_SECONDS, DEFAULT_MAX_ATTEMPTS
from .schema import (
    DEPENDENCY_MIGRATION,
    AGENTS, AGENTS_KEY, EVENTS, FIRST_AGENTS, FIRST_STATUSES, ISSUES, add_column, columns, create_table, status_check,
)
from .store import STORES, Row, Run, Store, claim_order, startable

_STARTABLE = startable("i")
#: The claim's arms (:attr:`IssueStore._CLAIM`): per status and rank, the first startable
#: issue in the index's order; abandoned = claimed, and the lease expired or the owner's heartbeat stale.
_ARMS = "\n                UNION ALL\n".join(
    f"""SELECT * FROM (SELECT number, rank, created_at FROM issues i
                       WHERE status = '{status}' AND rank = {rank} AND attempts < max_attempts AND {when}
                         AND {_STARTABLE}
                       ORDER BY created_at, number LIMIT 1)"""
    for status, when in (
        ("ready", "due_at <= :now"), ("failed", "due_at <= :now"),
        ("claimed", """(lease_until <= :now
                             OR EXISTS (SELECT 1 FROM agents a WHERE a.host = i.host AND a.id = i.owner
                                                                AND a.heartbeat_at < :stale_before))"""))
    for rank in range(4))

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
    # 6 (issue 21): dependencies and the paths an issue touches (the claim reads the tables;
    # the issue's JSON columns say the same for showing)
    DEPENDENCY_MIGRATION(TYPES),
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



class IssueStore(Store):
    """The shared issue queue in the SQLite database at ``path``.

    The parent directory is created if missing and must be on a local
    filesystem. ``host`` is the machine whose agents this store speaks for
    (default: this one's name). ``migrations`` is the schema's history this
    store upgrades a database to (default :data:`MIGRATIONS`; an older copy of
    parallel-autopilot is a store with fewer). Thread-safe (one connection
    behind a lock); fork-safe (a child process opens its own connection).
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
        migrations: Sequence[str | Sequence[str]] | None = None,
        aging_seconds: float | None = None,
    ):
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.migrations = MIGRATIONS if migrations is None else migrations
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if check_fs:
            check_filesystem(self.path.parent)
        self._id: tuple[int, int] | None = None  # (device, inode) of the file the connection opened
        super().__init__(host=host, clock=clock, max_attempts=max_attempts, backoff_seconds=backoff_seconds,
                         where=str(self.path), aging_seconds=aging_seconds)
        self._inspect()
        with self._damage_as_error():
            self._connect()

    # -- connection ---------------------------------------------------------

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
                other is not self and isinstance(other, IssueStore) and other._conn is not None
                and other._pid == os.getpid() and other._id == file_id for other in list(STORES)):
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
            forksafe.INHERITED.append(self._conn)
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
        self._check_version(version)
        if version == len(self.migrations) and conn.execute("PRAGMA application_id").fetchone()[0]:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._upgrade(conn.execute("PRAGMA user_version").fetchone()[0], conn.execute,
                          lambda number: conn.execute(f"PRAGMA user_version = {number}"))
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

    # -- the connector --------------------------------------------------------

    def _write(self, sql: str, params: Mapping[str, Any], verify: Callable[[Run], Row | None] | None = None
               ) -> sqlite3.Row | None:
        """ONE write statement in its own implicit transaction; its first returned row.

        (``verify`` is for a lost reply: a local file loses none.)
        """
        with self._lock, self._damage_as_error():
            return self._connect().execute(sql, params).fetchone()

    def _read(self, sql: str, params: Iterable[Any] | Mapping[str, Any] = ()) -> list[sqlite3.Row]:
        params = params if isinstance(params, Mapping) else tuple(params)
        with self._lock, self._damage_as_error():
            return self._connect().execute(sql, params).fetchall()

    def _atomic(self, work: Callable[[Run], Any], once: bool = False) -> Any:
        with self.transaction() as conn:
            return work(lambda sql, params: conn.execute(sql, params).fetchall())

    def close(self) -> None:
        """Close this process's connection (an inherited one is left alone)."""
        with self._lock:
            self._discard_inherited()
            if self._conn is not None:
                self._conn.close()
            self._conn = None

    # -- the claim --------------------------------------------------------------

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
    #: Issue 21: one arm per status AND rank (the index's order within a rank is the
    #: aging order, :data:`~.store.AGING`), each only over startable issues
    #: (:func:`~.store.startable`: predecessors landed, no overlapping issue in flight);
    #: the best of the arms' heads by the aging order wins.
    _CLAIM = f"""
        UPDATE issues SET status = 'claimed', owner = :worker, host = :host, token = token + 1,
               attempts = attempts + 1, lease_until = :until, heartbeat_at = :now,
               claimed_at = :now, updated_at = :now, transition = 'claimed', actor = :worker,
               note = 'attempt ' || (attempts + 1) || ' of ' || max_attempts
        WHERE number = (
            SELECT number FROM ({_ARMS}) c
            ORDER BY {claim_order("c")} LIMIT 1)
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
    _ANYTHING = f"""
        SELECT EXISTS (SELECT 1 FROM issues i WHERE status = 'ready' AND due_at <= :now
                                                      AND attempts < max_attempts AND {_STARTABLE})
            OR EXISTS (SELECT 1 FROM issues i WHERE status = 'failed' AND due_at <= :now
                                                   AND attempts < max_attempts AND {_STARTABLE})
            OR EXISTS (SELECT 1 FROM issues i
                       WHERE status = 'claimed' AND attempts < max_attempts AND {_STARTABLE}
                         AND (lease_until <= :now
                              OR EXISTS (SELECT 1 FROM agents a WHERE a.host = i.host AND a.id = i.owner
                                                                 AND a.heartbeat_at < :stale_before))),
               EXISTS (SELECT 1 FROM issues i
                       WHERE status = 'claimed' AND attempts >= max_attempts
                         AND (lease_until <= :now
                              OR EXISTS (SELECT 1 FROM agents a WHERE a.host = i.host AND a.id = i.owner
                                                                 AND a.heartbeat_at < :stale_before)))"""

    def _claim(self, worker: str, lease_seconds: float, now: float | None,
               stale_after: float | None) -> sqlite3.Row | None:
        """The row :meth:`Store.claim` leased, or None: a read, a burial if due, then ONE UPDATE."""
        params = {"now": now, "stale_before": None if stale_after is None else now - stale_after}
        claimable, to_bury = self._read(self._ANYTHING, params)[0]
        if to_bury:
            self._write(self._BURY, params)
        if not claimable:
            return None
        return self._write(self._CLAIM, {**params, "worker": worker, "host": self.host, "until": now + lease_seconds,
                                         "aging": self.aging_seconds})

    # -- the file ---------------------------------------------------------------

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
