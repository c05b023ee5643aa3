"""The ONE place that runs Docker Compose (``docker compose`` v2 or ``docker-compose`` v1).

Every compose call goes through :func:`run`, which builds the command line
(project name, compose file, ``--ansi never``) and the environment that fills
every ``${VARIABLE}`` of ``docker/autopilot/docker-compose.yml``
(:func:`compose_env`). The file refuses to start with a variable missing, so a
limit computed here is a limit Docker enforces.

Credentials the user does not have (no ``~/.codex``, no ``~/.ssh``...) are
replaced by empty placeholders in the state directory; nothing is ever created
in the user's home.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import platform as platform_mod
from . import worktrees
from .errors import ComposeError, GitError, InvalidAgentCount, InvalidInput
from .git import Git

Runner = Callable[..., subprocess.CompletedProcess]

COMPOSE_FILE = "docker/autopilot/docker-compose.yml"
#: subdirectory of the state directory holding generated files and placeholders
GENERATED = "container"
#: commands that create containers: they need exact values (base branch...)
_CREATING = ("up", "create", "run")
_AGENT = re.compile(r"^agent-\d{3}$")


def compose_file() -> Path:
    """``docker/autopilot/docker-compose.yml`` of this checkout."""
    return Path(__file__).resolve().parent.parent / COMPOSE_FILE


# -- which compose ------------------------------------------------------------


def detect(runner: Runner = subprocess.run) -> list[str]:
    """The compose command: ``["docker", "compose"]`` (v2, preferred) or ``["docker-compose"]``."""
    if shutil.which("docker"):
        try:
            probe = runner(["docker", "compose", "version"], capture_output=True, text=True, timeout=20)
            if probe.returncode == 0:
                return ["docker", "compose"]
        except (OSError, subprocess.TimeoutExpired):
            pass
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise ComposeError("neither `docker compose` nor `docker-compose` is installed: "
                       "apt-get install docker-compose (or run scripts/bootstrap.sh)")


@functools.lru_cache(maxsize=1)
def command() -> tuple[str, ...]:
    """:func:`detect`, once per process."""
    return tuple(detect())


# -- what the file defines ----------------------------------------------------


@functools.lru_cache(maxsize=4)
def _services(path: str, mtime: float) -> tuple[str, ...]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ComposeError(f"cannot read {path} ({err.__class__.__name__}): restore it from git") from None
    return tuple(sorted((data.get("services") or {}).keys()))


def services(settings: Any = None) -> list[str]:
    """The services the compose file defines (``agent-001`` .. ``agent-010``)."""
    path = compose_file()
    try:
        mtime = path.stat().st_mtime
    except OSError:
        raise ComposeError(f"{path} is missing: restore it from git") from None
    return list(_services(str(path), mtime))


def check_services(ids: Sequence[str]) -> None:
    """InvalidAgentCount when an id has no service in the compose file."""
    defined = services()
    missing = [i for i in ids if i not in defined]
    if missing:
        raise InvalidAgentCount(
            f"{', '.join(missing)} not defined in {COMPOSE_FILE} ({len(defined)} agents: "
            f"{defined[0]}..{defined[-1]}): ask for at most {len(defined)} agents")


# -- names and values ---------------------------------------------------------


def project_name(settings: Any) -> str:
    """The compose project (and container-name prefix) of this repository.

    ``settings.project`` if set, else ``pa-<repo name>-<hash of its path>``:
    two checkouts with the same name never share containers.
    """
    if settings.project:
        return str(settings.project).lower()  # its format is checked by config.load
    repo = Path(settings.repo)
    slug = re.sub(r"[^a-z0-9]+", "-", repo.name.lower()).strip("-")[:24] or "repo"
    digest = hashlib.sha256(str(repo).encode()).hexdigest()[:8]
    return f"pa-{slug}-{digest}"


def _seconds(value: Any) -> str:
    # a compose duration that v1 and v2 both parse, exact to the millisecond
    millis = max(1, int(round(float(value) * 1000)))
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def _number(value: Any) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else str(number)


def grace_seconds(settings: Any) -> float:
    """SIGTERM -> SIGKILL grace for the agent subprocess: a third of stop_grace_period."""
    return max(1.0, round(float(settings.stop_grace_seconds) / 3, 1))


def compose_env(settings: Any, limits: platform_mod.Limits | None = None, *, strict: bool = True,
                uid: int | None = None, gid: int | None = None,
                base_branch: str | None = None) -> dict[str, str]:
    """Every variable the compose file reads, from ``settings`` and ``limits``.

    Creates the state and logs directories and the placeholders/passwd files
    it points at (owned by the repository's owner). ``strict=False`` (stop, rm,
    ps, logs: commands that create nothing) tolerates a repository whose base
    branch cannot be resolved.
    """
    limits = limits or platform_mod.limits(settings)
    git_dir = _git_dir(settings, strict)
    owner_uid, owner_gid = repo_owner(settings, strict)
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
        "AUTOPILOT_AGENT_COMMAND": str(settings.agent_command or ""),
        "AUTOPILOT_LEASE_SECONDS": _number(settings.lease_seconds),
        "AUTOPILOT_MAX_ATTEMPTS": str(int(settings.max_attempts)),
        "AUTOPILOT_BACKOFF_SECONDS": _number(settings.backoff_seconds),
        "AUTOPILOT_ISSUE_TIMEOUT": _number(settings.issue_timeout),
        "AUTOPILOT_POLL_SECONDS": _number(settings.poll_seconds),
        "AUTOPILOT_WATCHDOG_SECONDS": _number(settings.watchdog_seconds),
        "AUTOPILOT_GRACE_SECONDS": _number(grace_seconds(settings)),
        # the model CLIs' endpoint and limits (kinds codex, claude); empty = the CLI's default
        "AUTOPILOT_OPENAI_BASE_URL": _optional(settings, "openai_base_url"),
        "AUTOPILOT_ANTHROPIC_BASE_URL": _optional(settings, "anthropic_base_url"),
        "AUTOPILOT_MODEL": _optional(settings, "agent_model"),
        "AUTOPILOT_MODEL_RETRIES": _optional(settings, "model_retries"),
        "AUTOPILOT_QUOTA_BACKOFF_SECONDS": _number(settings.quota_backoff_seconds or 60),
        "AUTOPILOT_CHECK": str(settings.check or ""),
        "AUTOPILOT_CHECK_TIMEOUT": _number(settings.check_timeout or 600),
    }
    return env


def _optional(settings: Any, key: str) -> str:
    value = getattr(settings, key)
    return "" if value is None else str(value).strip()


def limits_override(settings: Any, limits: platform_mod.Limits) -> Path:
    """Write and return ``<state>/container/limits.yml``: ``pids_limit`` for every service.

    Compose v1 hands an interpolated ``${AGENT_PIDS_LIMIT}`` to Docker's API as
    a string, which it refuses ("expected int"), so the value is written as a
    YAML integer into an override file that :func:`run` always passes.
    """
    lines = ["# generated by parallel_autopilot.compose for every run: compose v1 cannot",
             "# interpolate an integer, and Docker refuses pids_limit as a string", "services:"]
    lines += [f"  {name}: {{pids_limit: {int(limits.pids)}}}" for name in services(settings)]
    path = settings.state_path / GENERATED / "limits.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    if not (path.is_file() and path.read_text() == text):
        path.write_text(text)
    return path


def repo_owner(settings: Any, strict: bool = True) -> tuple[int, int]:
    """(uid, gid) owning the repository's git directory: who the agents run as."""
    git_dir = _git_dir(settings, strict)
    stat = (git_dir if git_dir.exists() else Path(settings.repo)).stat()
    return stat.st_uid, stat.st_gid


def hand_over(settings: Any, paths: Sequence[Path]) -> None:
    """Give ``paths`` (recursively) to the repository's owner when we run as root for someone else.

    Root-made files the agents must write - the database and its -wal/-shm,
    worktrees and their metadata in .git, agent branch refs, logs - would
    otherwise be read-only for the agents' uid. ``chown`` by path opens
    nothing, so SQLite's locks in this process are untouched.
    """
    uid, gid = repo_owner(settings)
    if os.geteuid() != 0 or (uid, gid) == (0, 0):
        return
    for top in paths:
        if not top.exists():
            continue
        os.chown(top, uid, gid)
        for root, dirs, files in os.walk(top):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def _git_dir(settings: Any, strict: bool) -> Path:
    try:
        return Git(settings.repo).common_dir()
    except GitError:
        if strict:
            raise
        return Path(settings.repo) / ".git"


def _base_branch(settings: Any, strict: bool) -> str:
    try:
        return worktrees.base_branch(settings)
    except GitError:
        if strict:
            raise
        return "unknown"


def _credential(settings: Any, key: str, placeholder: Path, is_dir: bool, uid: int, gid: int) -> str:
    path = settings.path(key) if getattr(settings, key) else None
    if path is not None and (path.is_dir() if is_dir else path.is_file()):
        return str(path)
    if is_dir:
        _make_dir(placeholder, uid, gid)
        return str(placeholder)
    return _write(placeholder, "", uid, gid)


def _env_file(settings: Any, placeholder: Path, uid: int, gid: int) -> str:
    if settings.env_file:
        path = settings.path("env_file")
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


# -- running ------------------------------------------------------------------


def command_line(settings: Any, args: Sequence[str], compose: Sequence[str] | None = None,
                 files: Sequence[str | os.PathLike] = ()) -> list[str]:
    """The full compose command for ``args`` (project, file(s), no colours).

    ``files`` are override files applied after the agent file (``-f`` again).
    """
    base = list(compose or command())
    extra = [part for path in files for part in ("-f", str(path))]
    return [*base, "--ansi", "never", "-p", project_name(settings), "-f", str(compose_file()), *extra, *args]


def run(settings: Any, args: Sequence[str], *, limits: platform_mod.Limits | None = None,
        env: Mapping[str, str] | None = None, capture: bool = True, check: bool = True,
        timeout: float | None = None, runner: Runner = subprocess.run,
        compose: Sequence[str] | None = None,
        files: Sequence[str | os.PathLike] = ()) -> subprocess.CompletedProcess:
    """Run ``<compose> -p <project> -f <file> <args>`` with :func:`compose_env`.

    ``capture=False`` lets the output through (``logs -f``). ``compose``
    forces ``["docker-compose"]`` or ``["docker", "compose"]``; ``files`` adds
    override files (tests replace the command with one). A failure raises
    ComposeError with compose's last error line unless ``check`` is False.
    Service names in ``args`` that the file does not define raise
    InvalidAgentCount before compose runs.
    """
    check_services([a for a in args if _AGENT.match(str(a))])
    strict = bool(args) and args[0] in _CREATING
    limits = limits or platform_mod.limits(settings)
    variables = dict(env) if env is not None else compose_env(settings, limits, strict=strict)
    line = command_line(settings, args, compose, [limits_override(settings, limits), *files])
    try:
        proc = runner(line, env={**os.environ, **variables}, text=True, timeout=timeout,
                      capture_output=capture)
    except FileNotFoundError:
        raise ComposeError(f"{line[0]} is not installed: apt-get install docker-compose "
                           "(or run scripts/bootstrap.sh)") from None
    except subprocess.TimeoutExpired:
        raise ComposeError(f"compose {' '.join(args)} did not finish in {timeout}s: "
                           "check `docker info` and the daemon's log") from None
    if check and proc.returncode != 0:
        raise ComposeError(f"compose {' '.join(map(str, args))} failed (exit {proc.returncode}): "
                           f"{last_error(proc.stderr if capture else '') or 'see the output above'}")
    return proc


def last_error(stderr: str | None) -> str:
    """The line of compose's stderr that says what went wrong (one line)."""
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"error|denied|no such|not found|invalid|cannot|failed|missing", line, re.I):
            return _one_line(line)
    return _one_line(lines[-1]) if lines else ""


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


__all__ = ["compose_file", "detect", "command", "services", "check_services", "project_name",
           "compose_env", "command_line", "run", "last_error", "passwd", "group", "grace_seconds"]
