"""Where the merge queue's check runs, and what it gives back (:class:`CheckResult`).

``merge_check_runner: host`` (:func:`run_on_host`): a process group here, killed
at ``timeout``. ``container``: in a container, as follows.

The candidate the merge queue tests is the agents' code: run like the agents
run, it can read the candidate and write nothing of the user's. One throw-away
container per check (the agent image, ``docker run`` through the Docker SDK):
the repository's owner as user, ``network: none``, the agents' memory/CPU/pids
limits, every capability dropped, ``no-new-privileges``; the user's ``.git``
read-only at its own path and the queue's worktree (inside it) read-write over
it. The container is killed at ``timeout`` and removed whatever happened.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from ..errors import InvalidInput
from ..runtime.logs import tail

#: Lines of the check's output kept in an issue's error/feedback.
TAIL_LINES = 20

if TYPE_CHECKING:  # for annotations only: this module needs nothing of config at run time
    from ..config import Settings


@dataclass
class CheckResult:
    """One check run: passed, its duration and the last lines of its output."""

    passed: bool
    duration: float
    output: str
    status: str  # passed | failed | timeout | none


class CheckRunner(Protocol):
    def __call__(self, command: str, cwd: Path, timeout: float, log: Path) -> CheckResult: ...


def run_on_host(command: str, cwd: Path, timeout: float, log: Path, *,
                monotonic: Callable[[], float] = time.monotonic) -> CheckResult:
    """Run ``command`` with ``bash -c`` in ``cwd`` in its own process group; kill the group on timeout."""
    started = monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen([shutil.which("bash") or "sh", "-c", command], cwd=str(cwd),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=_check_env())
        try:
            code = proc.wait(timeout=timeout)
            status = "passed" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            status = "timeout"
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # what the check left running in the background too
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
    output = _tail(log)
    if status == "timeout":
        output = f"(timed out after {timeout:g}s)\n{output}"
    return CheckResult(status == "passed", round(monotonic() - started, 3), output, status)


def _check_env() -> dict[str, str]:
    # a check must test the candidate, not a repository a git hook variable points at
    return {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}


def _tail(log: Path) -> str:
    """The check's last lines (every line counts: a check's output has no headers of ours)."""
    return tail(log, lines=TAIL_LINES, skip_prefix=None) or ""


def runner_for(settings: Settings, *, monotonic: Callable[[], float] = time.monotonic) -> CheckRunner:
    """Where the check runs: ``host`` (a process here) or ``container`` (see :mod:`.checks`); timed by ``monotonic``."""
    where = str(settings.merge_check_runner or "host")
    if where == "host":
        return functools.partial(run_on_host, monotonic=monotonic)
    if where == "container":
        return container_runner(settings, monotonic=monotonic)
    raise InvalidInput(f"merge_check_runner {where!r} is unknown: use host or container")


def container_runner(settings: Settings, *, monotonic: Callable[[], float] = time.monotonic) -> CheckRunner:
    """A :class:`CheckRunner` that runs each check in a container."""
    # Docker and the image only here: the host runner (and the merge queue's import) needs neither
    from .. import platform
    from ..containers import daemon, image, provision
    from ..git import Git

    tag = image.ensure_image(settings, progress=lambda _: None)
    limits = platform.limits(settings)
    uid, gid = provision.repo_owner(settings)
    git_dir = Git(settings.repo).common_dir()

    def run(command: str, cwd: Path, timeout: float, log: Path) -> CheckResult:
        started = monotonic()
        docker = daemon.client()
        container = docker.containers.run(
            tag, ["sh", "-c", command], detach=True, user=f"{uid}:{gid}", working_dir=str(cwd),
            network_mode="none", mem_limit=limits.memory, memswap_limit=limits.memory,
            nano_cpus=int(float(limits.cpus) * 1e9), pids_limit=int(limits.pids), cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"], environment={"HOME": "/tmp"},
            tmpfs={"/tmp": "mode=1777,size=256m"}, labels={"parallel-autopilot.merge-check": "1"},
            volumes={str(git_dir): {"bind": str(git_dir), "mode": "ro"}, str(cwd): {"bind": str(cwd), "mode": "rw"}})
        status = "failed"
        try:
            try:
                code = container.wait(timeout=timeout).get("StatusCode", 1)
                status = "passed" if code == 0 else "failed"
            except Exception:  # noqa: BLE001 - the SDK raises a requests timeout: the check ran too long
                status = "timeout"
                container.kill()
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_bytes(container.logs(stdout=True, stderr=True))
        finally:
            container.remove(force=True)
        output = _tail(log)
        if status == "timeout":
            output = f"(timed out after {timeout:g}s)\n{output}"
        return CheckResult(status == "passed", round(monotonic() - started, 3), output, status)

    return run


__all__ = ["CheckResult", "CheckRunner", "run_on_host", "runner_for", "container_runner"]
