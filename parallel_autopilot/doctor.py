"""``parallel-autopilot doctor``: what this machine has for ``agents.start``, and what is missing.

One :class:`Check` per thing ``agents.start`` needs, each found with the library's own rules
(the same daemon ping, compose detection, image status, preflight of a model kind, filesystem
check, limits and store that ``agents.start`` uses), so the doctor and the start never
disagree. A missing thing comes with the one command that fixes it. The report is ``ok``
(exit 0) only when nothing is ``fail``: a ``warn`` is something ``agents.start`` copes with
(it builds a missing image) or that only another setting needs (the other model kind's
credentials, the GUI's extra, Compose v1).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import __version__, platform
from .config import Settings
from .containers import agentcli, compose, daemon, image
from .errors import AutopilotError, GitError, one_line
from .git import runner as git_runner
from .issues import filesystems, snapshots
from .issues.urls import redact

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"


@dataclass(frozen=True)
class Check:
    """One line of the report: what was looked at, what was found, and the fix when it is not ok."""

    name: str
    state: str  # ok | warn | fail | skip
    found: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether ``agents.start`` would work: no check failed."""
        return all(c.state != FAIL for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "version": __version__, "checks": [c.to_dict() for c in self.checks]}


def examine(settings: Settings, n: int = 3, *, in_repository: bool = True, mountinfo: str = "/proc/self/mountinfo",
            runner: Callable[..., subprocess.CompletedProcess] = subprocess.run,
            which: Callable[[str], str | None] = shutil.which) -> Report:
    """Every check for ``n`` agents of ``settings`` (``in_repository``: whether ``settings.repo`` is a git
    repository; ``mountinfo``, ``runner`` and ``which`` are the seams of the tests)."""
    report = Report([Check("parallel-autopilot", OK, f"{__version__} ({Path(__file__).parent}; Python "
                                                    f"{sys.version.split()[0]})")])
    add = report.checks.append
    docker_info = _docker(settings, add)
    add(_compose(settings, runner, which))
    add(_git(which))
    # (status, labels) of the image, read once (its status hashes the whole package); None without Docker
    built = None if docker_info is None else (image.image_status(settings), image.image_labels(settings) or {})
    if built is None:
        add(Check("image", SKIP, f"{settings.image}: not looked at (no Docker daemon)"))
    else:
        add(_image(settings, *built))
    add(_agent(settings, n, built))
    for kind in agentcli.MODEL_KINDS:
        add(_credentials(settings, kind))
    add(_resources(settings, n, docker_info))
    if not in_repository:
        add(Check("repository", FAIL, f"{settings.repo} is not inside a git repository",
                  "cd into the repository the agents will work on (or set autopilot.repo)"))
    else:
        add(_state(settings, mountinfo))
        add(_queue(settings))
    add(_gui())
    return report


def _docker(settings: Settings, add: Callable[[Check], None]) -> dict | None:
    try:
        client = daemon.client(timeout=10)
        version, info = client.version(), client.info()
    except AutopilotError as err:
        add(Check("docker", FAIL, "no Docker daemon answers", str(err)))
        return None
    except Exception as err:  # noqa: BLE001 - an odd daemon reply is still "not usable"
        add(Check("docker", FAIL, f"the Docker daemon answered oddly: {one_line(err)}",
                  "restart it (sudo systemctl restart docker)"))
        return None
    add(Check("docker", OK, f"Docker Engine {version.get('Version', '?')} (API {version.get('ApiVersion', '?')}), "
                            f"{info.get('OperatingSystem', '?')}, {info.get('NCPU', '?')} CPUs"))
    return info


def _compose(settings: Settings, runner: Callable[..., Any], which: Callable[[str], str | None]) -> Check:
    choice = str(settings.compose)
    try:
        argv = list(compose.command(choice)) if choice != "auto" else compose.detect(runner, which)
        proc = runner([*argv, "version", "--short"], capture_output=True, text=True, timeout=20)
        found = (proc.stdout or "").strip().splitlines()
        if proc.returncode != 0 or not found:
            raise FileNotFoundError(argv[0])
    except (AutopilotError, OSError, subprocess.SubprocessError):
        asked = {"v2": "Compose v2 (`docker compose`)", "v1": "docker-compose (v1)"}.get(choice, "no Docker Compose")
        return Check("compose", FAIL, f"{asked} is not installed", compose.INSTALL_HINT)
    text = f"{' '.join(argv)} {found[0].lstrip('v')}"
    if tuple(argv) == compose.V1:
        return Check("compose", WARN, f"{text} (v1, end of life since 2023)", compose.INSTALL_HINT)
    return Check("compose", OK, text)


def _git(which: Callable[[str], str | None]) -> Check:
    found = git_runner.version() if which("git") else None
    if found is None:
        return Check("git", FAIL, "git is not installed", "apt-get install git (or brew install git)")
    return Check("git", OK, found)


def _image(settings: Settings, status: str, labels: dict[str, str]) -> Check:
    if status == "missing":
        return Check("image", WARN, f"{settings.image} is not built (agents.start builds it, about a minute)",
                     f"parallel-autopilot build --cli {settings.agent_cli}")
    clis = ", ".join(f"{k[len(agentcli.LABEL_PREFIX):]} {v}" for k, v in sorted(labels.items())
                     if k.startswith(agentcli.LABEL_PREFIX)) or "no agent CLI"
    built = f"version {labels[image.LABEL_VERSION]}" if image.LABEL_VERSION in labels else "an older version"
    if status == "stale":
        return Check("image", WARN, f"{settings.image} ({clis}) was built from other sources ({built}); "
                                    "agents.start rebuilds it", f"parallel-autopilot build --cli {settings.agent_cli}")
    return Check("image", OK, f"{settings.image} is current ({clis})")


def _agent(settings: Settings, n: int, built: tuple[str, dict[str, str]] | None) -> Check:
    kind = str(settings.agent_kind)
    if kind not in agentcli.MODEL_KINDS:
        return Check(f"agents ({kind})", OK, f"{kind} agents need no agent CLI and no credentials")
    try:
        current = built is not None and built[0] == "current"
        warnings = agentcli.preflight(settings, built[1] if current else None, n)
    except AutopilotError as err:
        return Check(f"agents ({kind})", FAIL, f"{n} {kind} agents cannot start", str(err))
    if warnings:
        return Check(f"agents ({kind})", WARN, f"{n} {kind} agents can start",
                     "; ".join(w.removeprefix("warning: ") for w in warnings))
    return Check(f"agents ({kind})", OK, f"{n} {kind} agents can start ({agentcli.PINS[kind][0]} "
                                         f"{agentcli.PINS[kind][1]})")


def _credentials(settings: Settings, kind: str) -> Check:
    source = agentcli.credentials(settings, kind)
    if source:
        return Check(f"credentials ({kind})", OK, f"from {source} (never printed)")
    keys = " or ".join(agentcli.CREDENTIAL_KEYS[kind])
    fix = f"put {keys} into the file named by autopilot.env_file"
    if kind == "codex":
        fix += f", or `codex login` so that {settings.codex_home}/auth.json exists"
    needed = str(settings.agent_kind) == kind
    return Check(f"credentials ({kind})", FAIL if needed else WARN,
                 f"none{'' if needed else f' (only {kind} agents need them)'}", fix)


def _resources(settings: Settings, n: int, docker_info: dict | None) -> Check:
    host = platform.detect(docker_info)
    limits = platform.limits(settings, host)
    ceiling = min(limits.max_agents, len(compose.services(settings)))
    found = (f"{n} agents x {limits.memory} and {limits.cpus:g} CPUs each ({limits.profile}); this machine: "
             f"{host.usable_memory / 2**30:.1f} GiB memory, {host.usable_cpus} CPUs, at most {ceiling} agents")
    if n > ceiling:
        return Check("resources", FAIL, found, f"ask for at most {ceiling} agents, or lower autopilot.memory "
                                               "(autopilot.max_agents sets the maximum)")
    return Check("resources", OK, found)


def _state(settings: Settings, mountinfo: str) -> Check:
    directory = settings.state_path
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    fstype = filesystems.filesystem_type(existing, mountinfo) or "unknown"
    if not os.access(existing, os.W_OK):
        return Check("state", FAIL, f"{directory} is not writable by this user",
                     f"run as the owner of {settings.repo}, or set autopilot.state_dir")
    if not settings.queue:  # SQLite lives there; with PostgreSQL only logs and sockets do
        try:
            filesystems.check_filesystem(existing, mountinfo)
        except AutopilotError as err:
            return Check("state", FAIL, f"{directory} is on {fstype}", str(err))
    return Check("state", OK, f"{directory} on {fstype}")


def _queue(settings: Settings) -> Check:
    shown = redact(settings.queue) if settings.queue else f"{settings.db_path} (SQLite)"
    if not settings.queue and not settings.db_path.exists():
        return Check("queue", OK, f"{shown} does not exist yet: issues.add or issues.import creates it")
    try:
        total = _issue_count(settings)
    except AutopilotError as err:
        return Check("queue", FAIL, f"{shown} cannot be opened", str(err))
    except Exception as err:  # noqa: BLE001 - the driver's own errors: unreachable all the same
        return Check("queue", FAIL, f"{shown} cannot be reached: {one_line(err)}",
                     "start the PostgreSQL server, or fix autopilot.queue")
    if settings.queue:
        return Check("queue", OK, f"{shown} (PostgreSQL) answers: {_issues(total)}")
    kept = snapshots.list_snapshots(settings.db_path)
    latest = f", latest {Path(kept[-1]).name}" if kept else ""
    return Check("queue", OK, f"{shown}: {_issues(total)}, {len(kept)} snapshots{latest}")


def _issues(count: int) -> str:
    return f"{count} issue" + ("" if count == 1 else "s")


def _issue_count(settings: Settings) -> int:
    """The issues in the queue, read with a store of its own (closed again; a server gets 3 s)."""
    from .issues import open_store

    options = {"reconnect_seconds": 3} if settings.queue else {}
    store = open_store(settings.queue_target, host=settings.host, **options)
    try:
        return sum(store.counts().values())
    finally:
        store.close()


def _gui() -> Check:
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        return Check("gui", WARN, f"the GUI's extra is not installed ({', '.join(missing)} missing)",
                     "pip install 'parallel-autopilot[gui]' (pipx inject parallel-autopilot fastapi uvicorn)")
    return Check("gui", OK, "fastapi and uvicorn are installed (parallel-autopilot gui)")


def in_repository(settings: Settings) -> bool:
    """Whether ``settings.repo`` is inside a git repository."""
    from .config import git_toplevel

    try:
        git_toplevel(Path(settings.repo))
        return True
    except GitError:
        return False


__all__ = ["Check", "Report", "examine", "in_repository", "OK", "WARN", "FAIL", "SKIP"]
