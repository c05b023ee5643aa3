"""The queue's records: what both stores (SQLite and PostgreSQL) hand out, and their defaults.

Standard library only (the stores run in the agent containers). One conversion
from a stored row to an :class:`Issue` serves both backends.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from .. import defaults as _defaults

STATUSES = ("ready", "claimed", "done", "failed", "dead", "blocked", "empty", "merged", "rejected")
DEFAULT_LEASE_SECONDS = _defaults.LEASE_SECONDS
DEFAULT_MAX_ATTEMPTS = _defaults.MAX_ATTEMPTS
DEFAULT_BACKOFF_SECONDS = float(_defaults.BACKOFF_SECONDS)
DEFAULT_AGING_SECONDS = float(_defaults.AGING_SECONDS)


@dataclass(frozen=True)
class Issue:
    """One issue, as stored."""

    number: int
    title: str
    body: str
    priority: str
    script: str | None
    status: str
    attempts: int
    max_attempts: int
    due_at: float
    owner: str | None
    token: int
    lease_until: float | None
    heartbeat_at: float | None
    claimed_at: float | None
    branch: str | None
    commit: str | None
    duration: float | None
    error: str | None
    created_at: float
    updated_at: float
    check: str | None = None  # this issue's check command (None: the repository's)
    check_status: str | None = None  # passed | failed | timeout | none (no check configured)
    check_duration: float | None = None
    check_output: str | None = None  # the check's last lines
    feedback: str | None = None  # the report the next attempt's prompt carries
    completed_at: float | None = None
    merge_commit: str | None = None
    merged_at: float | None = None
    usage: dict | None = None  # model usage summed over attempts (tokens, cost)
    host: str | None = None  # the host of the agent that (last) claimed it; None: never claimed
    # issue 21: the backlog's order
    depends_on: list = field(default_factory=list)  # numbers it waits for (each merged first)
    paths: list = field(default_factory=list)  # globs it touches (kept apart from overlapping in-flight issues)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Claim:
    """A lease on one issue: who holds it, with which token, until when."""

    issue: Issue
    token: int
    worker: str
    lease_until: float

    @property
    def number(self) -> int:
        return self.issue.number


@dataclass(frozen=True)
class Event:
    """One row of the append-only audit trail."""

    id: int
    at: float
    issue: int | None
    kind: str
    worker: str | None
    token: int | None
    detail: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AgentRow:
    """What an agent last said about itself (its heartbeat); keyed by (host, id)."""

    id: str
    state: str
    issue: int | None
    token: int | None
    heartbeat_at: float
    started_at: float
    incarnation: str | None
    host: str | None
    pid: int | None
    waiting_until: float | None = None  # state "quota": waiting for a model limit to reset

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def agent_key(agent_id: str, host: str | None, own_host: str) -> str:
    """How a result names an agent: ``agent-001`` on ``own_host``, ``agent-001@ws2`` on another."""
    return agent_id if host == own_host else f"{agent_id}@{host}"


_ISSUE_FIELDS = frozenset(Issue.__dataclass_fields__)
#: The issue's REAL columns: SQLite's RETURNING hands back a whole-number REAL as an
#: integer (3.40), a SELECT as a float; an Issue holds the float either way.
_FLOAT_FIELDS = ("due_at", "lease_until", "heartbeat_at", "claimed_at", "duration", "created_at", "updated_at",
                 "check_duration", "completed_at", "merged_at")


def issue_from_row(row: Mapping[str, Any]) -> Issue:
    """The :class:`Issue` of one ``issues`` row (a sqlite3.Row or a dict of column -> value).

    The store's own bookkeeping columns (rank, transition, actor, note, claim_nonce) are
    left out, and so is a column a newer version added (one host upgraded before the
    others): it is not ours to show.
    """
    data = dict(row)
    data["commit"] = data.pop("commit_sha")
    data["check"] = data.pop("check_cmd", None)
    if data.get("usage"):
        data["usage"] = json.loads(data["usage"])
    for name in ("depends_on", "paths"):
        data[name] = json.loads(data[name]) if data.get(name) else []
    for name in _FLOAT_FIELDS:
        if isinstance(data.get(name), int):
            data[name] = float(data[name])
    return Issue(**{k: v for k, v in data.items() if k in _ISSUE_FIELDS})
