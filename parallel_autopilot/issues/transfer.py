"""Copying a whole backlog between the two queue backends.

- :func:`sqlite_to_pg` (``issues.migrate --to postgresql://...``): a SQLite backlog
  (issues with every column, events, agents) into an EMPTY PostgreSQL queue, in one
  transaction (all or nothing), issue numbers, tokens and event ids kept;
- :func:`pg_to_sqlite` (``PgIssueStore.backup``, which :func:`~parallel_autopilot.issues.open_store`
  hands this): a consistent snapshot of a PostgreSQL queue into a new SQLite
  database that ``IssueStore`` opens.

It knows both backends, so it sits above both: neither store imports it (nor the
other store). Rows go in chunks of ``chunk`` rows (``COPY`` into PostgreSQL);
``progress(table, done, total)`` is called after each chunk, so a large backlog
shows that it moves.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import Conflict
from .sqlite import IssueStore

TABLES = ("issues", "events", "agents", "depends", "paths")
#: Rows per chunk (and per progress call).
CHUNK = 5000

Progress = Callable[[str, int, int], None]


def _quiet(table: str, done: int, total: int) -> None:
    pass


def _copy_text(value: Any) -> str:
    """One value in COPY's text format."""
    if value is None:
        return "\\N"
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    return (text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r"))


def _chunks(rows: list, size: int) -> Iterator[list]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def sqlite_to_pg(source: IssueStore, target, progress: Progress = _quiet, chunk: int = CHUNK) -> dict[str, int]:
    """Copy every row of ``source`` into the empty PostgreSQL ``target``; rows copied per table."""
    with source._lock:  # one consistent read of the source (a WAL snapshot)
        conn = source._connect()
        conn.execute("BEGIN")
        try:
            data = {}
            for table in TABLES:
                cur = conn.execute(f"SELECT * FROM {table} ORDER BY 1")
                data[table] = ([d[0] for d in cur.description], cur.fetchall())
        finally:
            conn.execute("COMMIT")

    def op(pg):
        copied = {}
        with target._transaction(pg):
            pg.run("LOCK TABLE issues, events, agents, depends, paths IN EXCLUSIVE MODE")  # nobody adds meanwhile
            held = {t: pg.run(f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}
            if any(held.values()):
                raise Conflict(f"{target.url} is not empty ({held['issues']} issues, {held['events']} events, "
                               f"{held['agents']} agents): migrate into a new, empty database")
            for table in TABLES:
                columns, rows = data[table]
                present = {r[0] for r in pg.run(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = :t", t=table)}
                missing = [c for c in columns if c not in present]
                if missing:
                    raise Conflict(f"{target.url} has no column(s) {', '.join(missing)} in {table}: "
                                   "upgrade parallel-autopilot where the PostgreSQL schema is made")
                done = 0
                for part in _chunks(rows, chunk):
                    text = "".join("\t".join(_copy_text(v) for v in row) + "\n" for row in part)
                    pg.run(f"COPY {table} ({', '.join(columns)}) FROM STDIN", stream=io.StringIO(text))
                    done += len(part)
                    progress(table, done, len(rows))
                copied[table] = len(rows)
            # new events continue after the copied ids
            pg.run("SELECT setval(pg_get_serial_sequence('events', 'id'), COALESCE(MAX(id), 0) + 1, false) "
                   "FROM events")
        return copied

    copied = target._retrying(op, uncertain_ok=False)
    target._analyze()
    return copied


def pg_to_sqlite(source, path: str | os.PathLike, progress: Progress = _quiet, chunk: int = CHUNK
                 ) -> dict[str, int]:
    """Write a consistent snapshot of the PostgreSQL ``source`` into a NEW SQLite database."""
    path = Path(path)
    if path.exists():
        raise Conflict(f"{path} exists: back up into a new file")

    def read(pg):
        pg.run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            data = {}
            for table in TABLES:
                rows = pg.run(f"SELECT * FROM {table} ORDER BY 1")
                data[table] = ([c["name"] for c in pg.columns], rows)
        finally:
            source._rollback(pg)
        return data

    data = source._retrying(read)
    copied = {}
    with IssueStore(path, check_fs=False) as dest, dest.transaction() as conn:
        for table in TABLES:
            columns, rows = data[table]
            present = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            keep = [i for i, c in enumerate(columns) if c in present]
            names = ", ".join(columns[i] for i in keep)
            marks = ", ".join("?" * len(keep))
            done = 0
            for part in _chunks(rows, chunk):
                conn.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})",
                                 [[row[i] for i in keep] for row in part])
                done += len(part)
                progress(table, done, len(rows))
            copied[table] = len(rows)
    return copied
