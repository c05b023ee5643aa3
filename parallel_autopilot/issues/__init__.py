"""The issue queue's entrance: :func:`open_store` opens the queue at a target.

A state directory or ``.db`` path is the SQLite store (:mod:`.sqlite`, the
embedded default, one host); a ``postgresql://`` URL is the PostgreSQL store
(:mod:`.postgres`, one backlog for many hosts). Both are the one skeleton of
:mod:`.store` (every verb written once) over their own connection, and hand out
the same records (:mod:`.records`). The names callers import from here
(``IssueStore``, ``Issue``, ``Claim``, ``PRIORITIES``...) are named here too.

Standard library only: the agent containers import it; the PostgreSQL store
(pg8000) is imported only for a URL. It sits above both stores, so no store
imports it, and it hands a PostgreSQL store its backup into SQLite
(:func:`.transfer.pg_to_sqlite`): neither store imports the other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import IssueNotFound, LeaseLost  # noqa: F401 - named here too (callers)
from .filesystems import UNSAFE_FILESYSTEMS, check_filesystem, filesystem_type  # noqa: F401
from .fields import PRIORITIES, RESULT_FIELDS, validate_fields, validate_result  # noqa: F401
from .records import (
    DEFAULT_BACKOFF_SECONDS, DEFAULT_LEASE_SECONDS, DEFAULT_MAX_ATTEMPTS, STATUSES, AgentRow, Claim, Event,
    Issue, agent_key, issue_from_row,
)
from .store import spent_words  # noqa: F401 - the fleet's budget in words (agents.status)
from .sqlite import (
    DEFAULT_BUSY_TIMEOUT, MIGRATIONS, SNAPSHOT_DIR, IssueStore, damaged, inspect_file, snapshot_dir,
)

#: URL schemes of a PostgreSQL queue (libpq's two spellings).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_url(target: Any) -> bool:
    """Whether ``target`` names a PostgreSQL queue (else it is a state directory or db path)."""
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def on_this_host(store: Any, issue: Issue) -> bool:
    """Whether ``store``'s host did (or holds) ``issue``: on a queue many hosts share, only
    what its own agents claimed (the branch is in its clones); a SQLite queue is one host's."""
    return not store.shared or issue.host == store.host


def open_store(target: str | os.PathLike, *, host: str | None = None, **options: Any):
    """The issue store at ``target``: a state directory or ``.db`` path (SQLite, the
    embedded default) or a ``postgresql://`` URL (one backlog shared by many hosts).

    Both have the one public API of :class:`IssueStore`; ``host`` is the machine whose
    agents the store speaks for (None: this one's name); ``options`` are the store's
    other keyword arguments (``clock``, ``max_attempts``, ``backoff_seconds``; SQLite also
    takes ``busy_timeout``/``check_fs``, PostgreSQL ``reconnect_seconds``/``on_reconnect``).
    """
    if is_url(target):
        from . import transfer
        from .postgres import PgIssueStore  # not standard library: imported only for a URL

        # its backup is a SQLite database: the copy between backends is transfer's, above both
        return PgIssueStore(str(target), host=host, backup_into=transfer.pg_to_sqlite, **options)
    path = Path(target)
    if path.suffix != ".db" or path.is_dir():
        path = path / "autopilot.db"
    return IssueStore(path, host=host, **options)
