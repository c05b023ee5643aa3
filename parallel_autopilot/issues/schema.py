"""The queue's tables, declared once: every column's name, portable type and constraint.

Both backends create the same tables (``issues``, ``events``, ``agents``, and
issue 21's ``depends`` and ``paths``) in
their own dialect and their own history of migrations (SQLite: ``sqlite.MIGRATIONS``,
PostgreSQL: ``postgres.MIGRATIONS``). A column is declared here ONCE; a migration
that creates or extends a table renders it with :func:`create_table` or
:func:`add_column` and the backend's ``TYPES``, the portable type names
(``bigint``, ``integer``, ``text``, ``float``, ``identity``) spelled in its dialect.

Migrations are history: a migration already applied somewhere must keep rendering
the same table. So a column is added at the end of its tuple, never changed in
place; a change is a new migration (and the constraint it had before is passed to
the old one explicitly, as the first version's status CHECK is).

Standard library only (the stores run in the agent containers).
"""

from __future__ import annotations

from typing import Iterable, Mapping

from .fields import PRIORITIES
from .records import STATUSES

#: A column: (name, portable type, constraint).
Column = tuple[str, str, str]


def one_of(values: Iterable[str]) -> str:
    """``('a','b')``: an IN list of text literals, as the CHECK constraints spell it."""
    return "(" + ",".join(f"'{v}'" for v in values) + ")"


def status_check(statuses: Iterable[str]) -> str:
    """The constraint of ``issues.status`` when ``statuses`` are all there are."""
    return f"NOT NULL DEFAULT 'ready' CHECK (status IN {one_of(statuses)})"


#: The first schema's statuses (verified work and the merge queue added the rest).
FIRST_STATUSES = STATUSES[:6]

ISSUES: tuple[Column, ...] = (
    ("number", "bigint", "PRIMARY KEY"),
    ("title", "text", "NOT NULL"),
    ("body", "text", "NOT NULL DEFAULT ''"),
    ("priority", "text", f"NOT NULL CHECK (priority IN {one_of(PRIORITIES)})"),
    ("rank", "integer", "NOT NULL"),  # 0 urgent .. 3 low: the claim's order
    ("script", "text", ""),
    ("status", "text", status_check(STATUSES)),
    ("attempts", "integer", "NOT NULL DEFAULT 0"),
    ("max_attempts", "integer", "NOT NULL DEFAULT 3 CHECK (max_attempts >= 1)"),
    ("due_at", "float", "NOT NULL"),  # not claimable before (backoff)
    ("owner", "text", ""),  # agent id of the lease (or of the result)
    ("token", "bigint", "NOT NULL DEFAULT 0"),  # lease fencing token, never decreases
    ("lease_until", "float", ""),
    ("heartbeat_at", "float", ""),
    ("claimed_at", "float", ""),
    ("branch", "text", ""),
    ("commit_sha", "text", ""),
    ("duration", "float", ""),
    ("error", "text", ""),
    ("created_at", "float", "NOT NULL"),
    ("updated_at", "float", "NOT NULL"),
    # every UPDATE of an issue names the event it records; the transition trigger appends it
    ("transition", "text", ""),
    ("actor", "text", ""),
    ("note", "text", ""),
    ("check_cmd", "text", ""),  # per-issue check (None: the repository's)
    ("check_status", "text", ""),  # passed | failed | timeout | none
    ("check_duration", "float", ""),
    ("check_output", "text", ""),  # the check's last lines
    ("feedback", "text", ""),  # report handed to the next attempt's prompt
    ("completed_at", "float", ""),
    ("merge_commit", "text", ""),
    ("merged_at", "float", ""),
    ("usage", "text", ""),  # JSON: model tokens/cost, summed over attempts
    ("host", "text", ""),  # the claiming agent's host (added by ALTER TABLE on both backends)
    # -- issue 21, the backlog's order: what an issue waits for (JSON lists, for showing;
    # the claim reads the tables DEPENDS and PATHS below)
    ("depends_on", "text", ""),  # JSON list of predecessor numbers
    ("paths", "text", ""),  # JSON list of the globs it touches
    # -- end of issue 21's columns
)

EVENTS: tuple[Column, ...] = (
    ("id", "identity", "PRIMARY KEY"),
    ("at", "float", "NOT NULL"),
    ("issue", "bigint", ""),
    ("kind", "text", "NOT NULL"),
    ("worker", "text", ""),
    ("token", "bigint", ""),
    ("detail", "text", ""),
)

#: Keyed by (host, id): agent ids repeat on every host of a shared queue.
AGENTS: tuple[Column, ...] = (
    ("host", "text", "NOT NULL"),
    ("id", "text", "NOT NULL"),
    ("state", "text", "NOT NULL"),
    ("issue", "bigint", ""),
    ("token", "bigint", ""),
    ("heartbeat_at", "float", "NOT NULL"),
    ("started_at", "float", "NOT NULL"),
    ("incarnation", "text", ""),
    ("pid", "integer", ""),
    ("waiting_until", "float", ""),
)
AGENTS_KEY = ("host", "id")

#: Issue 21: an issue is claimable only when every predecessor is merged (or empty).
DEPENDS: tuple[Column, ...] = (
    ("issue", "bigint", "NOT NULL"),
    ("predecessor", "bigint", "NOT NULL"),
)
DEPENDS_KEY = ("issue", "predecessor")

#: Issue 21: the globs an issue touches, with their literal prefix (what the claim compares:
#: two paths overlap when one prefix starts with the other, see store.PATHS_OVERLAP).
PATHS: tuple[Column, ...] = (
    ("issue", "bigint", "NOT NULL"),
    ("path", "text", "NOT NULL"),
    ("prefix", "text", "NOT NULL"),
)
PATHS_KEY = ("issue", "path")

#: The first agents table (both backends): keyed by id alone, host a plain column.
FIRST_AGENTS = "id state issue token heartbeat_at started_at incarnation host pid"


def columns(table: tuple[Column, ...], names: str | None = None, *, until: str | None = None) -> list[Column]:
    """The columns ``names`` (space-separated, in that order) of ``table``, or its first ones ``until`` one."""
    if names is not None:
        by_name = {c[0]: c for c in table}
        return [by_name[n] for n in names.split()]
    if until is None:
        return list(table)
    names_in_order = [c[0] for c in table]
    return list(table[:names_in_order.index(until) + 1])


def create_table(name: str, cols: Iterable[Column], types: Mapping[str, str], *,
                 key: Iterable[str] = (), **constraints: str) -> str:
    """``CREATE TABLE name (...)`` in a dialect: ``types`` spells the portable types, a
    keyword argument replaces one column's constraint (what it was in an older version),
    ``key`` a table-level primary key."""
    lines = []
    for column, kind, constraint in cols:
        constraint = constraints.pop(column, constraint)
        lines.append(" ".join(part for part in (column, types[kind], constraint) if part))
    if constraints:
        raise KeyError(f"no column(s) {', '.join(constraints)} in {name}")
    key = tuple(key)
    if key:
        lines.append(f"PRIMARY KEY ({', '.join(key)})")
    return f"CREATE TABLE {name} (\n    " + ",\n    ".join(lines) + "\n)"


def add_column(table: str, column: str, types: Mapping[str, str]) -> str:
    """``ALTER TABLE table ADD COLUMN ...`` of one declared column, in a dialect."""
    declared = {"issues": ISSUES, "events": EVENTS, "agents": AGENTS, "depends": DEPENDS, "paths": PATHS}[table]
    (_, kind, constraint), = (c for c in declared if c[0] == column)
    return " ".join(part for part in (f"ALTER TABLE {table} ADD COLUMN {column}", types[kind], constraint) if part)


def DEPENDENCY_MIGRATION(types: Mapping[str, str]) -> list[str]:  # noqa: N802 - a migration, named as one
    """Issue 21's migration, the same on both backends: the issues' JSON columns, the
    ``depends`` and ``paths`` tables and the indexes the claim looks them up by."""
    return [
        add_column("issues", "depends_on", types),
        add_column("issues", "paths", types),
        create_table("depends", DEPENDS, types, key=DEPENDS_KEY),
        "CREATE INDEX depends_predecessor ON depends (predecessor)",
        create_table("paths", PATHS, types, key=PATHS_KEY),
    ]
