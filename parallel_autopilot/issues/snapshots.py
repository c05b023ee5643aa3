"""Rotating snapshots of the issue database, and bringing one back.

Standard library only: the host takes one at every ``agents.start`` and on
``issues.backup``; while agents run, the runtime takes one every
``EVERY_SECONDS`` (whichever agent first finds the newest snapshot too old and
gets the lock file; the others skip). Snapshots are whole databases made with
SQLite's online backup API (a consistent copy while agents write), written
under a temporary name and renamed, checked with ``PRAGMA quick_check``; the
newest ``KEEP`` are kept in ``<state_dir>/snapshots/``::

    take(store)                       # -> snapshots/autopilot-20261201-185012-123.db
    take_if_due(store, every=600)     # None when a fresh one exists or another agent takes it
    restore(db_path)                  # the latest; the current file is moved aside, never deleted
"""

from __future__ import annotations

import calendar
import fcntl
import os
import sqlite3
import time
from pathlib import Path

from ..errors import InvalidInput, NotFound
from .sqlite import IssueStore, damaged, inspect_file, snapshot_dir

EVERY_SECONDS = 600.0  # while agents run
KEEP = 10
PREFIX = "autopilot-"


def list_snapshots(db: Path) -> list[Path]:
    """The snapshots of the database at ``db``, oldest first (the names sort by time)."""
    directory = snapshot_dir(db)
    return sorted(directory.glob(f"{PREFIX}*.db")) if directory.is_dir() else []


def _stamp(now: float) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"-{int(now * 1000) % 1000:03d}"


def check(path: Path) -> dict:
    """Issue and event counts of a snapshot that is sound (read-only), or DatabaseDamaged."""
    inspect_file(path)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
        if rows != ["ok"]:
            raise damaged(path, f"quick_check: {'; '.join(rows)[:200]}")
        return {"issues": conn.execute("SELECT count(*) FROM issues").fetchone()[0],
                "events": conn.execute("SELECT count(*) FROM events").fetchone()[0]}
    except sqlite3.DatabaseError as err:
        raise damaged(path, str(err)) from None
    finally:
        conn.close()


def take(store: IssueStore, keep: int = KEEP, now: float | None = None) -> Path:
    """Snapshot the store's database now; keep the newest ``keep``; the snapshot's path."""
    now = time.time() if now is None else now
    directory = snapshot_dir(store.path)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{PREFIX}{_stamp(now)}.db"
    partial = directory / f".partial-{os.getpid()}-{final.name}"
    try:
        store.backup(partial)
        check(partial)
        os.replace(partial, final)  # a reader never sees half a snapshot
    finally:
        partial.unlink(missing_ok=True)
    for old in list_snapshots(store.path)[:-max(keep, 1)]:
        old.unlink(missing_ok=True)
    return final


def at_start(store: IssueStore, progress=lambda _: None, keep: int = KEEP) -> Path:
    """What ``agents.start`` does first: ``PRAGMA quick_check``, then a snapshot."""
    store.quick_check()
    path = take(store, keep)
    progress(f"database checked, snapshot {path.name}")
    return path


def take_if_due(store: IssueStore, every: float = EVERY_SECONDS, keep: int = KEEP,
                now: float | None = None) -> Path | None:
    """Take a snapshot unless the newest is younger than ``every`` s or another process is taking one.

    Many agents call this; the lock file (``flock``, released when its
    holder dies) makes one of them do it and the rest go on at once.
    """
    now = time.time() if now is None else now
    if not _due(store.path, every, now):
        return None
    directory = snapshot_dir(store.path)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        if not _due(store.path, every, now):  # someone took one while we looked
            return None
        return take(store, keep, now)


def taken_at(path: Path) -> float:
    """When a snapshot was taken (from its name: the clock of whoever took it)."""
    stamp = path.name[len(PREFIX):-len(".db")]
    try:
        return calendar.timegm(time.strptime(stamp[:15], "%Y%m%d-%H%M%S")) + int(stamp[16:19]) / 1000
    except ValueError:
        return path.stat().st_mtime


def _due(db: Path, every: float, now: float) -> bool:
    newest = list_snapshots(db)[-1:]
    return not newest or now - taken_at(newest[0]) >= every


def resolve(db: Path, name: str | None = None) -> Path:
    """The snapshot to restore: the latest, or the one named (file name or path)."""
    found = list_snapshots(db)
    if name is None:
        if not found:
            raise NotFound(f"no snapshot in {snapshot_dir(db)}: take one with `parallel-autopilot issues.backup`")
        return found[-1]
    path = Path(name)
    if not path.is_absolute() and not path.exists():
        path = snapshot_dir(db) / name
    if not path.is_file():
        names = ", ".join(p.name for p in found[-3:]) or "none"
        raise InvalidInput(f"no snapshot {name!r}: give a file in {snapshot_dir(db)} (latest: {names}) "
                           "or omit it for the latest")
    return path


def restore(db: Path, snapshot: Path, now: float | None = None) -> dict:
    """Put ``snapshot`` in place of the database at ``db``; the current file is moved aside.

    The caller makes sure no agent runs and closes its own connections. The
    snapshot is copied under a temporary name and synced; then the current
    database (and its -wal/-shm, which belong to it) is renamed to
    ``autopilot.db.before-restore-<time>`` (its -wal/-shm get the same name
    plus their suffix, so SQLite can still open it) and the copy renamed into place.
    """
    now = time.time() if now is None else now
    db = Path(db)
    counts = check(snapshot)
    aside = db.with_name(f"{db.name}.before-restore-{_stamp(now)}")
    partial = db.with_name(f".{db.name}.restoring")
    kept = []
    try:
        with open(snapshot, "rb") as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        for suffix in ("", "-wal", "-shm"):
            current = Path(f"{db}{suffix}")
            if current.exists():
                target = Path(f"{aside}{suffix}")
                os.replace(current, target)
                kept.append(str(target))
        os.replace(partial, db)
    finally:
        partial.unlink(missing_ok=True)
    return {"restored": str(snapshot), "db": str(db), "kept_aside": kept, **counts}
