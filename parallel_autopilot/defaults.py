"""The one table of setting defaults, shared by the host (config.py) and the
in-container runtime (runtime/settings.py). Standard library only: the runtime
imports it inside the container, where neither yaml nor invoke exist.

Each row: key -> (default, kind, check). ``kind`` is the type config.load coerces
to (int, float, bool, str, path, list); ``check`` is a :class:`Range`, a tuple of
choices, or a format name ("memory", "project", "queue", "http"). A ``None``
default means "unset/detect" and makes the key None-able.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

LEASE_SECONDS = 900  # the design's 15-minute claim expiry
MAX_ATTEMPTS = 3
BACKOFF_SECONDS = 30
AGING_SECONDS = 3600  # issue 21: an issue gains one priority step per hour of waiting (store.AGING)
AGENT_KINDS = ("script", "codex", "claude", "command")



class Range(NamedTuple):
    """The numbers a key takes: from ``low`` to ``high`` (None: open), ``low`` itself only if ``low_inclusive``."""

    low: float | None
    high: float | None = None
    low_inclusive: bool = True


POSITIVE = Range(0, None, low_inclusive=False)  # > 0
NON_NEGATIVE = Range(0)  # >= 0
AT_LEAST_1 = Range(1)
PORT = Range(1, 65535)

TABLE: dict[str, tuple[Any, str, Any]] = {
    "repo": (None, "path", None),
    "state_dir": (".autopilot", "path", None),
    "queue": (None, "str", "queue"),
    "host": (None, "str", None),  # whose agents these are on a shared queue; None: the hostname
    "worktrees_dir": (".worktrees", "path", None),
    "logs_dir": ("docs/logs", "path", None),
    "base_branch": (None, "str", None),
    "lease_seconds": (LEASE_SECONDS, "float", POSITIVE),
    "max_attempts": (MAX_ATTEMPTS, "int", AT_LEAST_1),
    "backoff_seconds": (BACKOFF_SECONDS, "float", NON_NEGATIVE),
    "aging_seconds": (AGING_SECONDS, "float", POSITIVE),  # issue 21
    "agent_kind": ("script", "str", AGENT_KINDS),
    "agent_command": (None, "str", None),
    "issue_timeout": (3600, "float", POSITIVE),
    "check": (None, "str", None),
    "check_timeout": (600, "float", POSITIVE),
    "merge_batch": (1, "int", AT_LEAST_1),
    "merge_requeue": (False, "bool", None),
    "merge_poll_seconds": (5, "float", POSITIVE),
    "merge_check_runner": ("container", "str", ("container", "host")),
    "poll_seconds": (0.5, "float", POSITIVE),
    "watchdog_seconds": (120, "float", POSITIVE),
    "image": ("parallel-autopilot:latest", "str", None),
    "base_image": ("python:3.11-slim", "str", None),
    "agent_cli": ("none", "str", ("none", "codex", "claude", "all")),
    "cli_cache": ("~/.cache/parallel-autopilot/cli", "path", None),
    "openai_base_url": (None, "str", "http"),
    "anthropic_base_url": (None, "str", "http"),
    "agent_model": (None, "str", None),
    "model_retries": (None, "int", NON_NEGATIVE),
    "quota_backoff_seconds": (60, "float", POSITIVE),
    # budgets (issue 21): an issue's default budget (its own budget_tokens/budget_usd win) and the
    # fleet run's (agents.start starts it); None: no limit
    "budget_tokens": (None, "int", AT_LEAST_1),
    "budget_usd": (None, "float", POSITIVE),
    "fleet_budget_tokens": (None, "int", AT_LEAST_1),
    "fleet_budget_usd": (None, "float", POSITIVE),
    "profile": ("auto", "str", ("auto", "light", "full")),
    "memory": (None, "str", "memory"),
    "cpus": (None, "float", POSITIVE),
    "pids_limit": (512, "int", AT_LEAST_1),
    "max_agents": (None, "int", AT_LEAST_1),
    "stop_grace_seconds": (30, "float", NON_NEGATIVE),
    "health_interval_seconds": (2, "float", POSITIVE),
    "start_timeout_seconds": (120, "float", POSITIVE),
    "network": ("bridge", "str", None),
    # which Docker Compose runs the agents: auto (v2, `docker compose`, when it answers; else
    # v1, `docker-compose`), or v2 / v1 to insist
    "compose": ("auto", "str", ("auto", "v2", "v1")),
    # gateway: agents reach the queue only through their own socket of the fleet's gateway;
    # mount: every agent mounts the state directory (or the queue's URL): trusts every agent
    "queue_access": ("gateway", "str", ("gateway", "mount")),
    "project": (None, "str", "project"),
    "codex_home": ("~/.codex", "path", None),
    "ssh_dir": ("~/.ssh", "path", None),
    "gitconfig": ("~/.gitconfig", "path", None),
    "env_file": (None, "path", None),
    "gui_host": ("127.0.0.1", "str", None),
    "gui_port": (8787, "int", PORT),
    "remote_dir": ("~/parallel-autopilot", "str", None),
    "remote_python": (None, "str", None),
    "remote_repo": (None, "str", None),
    "remote_hosts": (None, "list", None),
    "remote_origin": (None, "str", None),
    "remote_connect_timeout": (15, "float", POSITIVE),
    # a word when someone is needed (notify.py): a command given the event's JSON on stdin,
    # and/or a URL it is POSTed to
    "notify_command": (None, "str", None),
    "notify_webhook": (None, "str", "http"),
    "notify_stuck_seconds": (600, "float", POSITIVE),  # an agent silent (no heartbeat) this long is stuck
}

DEFAULTS: dict[str, Any] = {key: row[0] for key, row in TABLE.items()}

# -- the one rule for a memory size (config.load checks with it, platform.parse_memory converts)

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmg]?)b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def memory_bytes(value: Any) -> int | None:
    """Bytes of a docker memory size (``12g``, ``512m``, ``1.5g``, ``65536k``, 1024); None if it is none.

    Docker's own units only (b, k, m, g; an optional trailing b), above zero.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value > 0 else None
    match = _MEMORY.match(value) if isinstance(value, str) else None
    if not match or float(match.group(1)) <= 0:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()]) or None
