"""What a container gets from the host: its environment, credentials, passwd/group, ownership.

:func:`compose_env` fills every ``${VARIABLE}`` the compose file reads (containers/compose.py
only runs compose). Credentials the user does not have (no ``~/.codex``, no
``~/.ssh``...) are replaced by empty placeholders in the state directory;
nothing is ever created in the user's home. Everything created belongs to the
repository's owner, whose uid the containers run as.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .. import platform as platform_mod
from ..errors import GitError, InvalidInput
from ..git import Git, clones
from . import queueaccess
from .compose import GENERATED, project_name, services

#: Under the state directory: one directory per agent holding its socket of the queue gateway.
GATEWAY_DIR = "gateway"

if TYPE_CHECKING:  # for annotations only: this module needs nothing of config at run time
    from ..config import Settings


def _seconds(value: Any) -> str:
    # a compose duration that v1 and v2 both parse, exact to the millisecond
    millis = max(1, int(round(float(value) * 1000)))
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def _number(value: Any) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else str(number)


def grace_seconds(settings: Settings) -> float:
    """SIGTERM -> SIGKILL grace for the agent subprocess: a third of stop_grace_period."""
    return max(1.0, round(float(settings.stop_grace_seconds) / 3, 1))


def compose_env(settings: Settings, limits: platform_mod.Limits | None = None, *, strict: bool = True,
                uid: int | None = None, gid: int | None = None,
                base_branch: str | None = None, git_dir: Path | None = None) -> dict[str, str]:
    """Every variable the compose file reads, from ``settings`` and ``limits``.

    Creates the state and logs directories and the placeholders/passwd files
    it points at (owned by the repository's owner). ``strict=False`` (stop, rm,
    ps, logs: commands that create nothing) tolerates a repository whose base
    branch cannot be resolved.
    """
    limits = limits or platform_mod.limits(settings)
    git_dir = git_dir or _git_dir(settings, strict)  # given by a Fleet, which resolved it once
    owner_uid, owner_gid = repo_owner(settings, strict, git_dir=git_dir)
    uid = owner_uid if uid is None else uid
    gid = owner_gid if gid is None else gid

    state, logs = settings.state_path, settings.logs_path
    generated = state / GENERATED
    for directory in (state, logs, generated):
        _make_dir(directory, uid, gid)

    env = {
        "AUTOPILOT_PROJECT": project_name(settings),
        "AUTOPILOT_IMAGE": str(settings.image),
        "AUTOPILOT_UID": str(uid),
        "AUTOPILOT_GID": str(gid),
        "AUTOPILOT_GIT_DIR": str(git_dir),
        "AUTOPILOT_WORKTREES": str(settings.worktrees_path),
        "AUTOPILOT_STATE": str(state),
        "AUTOPILOT_LOGS_DIR": str(logs),
        "AUTOPILOT_CODEX_HOME": _credential(settings, "codex_home", generated / "empty-codex", True, uid, gid),
        "AUTOPILOT_SSH_DIR": _credential(settings, "ssh_dir", generated / "empty-ssh", True, uid, gid),
        "AUTOPILOT_GITCONFIG": _credential(settings, "gitconfig", generated / "empty-gitconfig", False, uid, gid),
        "AUTOPILOT_ENV_FILE": _env_file(settings, generated / "empty.env", uid, gid),
        "AUTOPILOT_PASSWD": _write(generated / "passwd", passwd(uid, gid), uid, gid),
        "AUTOPILOT_GROUP": _write(generated / "group", group(gid), uid, gid),
        "AGENT_MEMORY": limits.memory,
        "AGENT_CPUS": _number(limits.cpus),
        "AUTOPILOT_STOP_GRACE": _seconds(settings.stop_grace_seconds),
        "AUTOPILOT_NETWORK": str(settings.network),
        "AUTOPILOT_HEALTH_INTERVAL": _seconds(settings.health_interval_seconds),
        # what the runtime inside reads (see the contract doc)
        "AUTOPILOT_BASE_BRANCH": base_branch or _base_branch(settings, strict),
        "AUTOPILOT_AGENT_KIND": str(settings.agent_kind),
        "AUTOPILOT_HOST": str(settings.host),  # agents are (host, id) on a queue many hosts share
        "AUTOPILOT_AGENT_COMMAND": str(settings.agent_command or ""),
        "AUTOPILOT_LEASE_SECONDS": _number(settings.lease_seconds),
        "AUTOPILOT_MAX_ATTEMPTS": str(int(settings.max_attempts)),
        "AUTOPILOT_BACKOFF_SECONDS": _number(settings.backoff_seconds),
        "AUTOPILOT_AGING_SECONDS": _number(settings.aging_seconds),  # issue 21: the gateway's claim order
        "AUTOPILOT_ISSUE_TIMEOUT": _number(settings.issue_timeout),
        "AUTOPILOT_POLL_SECONDS": _number(settings.poll_seconds),
        "AUTOPILOT_WATCHDOG_SECONDS": _number(settings.watchdog_seconds),
        "AUTOPILOT_GRACE_SECONDS": _number(grace_seconds(settings)),
        # the model CLIs' endpoint and limits (kinds codex, claude); empty = the CLI's default
        "AUTOPILOT_OPENAI_BASE_URL": _optional(settings, "openai_base_url"),
        "AUTOPILOT_ANTHROPIC_BASE_URL": _optional(settings, "anthropic_base_url"),
        "AUTOPILOT_MODEL": _optional(settings, "agent_model"),
        "AUTOPILOT_MODEL_RETRIES": _optional(settings, "model_retries"),
        "AUTOPILOT_QUOTA_BACKOFF_SECONDS": _number(settings.quota_backoff_seconds),
        "AUTOPILOT_CHECK": str(settings.check or ""),
        "AUTOPILOT_CHECK_TIMEOUT": _number(settings.check_timeout),
    }
    # a queue on PostgreSQL: its URL as a secret file, its socket directory (containers/queueaccess.py)
    env.update(queueaccess.compose_entries(settings, env, generated, uid, gid, strict=strict))
    for agent in services(settings):  # what each agent mounts of its own: its log and gateway directories
        for directory in (logs / "agents" / agent, state / GATEWAY_DIR / agent):
            _make_dir(directory, uid, gid)
    return env


def _optional(settings: Settings, key: str) -> str:
    value = getattr(settings, key)
    return "" if value is None else str(value).strip()


def repo_owner(settings: Settings, strict: bool = True, git_dir: Path | None = None) -> tuple[int, int]:
    """(uid, gid) owning the repository's git directory: who the agents run as."""
    git_dir = git_dir or _git_dir(settings, strict)
    stat = (git_dir if git_dir.exists() else Path(settings.repo)).stat()
    return stat.st_uid, stat.st_gid


def hand_over(settings: Settings, paths: Sequence[Path], git_dir: Path | None = None) -> None:
    """Give ``paths`` (recursively) to the repository's owner when we run as root for someone else.

    Root-made files the agents must write - the database and its -wal/-shm,
    worktrees and their metadata in .git, agent branch refs, logs - would
    otherwise be read-only for the agents' uid. ``chown`` by path opens
    nothing, so SQLite's locks in this process are untouched.
    """
    uid, gid = repo_owner(settings, git_dir=git_dir)
    if os.geteuid() != 0 or (uid, gid) == (0, 0):
        return
    for top in paths:
        if not top.exists():
            continue
        os.chown(top, uid, gid)
        for root, dirs, files in os.walk(top):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def _git_dir(settings: Settings, strict: bool) -> Path:
    try:
        return Git(settings.repo).common_dir()
    except GitError:
        if strict:
            raise
        return Path(settings.repo) / ".git"


def _base_branch(settings: Settings, strict: bool) -> str:
    try:
        return clones.base_branch(settings)
    except GitError:
        if strict:
            raise
        return "unknown"


def _credential(settings: Settings, key: str, placeholder: Path, is_dir: bool, uid: int, gid: int) -> str:
    path = settings.path(key) if getattr(settings, key) else None
    if path is not None and (path.is_dir() if is_dir else path.is_file()):
        return str(path)
    if is_dir:
        _make_dir(placeholder, uid, gid)
        return str(placeholder)
    return _write(placeholder, "", uid, gid)


def _env_file(settings: Settings, placeholder: Path, uid: int, gid: int) -> str:
    if settings.env_file:
        path = settings.path("env_file")
        # checked at use, not in config.load: whether it exists is a fact of the moment the
        # containers start (the GUI loads once and runs for hours; `issues list` never reads it)
        if not path.is_file():
            raise InvalidInput(f"env_file {path} does not exist: create it (KEY=VALUE lines) "
                               "or unset autopilot.env_file")
        return str(path)
    return _write(placeholder, "", uid, gid)


def passwd(uid: int, gid: int) -> str:
    """/etc/passwd for the container: the host user's uid is ``agent`` with HOME /home/agent.

    ssh, git's identity fallback and node's os.userInfo() fail for a uid
    without an entry.
    """
    lines = [f"root:x:0:0:root:{'/home/agent' if uid == 0 else '/root'}:/bin/sh"]
    if uid != 0:
        lines.append(f"agent:x:{uid}:{gid}:parallel-autopilot agent:/home/agent:/bin/sh")
    if uid != 65534:
        lines.append("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin")
    return "\n".join(lines) + "\n"


def group(gid: int) -> str:
    """/etc/group for the container (root, the agent's group, nogroup)."""
    lines = ["root:x:0:"]
    if gid != 0:
        lines.append(f"agent:x:{gid}:")
    if gid != 65534:
        lines.append("nogroup:x:65534:")
    return "\n".join(lines) + "\n"


def _make_dir(path: Path, uid: int, gid: int) -> None:
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True)
    _chown(path, uid, gid)


def _write(path: Path, text: str, uid: int, gid: int) -> str:
    if not (path.is_file() and path.read_text() == text):
        path.write_text(text)
        path.chmod(0o644)
        _chown(path, uid, gid)
    return str(path)


def _chown(path: Path, uid: int, gid: int) -> None:
    # run as root for a repository owned by someone else: what we create must
    # belong to the repository's owner, whose uid the containers run as
    if os.geteuid() == 0 and (uid, gid) != (0, 0):
        os.chown(path, uid, gid)


__all__ = ["compose_env", "repo_owner", "hand_over", "passwd", "group", "grace_seconds"]
