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
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import git
from .defaults import DEFAULTS as _DEFAULTS
from .defaults import TABLE, Range, memory_bytes
from .errors import GitError, InvalidInput
from .issues import urls

#: Defaults (the one table in defaults.py), also installed with
#: ``Collection.configure({"autopilot": DEFAULTS})`` so ``inv --help``/config dumps
#: show them. ``None`` means "detect".
DEFAULTS: dict[str, Any] = _DEFAULTS


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
    """Resolved, checked configuration: one typed field per key of defaults.TABLE
    (its default read from there: the values live in one place).

    Build it with :func:`load` (which checks every value once), not by hand.
    """

    repo: Path
    state_dir: str = _DEFAULTS["state_dir"]
    queue: str | None = _DEFAULTS["queue"]
    worktrees_dir: str = _DEFAULTS["worktrees_dir"]
    logs_dir: str = _DEFAULTS["logs_dir"]
    base_branch: str | None = _DEFAULTS["base_branch"]
    lease_seconds: float = _DEFAULTS["lease_seconds"]
    max_attempts: int = _DEFAULTS["max_attempts"]
    backoff_seconds: float = _DEFAULTS["backoff_seconds"]
    aging_seconds: float = _DEFAULTS["aging_seconds"]  # issue 21: the claim's aging (issues.store.AGING)
    agent_kind: str = _DEFAULTS["agent_kind"]
    agent_command: str | None = _DEFAULTS["agent_command"]
    issue_timeout: float = _DEFAULTS["issue_timeout"]
    check: str | None = _DEFAULTS["check"]
    check_timeout: float = _DEFAULTS["check_timeout"]
    merge_batch: int = _DEFAULTS["merge_batch"]
    merge_requeue: bool = _DEFAULTS["merge_requeue"]
    merge_poll_seconds: float = _DEFAULTS["merge_poll_seconds"]
    merge_check_runner: str = _DEFAULTS["merge_check_runner"]
    poll_seconds: float = _DEFAULTS["poll_seconds"]
    watchdog_seconds: float = _DEFAULTS["watchdog_seconds"]
    image: str = _DEFAULTS["image"]
    base_image: str = _DEFAULTS["base_image"]
    agent_cli: str = _DEFAULTS["agent_cli"]
    cli_cache: str = _DEFAULTS["cli_cache"]
    openai_base_url: str | None = _DEFAULTS["openai_base_url"]
    anthropic_base_url: str | None = _DEFAULTS["anthropic_base_url"]
    agent_model: str | None = _DEFAULTS["agent_model"]
    model_retries: int | None = _DEFAULTS["model_retries"]
    quota_backoff_seconds: float = _DEFAULTS["quota_backoff_seconds"]
    budget_tokens: int | None = _DEFAULTS["budget_tokens"]
    budget_usd: float | None = _DEFAULTS["budget_usd"]
    fleet_budget_tokens: int | None = _DEFAULTS["fleet_budget_tokens"]
    fleet_budget_usd: float | None = _DEFAULTS["fleet_budget_usd"]
    profile: str = _DEFAULTS["profile"]
    memory: str | None = _DEFAULTS["memory"]
    cpus: float | None = _DEFAULTS["cpus"]
    pids_limit: int = _DEFAULTS["pids_limit"]
    max_agents: int | None = _DEFAULTS["max_agents"]
    stop_grace_seconds: float = _DEFAULTS["stop_grace_seconds"]
    health_interval_seconds: float = _DEFAULTS["health_interval_seconds"]
    start_timeout_seconds: float = _DEFAULTS["start_timeout_seconds"]
    network: str = _DEFAULTS["network"]
    compose: str = _DEFAULTS["compose"]
    queue_access: str = _DEFAULTS["queue_access"]
    host: str | None = _DEFAULTS["host"]  # config.load makes it the hostname when unset
    project: str | None = _DEFAULTS["project"]
    codex_home: str = _DEFAULTS["codex_home"]
    ssh_dir: str = _DEFAULTS["ssh_dir"]
    gitconfig: str = _DEFAULTS["gitconfig"]
    env_file: str | None = _DEFAULTS["env_file"]
    gui_host: str = _DEFAULTS["gui_host"]
    gui_port: int = _DEFAULTS["gui_port"]
    remote_dir: str = _DEFAULTS["remote_dir"]
    remote_python: str | None = _DEFAULTS["remote_python"]
    remote_repo: str | None = _DEFAULTS["remote_repo"]
    remote_hosts: list[str] | None = _DEFAULTS["remote_hosts"]
    remote_origin: str | None = _DEFAULTS["remote_origin"]
    remote_connect_timeout: float = _DEFAULTS["remote_connect_timeout"]
    notify_command: str | None = _DEFAULTS["notify_command"]
    notify_webhook: str | None = _DEFAULTS["notify_webhook"]
    notify_stuck_seconds: float = _DEFAULTS["notify_stuck_seconds"]

    def path(self, key: str) -> Path:
        """A path setting resolved against the repository (``~`` expanded)."""
        value = Path(os.path.expanduser(str(getattr(self, key))))
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
        return self.queue or str(self.state_path)

    @property
    def worktrees_path(self) -> Path:
        return self.path("worktrees_dir")

    @property
    def logs_path(self) -> Path:
        return self.path("logs_dir")

    def replace(self, **changes: Any) -> "Settings":
        """A copy with some values changed (``repo`` too)."""
        values = {**self.values, **changes}
        repo = Path(values.pop("repo", self.repo))
        return _build(repo, values, {k: "argument " + k for k in values})

    @property
    def values(self) -> dict[str, Any]:
        """The values as a fresh dict (a copy: Settings stays frozen)."""
        return {k: getattr(self, k) for k in TABLE if k != "repo"}

    def as_dict(self) -> dict[str, Any]:
        """The values, for showing: a password in the queue URL is left out."""
        values = {k: v for k, v in self.values.items() if k != "repo"}
        if values.get("queue"):
            values["queue"] = redact_url(values["queue"])
        return {"repo": str(self.repo), **values}


def redact_url(url: str) -> str:
    """``url`` without its password (``postgresql://user:secret@host/db`` -> ``postgresql://user@host/db``)."""
    return urls.redact(url)


_PROJECT = re.compile(r"[a-z0-9][a-z0-9_-]*")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _bad(key: str, source: str, problem: str) -> InvalidInput:
    return InvalidInput(f"setting {key} from {source}: {problem}")


def _coerce(key: str, value: Any, source: str) -> Any:
    """``value`` as the type of ``key`` in defaults.TABLE, checked; InvalidInput names key and source."""
    default, kind, check = TABLE[key]
    if isinstance(value, str) and value == "" and default is None:
        return None  # INVOKE_AUTOPILOT_X= (empty) means unset
    if value is None:
        if default is None:
            return None
        raise _bad(key, source, f"must be set (a {kind}); remove it to get the default {default!r}")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise _bad(key, source, f"{value!r} is not a boolean: use true or false")
    if kind in ("int", "float"):
        if isinstance(value, bool):
            raise _bad(key, source, f"{value!r} is not a number: give a {kind}")
        number: Any = value
        if isinstance(value, str):
            try:
                number = int(value.strip())
            except ValueError:
                try:
                    number = float(value.strip())
                except ValueError:
                    raise _bad(key, source, f"{value!r} is not a number: give a {kind}") from None
        if not isinstance(number, (int, float)):
            raise _bad(key, source, f"{value!r} is not a number: give a {kind}")
        if kind == "int":
            if isinstance(number, float) and not number.is_integer():
                raise _bad(key, source, f"{value!r} is not a whole number")
            number = int(number)
        if isinstance(check, Range):
            low, high, inclusive = check
            if low is not None and (number < low if inclusive else number <= low):
                raise _bad(key, source, f"{value!r} must be {'at least' if inclusive else 'above'} {low}")
            if high is not None and number > high:
                raise _bad(key, source, f"{value!r} must be at most {high}")
        return number
    if kind == "list":
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise _bad(key, source, f"{value!r} is not a list of names: give e.g. [host1, host2]")
        return list(value)
    # str and path
    if isinstance(value, Path) and kind == "path":
        value = str(value)
    if not isinstance(value, str):
        raise _bad(key, source, f"{value!r} is not a {'path' if kind == 'path' else 'string'}")
    if isinstance(check, tuple) and check and isinstance(check[0], str):
        if value.lower() not in check:
            raise _bad(key, source, f"{value!r} is not one of {', '.join(check)}")
        value = value.lower()
    elif check == "queue" and not value.startswith(("postgresql://", "postgres://")):
        raise _bad(key, source, f"{redact_url(value)!r} is not a postgresql:// URL: give "
                   "postgresql://user@host/db, or leave it unset for SQLite in state_dir")
    elif check == "http" and not value.startswith(("http://", "https://")):
        raise _bad(key, source, f"{value!r} is not an http(s):// URL")
    elif check == "memory" and memory_bytes(value) is None:
        raise _bad(key, source, f"{value!r} is not a memory size: use a value like 512m or 12g")
    elif check == "project" and not _PROJECT.fullmatch(value.lower()):
        raise _bad(key, source, f"{value!r} is not a valid compose project name: "
                   "use lower-case letters, digits, '-' and '_'")
    return value


def _build(repo: Path, values: Mapping[str, Any], sources: Mapping[str, str]) -> Settings:
    """Check every value once and build the Settings; an unknown key names its source."""
    checked: dict[str, Any] = {}
    for key, value in values.items():
        source = sources.get(key, "the defaults")
        if key not in TABLE:
            raise InvalidInput(f"unknown setting {key} from {source}: "
                               "see the table in parallel_autopilot/defaults.py")
        if key == "repo":
            continue
        checked[key] = _coerce(key, value, source)
    checked["host"] = (checked.get("host") or "").strip() or socket.gethostname()  # agents' (host, id)
    return Settings(repo=repo, **checked)


def _sources_of(keys: Any, repo: Path) -> dict[str, str]:
    """Where each key of invoke's configuration came from: env var, else the last file naming it."""
    files = [Path("/etc/invoke.yaml"), Path("~/.invoke.yaml").expanduser(), repo / "invoke.yaml"]
    sources: dict[str, str] = {}
    for path in files:
        for key in _file_keys(path):
            sources[key] = str(path)
    for key in keys:
        env = "INVOKE_AUTOPILOT_" + key.upper()
        if env in os.environ:
            sources[key] = "environment variable " + env
        sources.setdefault(key, "the invoke configuration")
    return sources


def _file_keys(path: Path) -> list[str]:
    if not path.is_file():
        return []
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return []
    section = data.get("autopilot") if isinstance(data, dict) else None
    return list(section) if isinstance(section, dict) else []


def _section(config: Any) -> dict[str, Any]:
    """The ``autopilot`` section of an invoke config, less values equal to DEFAULTS.

    The task collection installs DEFAULTS into invoke's config (so that
    ``INVOKE_AUTOPILOT_*`` variables are recognised); those copies must not
    hide the target repository's ``invoke.yaml``.
    """
    if config is None:
        return {}
    section = config.get("autopilot", {}) if hasattr(config, "get") else {}
    installed = invoke_defaults()
    return {k: v for k, v in dict(section or {}).items()
            if k not in DEFAULTS or (v != DEFAULTS[k] and v != installed[k])}


def invoke_defaults() -> dict[str, Any]:
    """DEFAULTS as installed into invoke's config, numbers written as text.

    invoke maps an ``INVOKE_AUTOPILOT_<KEY>`` variable onto a key it knows and casts
    it to the type of the value it holds: ``int("soon")`` would end in a traceback
    before our checks run. Given text, it hands the variable over as written and
    :func:`load` checks and converts it, naming the variable.
    """
    return {k: str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
            for k, v in DEFAULTS.items()}


def load(config: Any = None, cwd: Path | None = None, *, layers: Sequence[Any] = (),
         **overrides: Any) -> Settings:
    """Build the Settings: DEFAULTS < invoke ``autopilot`` section < ``layers`` < ``overrides``.

    ``config`` is an invoke/fabric Config (or any mapping with an ``autopilot``
    key); when it is None, invoke's system, user and repository files and
    ``INVOKE_AUTOPILOT_*`` variables are read here, so the GUI sees the same
    values as the tasks. ``layers`` are more configs over it, in order: fab's
    own (``~/.fabric.yaml``, ``FABRIC_AUTOPILOT_*``), which reads no invoke file.
    """
    explicit = {k: v for k, v in overrides.items() if v is not None}
    arg_sources = {k: "argument " + k for k in explicit}
    above = {k: v for layer in layers for k, v in _section(layer).items()}
    first = {**_section(config), **above, **explicit}
    repo = first.get("repo")
    if repo:
        repo = Path(os.path.expanduser(str(repo))).resolve()
    else:
        repo = git_toplevel(Path(cwd or os.getcwd()))
    if config is None:
        section = {**_section(invoke_config(repo)), **above}
    else:
        # the console program and fab do not read the target repository's
        # invoke.yaml themselves; `inv` does, and reading it twice is harmless
        section = {**_repo_file(repo), **_section(config), **above}
    sources = {**_sources_of(section, repo), **arg_sources}
    values = {**DEFAULTS, **section, **explicit}
    return _build(repo, values, sources)


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
    cfg.load_collection({"autopilot": invoke_defaults()})
    cfg.load_system()
    cfg.load_user()
    cfg.load_project()
    cfg.load_shell_env()
    return cfg


__all__ = ["DEFAULTS", "Settings", "load", "git_toplevel", "invoke_config"]
