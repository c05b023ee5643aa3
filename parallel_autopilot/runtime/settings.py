"""The runtime's settings, read once from ``AUTOPILOT_*`` environment variables.

The compose file sets them (see ``docs/development/parallel-autopilot-containers.md``);
every one except the first four has a default, so a runtime can also be
started by hand on the host. A bad value is an :class:`InvalidInput` whose one
line names the variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .. import defaults
from ..errors import InvalidInput
from ..ids import agent_id
from ..issues import DEFAULT_BACKOFF_SECONDS, DEFAULT_LEASE_SECONDS, DEFAULT_MAX_ATTEMPTS
from ..issues.urls import read_url_file

KINDS = defaults.AGENT_KINDS


@dataclass(frozen=True)
class RuntimeSettings:
    """Everything the runtime needs; build it with :meth:`from_env`."""

    agent_id: str
    db: Path | None  # the SQLite queue, when mounted (queue_access: mount); None: through the gateway
    workspace: Path
    logs: Path
    base_branch: str = "main"
    kind: str = "script"
    command: str | None = None
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_seconds: float = DEFAULT_BACKOFF_SECONDS
    issue_timeout: float = float(defaults.DEFAULTS["issue_timeout"])
    poll_seconds: float = float(defaults.DEFAULTS["poll_seconds"])
    watchdog_seconds: float = float(defaults.DEFAULTS["watchdog_seconds"])
    grace_seconds: float = 10.0
    heartbeat_file: Path = Path("/run/autopilot/heartbeat")
    credentials: Path = Path("/run/credentials")
    stale_seconds: float = 6.0
    snapshot_seconds: float = 600.0  # one agent snapshots the database this often (0: never)
    snapshots_kept: int = 10
    # model CLIs (kinds codex and claude): endpoint, model, the CLI's own retries
    openai_base_url: str | None = None
    anthropic_base_url: str | None = None
    model: str | None = None
    model_retries: int | None = None
    quota_backoff_seconds: float = float(defaults.DEFAULTS["quota_backoff_seconds"])
    check: str | None = None  # the repository's check (an issue's own `check` wins)
    check_timeout: float = float(defaults.DEFAULTS["check_timeout"])
    # A file holding the postgresql:// URL of a shared queue (mounted read-only): the URL
    # carries a password, so it never travels in the environment or the compose file.
    queue_file: Path | None = None
    # the workstation these agents run on (AUTOPILOT_HOST): on a shared queue an agent is
    # (host, id); None (a runtime started by hand) is the store's default, this machine's name
    host: str | None = None
    # the agent's own socket of the queue gateway (queue_access: gateway, the default): the
    # agent reaches the queue only through it (parallel_autopilot/issues/gateway.py)
    queue_socket: Path | None = None
    # budgets (issue 21): an issue's own budget wins over these defaults; None: no limit
    budget_tokens: int | None = None
    budget_usd: float | None = None
    # one quota per login (issue 21): the keyed fingerprint of this agent's model credential
    login: str | None = None

    @property
    def renew_seconds(self) -> float:
        """How often the lease is renewed: a third of it, so two renewals may fail."""
        return self.lease_seconds / 3

    @property
    def report_seconds(self) -> float:
        """How often the agents table hears from us (also while idle)."""
        return min(self.renew_seconds, 1.0)

    @property
    def stall_seconds(self) -> float:
        """Loop silence after which the heartbeat file is no longer touched (health goes red)."""
        return max(2.0, min(30.0, self.watchdog_seconds / 2))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "RuntimeSettings":
        """Read the settings from ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ

        def required(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise InvalidInput(f"{name} is not set: the compose file (or you) must set it")
            return value

        def number(name: str, default: float, minimum: float = 0.0, integer: bool = False):
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = int(raw) if integer else float(raw)
            except ValueError:
                kind = "an integer" if integer else "a number"
                raise InvalidInput(f"{name}={raw!r} is not {kind}: set it to e.g. {default:g}") from None
            if value < minimum:
                raise InvalidInput(f"{name}={raw!r} is too small: use {minimum:g} or more")
            return value

        kind = env.get("AUTOPILOT_AGENT_KIND", "").strip() or "script"
        if kind not in KINDS:
            raise InvalidInput(f"AUTOPILOT_AGENT_KIND={kind!r} is unknown: use one of {', '.join(KINDS)}")
        socket_path = Path(env["AUTOPILOT_QUEUE_SOCKET"].strip()) \
            if env.get("AUTOPILOT_QUEUE_SOCKET", "").strip() else None
        command = env.get("AUTOPILOT_AGENT_COMMAND", "").strip() or None
        if kind == "command" and not command:
            raise InvalidInput("AUTOPILOT_AGENT_KIND=command needs AUTOPILOT_AGENT_COMMAND "
                               "(e.g. 'my-agent --issue {number} {title}')")
        return cls(
            agent_id=agent_id(required("AUTOPILOT_AGENT_ID")),
            db=None if socket_path else Path(required("AUTOPILOT_DB")),
            workspace=Path(required("AUTOPILOT_WORKSPACE")),
            logs=Path(required("AUTOPILOT_LOGS")),
            base_branch=env.get("AUTOPILOT_BASE_BRANCH", "").strip() or "main",
            kind=kind,
            command=command,
            lease_seconds=number("AUTOPILOT_LEASE_SECONDS", DEFAULT_LEASE_SECONDS, 0.3),
            max_attempts=number("AUTOPILOT_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, 1, integer=True),
            backoff_seconds=number("AUTOPILOT_BACKOFF_SECONDS", DEFAULT_BACKOFF_SECONDS),
            issue_timeout=number("AUTOPILOT_ISSUE_TIMEOUT", float(defaults.DEFAULTS["issue_timeout"]), 0.1),
            poll_seconds=number("AUTOPILOT_POLL_SECONDS", 0.5, 0.01),
            watchdog_seconds=number("AUTOPILOT_WATCHDOG_SECONDS", float(defaults.DEFAULTS["watchdog_seconds"]), 1.0),
            grace_seconds=number("AUTOPILOT_GRACE_SECONDS", 10.0),
            heartbeat_file=Path(env.get("AUTOPILOT_HEARTBEAT_FILE", "").strip() or "/run/autopilot/heartbeat"),
            credentials=Path(env.get("AUTOPILOT_CREDENTIALS", "").strip() or "/run/credentials"),
            stale_seconds=number("AUTOPILOT_STALE_SECONDS", 6.0),
            snapshot_seconds=number("AUTOPILOT_SNAPSHOT_SECONDS", 600.0),
            snapshots_kept=number("AUTOPILOT_SNAPSHOTS_KEPT", 10, 1, integer=True),
            openai_base_url=_url(env, "AUTOPILOT_OPENAI_BASE_URL"),
            anthropic_base_url=_url(env, "AUTOPILOT_ANTHROPIC_BASE_URL"),
            model=env.get("AUTOPILOT_MODEL", "").strip() or None,
            model_retries=(number("AUTOPILOT_MODEL_RETRIES", 0, 0, integer=True)
                           if env.get("AUTOPILOT_MODEL_RETRIES", "").strip() else None),
            quota_backoff_seconds=number("AUTOPILOT_QUOTA_BACKOFF_SECONDS", float(defaults.DEFAULTS["quota_backoff_seconds"]), 0.1),
            check=env.get("AUTOPILOT_CHECK", "").strip() or None,
            check_timeout=number("AUTOPILOT_CHECK_TIMEOUT", float(defaults.DEFAULTS["check_timeout"]), 0.1),
            queue_file=Path(env["AUTOPILOT_QUEUE_FILE"].strip())
            if env.get("AUTOPILOT_QUEUE_FILE", "").strip() else None,
            host=env.get("AUTOPILOT_HOST", "").strip() or None,
            queue_socket=socket_path,
            budget_tokens=(number("AUTOPILOT_BUDGET_TOKENS", 0, 1, integer=True)
                           if env.get("AUTOPILOT_BUDGET_TOKENS", "").strip() else None),
            budget_usd=(number("AUTOPILOT_BUDGET_USD", 0.0, 1e-9)
                        if env.get("AUTOPILOT_BUDGET_USD", "").strip() else None),
            login=env.get("AUTOPILOT_LOGIN", "").strip().lower() or None,
        )

    def queue_target(self) -> str | Path:
        """The queue the agent claims from when it opens one itself (``queue_access: mount``):
        the URL in ``queue_file`` if one is named (PostgreSQL), else the SQLite database ``db``."""
        if self.queue_file is None:
            if self.db is None:
                raise InvalidInput("neither AUTOPILOT_QUEUE_SOCKET nor AUTOPILOT_DB is set: "
                                   "start agents with `inv agents.start`")
            return self.db
        return read_url_file(self.queue_file)


def _url(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    if not value.startswith(("http://", "https://")):
        raise InvalidInput(f"{name}={value!r} is not a URL: use http(s)://host:port[/path]")
    return value.rstrip("/")
