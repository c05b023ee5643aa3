"""The one configuration of parallel-autopilot.

Every edge (``inv``, the ``parallel-autopilot`` program, ``fab`` and the GUI)
builds a :class:`Settings` the same way: the defaults below, then the
``autopilot:`` section of invoke's configuration (``/etc/invoke.yaml``,
``~/.invoke.yaml``, the target repository's ``invoke.yaml``, ``INVOKE_AUTOPILOT_*``
variables), then explicit arguments. Relative paths are relative to the target
repository, which defaults to the git top level of the current directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from . import git
from .errors import GitError, InvalidInput

#: Defaults, also installed with ``Collection.configure({"autopilot": DEFAULTS})``
#: so ``inv --help``/config dumps show them. ``None`` means "detect".
DEFAULTS: dict[str, Any] = {
    "repo": None,  # target repository; None = git top level of the cwd
    "state_dir": ".autopilot",  # holds autopilot.db (a DIRECTORY is bind-mounted)
    "queue": None,  # None = SQLite in state_dir; postgresql://user@host/db = one backlog for many hosts
    "worktrees_dir": ".worktrees",
    "logs_dir": "docs/logs",
    "base_branch": None,  # None = the repository's current branch
    "lease_seconds": 900,  # the design's 15-minute claim expiry
    "max_attempts": 3,
    "backoff_seconds": 30,
    "agent_kind": "script",  # script | codex | claude | command
    "agent_command": None,  # template for kind "command", e.g. "my-agent {number} {title}"
    "issue_timeout": 3600,
    # verified work (issue 10): the repository's check, run after every attempt and on
    # every merge candidate; an issue's own `check:` wins. None = no check (done on exit 0
    # with a change). E.g. "python -m pytest -q".
    "check": None,
    "check_timeout": 600,  # seconds; a check that runs longer fails
    "merge_batch": 1,  # merge queue: test this many issues stacked at once, bisect on red
    "merge_requeue": False,  # a rejected issue goes back to the queue with the report in its prompt
    "merge_poll_seconds": 5,  # `agents.start --merge`: how often the merge queue looks for done issues
    "merge_check_runner": "host",  # host | container: where the merge queue runs the check
    "poll_seconds": 0.5,  # idle agents look for work this often (+-30%); an empty poll is a read
    "watchdog_seconds": 120,
    "image": "parallel-autopilot:latest",
    "base_image": "python:3.11-slim",
    "agent_cli": "none",  # agent CLIs in the image: none | codex | claude | all (pinned in agentcli.py)
    "cli_cache": "~/.cache/parallel-autopilot/cli",  # host npm cache of the pinned CLIs
    # model endpoints of this repository (a gateway, a local server); None = the vendor's
    "openai_base_url": None,  # codex: an OpenAI Responses API base, e.g. http://127.0.0.1:8000/v1
    "anthropic_base_url": None,  # claude: an Anthropic Messages API base, e.g. http://127.0.0.1:8001
    "agent_model": None,  # model name handed to the CLI; None = the CLI's default
    "model_retries": None,  # the CLI's own retries of a failed model request; None = its default
    "quota_backoff_seconds": 60,  # wait after a rate limit that names no reset time (doubles, max 1 h)
    "profile": "auto",  # auto | light | full: resources per agent
    "memory": None,  # per agent, e.g. "12g"; None = platform default
    "cpus": None,  # per agent, e.g. 4; None = platform default
    "pids_limit": 512,
    "max_agents": None,  # None = platform default
    "stop_grace_seconds": 30,
    "health_interval_seconds": 2,
    "start_timeout_seconds": 120,
    "network": "bridge",  # docker network mode for agents; tests use "none"
    "project": None,  # compose project name; None = derived from the repo path
    "codex_home": "~/.codex",
    "ssh_dir": "~/.ssh",
    "gitconfig": "~/.gitconfig",
    "env_file": None,  # API keys for agent CLIs (KEY=VALUE lines), never baked in
    "gui_host": "127.0.0.1",
    "gui_port": 8787,
    "remote_dir": "~/parallel-autopilot",  # the checkout on the workstation (fab)
    "remote_python": None,  # None = <remote_dir>/.venv/bin/python
    "remote_repo": None,  # target repository on the workstation; None = remote_dir
    "remote_hosts": None,  # default hosts for `fab` when -H is not given, e.g. ["workstation"]
    "remote_origin": None,  # git URL remote.setup clones; None = the laptop checkout's origin
    "remote_connect_timeout": 15,  # seconds to wait for a host's SSH port
}


def git_toplevel(start: Path) -> Path:
    """Return the git top level containing ``start`` or raise GitError."""
    top = git.toplevel_of(start)
    if top is None:
        raise GitError(
            f"{start} is not inside a git repository: cd into one or set autopilot.repo"
        )
    return top


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Build it with :func:`load`, not by hand."""

    repo: Path
    values: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "values")
        if name in values:
            return values[name]
        raise AttributeError(name)

    def path(self, key: str) -> Path:
        """A path setting resolved against the repository (``~`` expanded)."""
        value = Path(os.path.expanduser(str(self.values[key])))
        return value if value.is_absolute() else self.repo / value

    @property
    def state_path(self) -> Path:
        return self.path("state_dir")

    @property
    def db_path(self) -> Path:
        return self.state_path / "autopilot.db"

    @property
    def queue_target(self) -> str:
        """Where the issue queue is, for ``issues.open_store``: the PostgreSQL URL, else the state directory."""
        return self.values.get("queue") or str(self.state_path)

    @property
    def worktrees_path(self) -> Path:
        return self.path("worktrees_dir")

    @property
    def logs_path(self) -> Path:
        return self.path("logs_dir")

    def replace(self, **changes: Any) -> "Settings":
        """A copy with some values changed (``repo`` too)."""
        repo = Path(changes.pop("repo", self.repo))
        return Settings(repo=repo, values={**self.values, **changes})

    def as_dict(self) -> dict[str, Any]:
        """The values, for showing: a password in the queue URL is left out."""
        values = {k: v for k, v in self.values.items() if k != "repo"}
        if values.get("queue"):
            values["queue"] = redact_url(values["queue"])
        return {"repo": str(self.repo), **values}


def redact_url(url: str) -> str:
    """``url`` without its password (``postgresql://user:secret@host/db`` -> ``postgresql://user@host/db``)."""
    from .pgstore import redact

    return redact(url)


def _check_queue(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.startswith(("postgresql://", "postgres://")):
        shown = redact_url(value) if isinstance(value, str) else repr(value)
        raise InvalidInput(f"autopilot.queue {shown!r} is not a postgresql:// URL: "
                           "give postgresql://user@host/db, or leave it unset for SQLite in state_dir")


def _section(config: Any) -> dict[str, Any]:
    """The ``autopilot`` section of an invoke config, less values equal to DEFAULTS.

    The task collection installs DEFAULTS into invoke's config (so that
    ``INVOKE_AUTOPILOT_*`` variables are recognised); those copies must not
    hide the target repository's ``invoke.yaml``.
    """
    if config is None:
        return {}
    section = config.get("autopilot", {}) if hasattr(config, "get") else {}
    return {k: v for k, v in dict(section or {}).items() if k not in DEFAULTS or v != DEFAULTS[k]}


def load(config: Any = None, cwd: Path | None = None, **overrides: Any) -> Settings:
    """Build the Settings: DEFAULTS < invoke ``autopilot`` section < ``overrides``.

    ``config`` is an invoke/fabric Config (or any mapping with an ``autopilot``
    key); when it is None, invoke's system, user and repository files and
    ``INVOKE_AUTOPILOT_*`` variables are read here, so the GUI sees the same
    values as the tasks.
    """
    explicit = {k: v for k, v in overrides.items() if v is not None}
    values = {**DEFAULTS, **_section(config), **explicit}
    unknown = set(values) - set(DEFAULTS)
    if unknown:
        raise InvalidInput(
            f"unknown setting(s) {', '.join(sorted(unknown))}: see DEFAULTS in parallel_autopilot/config.py"
        )
    repo = values["repo"]
    if repo:
        repo = Path(os.path.expanduser(str(repo))).resolve()
    else:
        repo = git_toplevel(Path(cwd or os.getcwd()))
    if config is None:
        values = {**DEFAULTS, **_section(invoke_config(repo)), **explicit}
    else:
        # the console program and fab do not read the target repository's
        # invoke.yaml themselves; `inv` does, and reading it twice is harmless
        values = {**DEFAULTS, **_repo_file(repo), **_section(config), **explicit}
    values["repo"] = str(repo)
    if values.get("queue") == "":
        values["queue"] = None  # INVOKE_AUTOPILOT_QUEUE= (empty) means unset
    _check_queue(values["queue"])
    return Settings(repo=repo, values=values)


def _repo_file(repo: Path) -> dict[str, Any]:
    path = repo / "invoke.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        return _section(yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError as err:
        raise InvalidInput(f"{path} is not valid YAML ({err.__class__.__name__}): fix or remove it") from None


def invoke_config(repo: Path):
    """invoke's Config for ``repo``: system, user and ``<repo>/invoke.yaml`` files, env."""
    from invoke import Config

    cfg = Config(project_location=str(repo))
    # invoke maps INVOKE_AUTOPILOT_<KEY> only onto keys it already knows
    cfg.load_collection({"autopilot": dict(DEFAULTS)})
    cfg.load_system()
    cfg.load_user()
    cfg.load_project()
    cfg.load_shell_env()
    return cfg


__all__ = ["DEFAULTS", "Settings", "load", "git_toplevel", "invoke_config"]
