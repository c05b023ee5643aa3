"""Where the merge queue's check runs, and what it gives back (:class:`CheckResult`).

The candidate the merge queue tests is the agents' code, and the agents are not
trusted (docs/development/parallel-autopilot-containers.md). So by default
(``merge_check_runner: container``, :class:`ContainerCheck`) it runs like the
agents run: it can read the candidate and write nothing of the user's. One
throw-away container per check (the agent image, ``docker run`` through the
Docker SDK of ``containers/daemon.py``): the repository's owner as user,
``network: none``, the agents' memory/CPU/pids limits, every capability dropped,
``no-new-privileges``; the user's ``.git`` read-only at its own path, the
queue's worktree (inside it) read-write over it and the worktree's ``.git`` file
read-only again. The container is killed at ``timeout`` and removed whatever
happened.

``merge_check_runner: host`` (:func:`run_on_host`) is the explicit opt-in of a
user who trusts the agents: a process group here, as the user, killed at
``timeout``. The agents' code then runs on the host.
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
from typing import TYPE_CHECKING, Any, Callable, Protocol

from ..defaults import TABLE
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
    """Where the check runs: ``container`` (the default, see :class:`ContainerCheck`) or ``host``
    (a process here, as the user: it trusts the agents); timed by ``monotonic``."""
    where = str(settings.merge_check_runner or TABLE["merge_check_runner"][0])
    if where == "host":
        return functools.partial(run_on_host, monotonic=monotonic)
    if where == "container":
        return ContainerCheck(settings, monotonic=monotonic)
    raise InvalidInput(f"merge_check_runner {where!r} is unknown: use container or host")


def container_runner(settings: Settings, *, monotonic: Callable[[], float] = time.monotonic) -> CheckRunner:
    """A :class:`CheckRunner` that runs each check in a container."""
    return ContainerCheck(settings, monotonic=monotonic)


#: The label of every merge-check container (``docker ps --filter label=...``).
LABEL = "parallel-autopilot.merge-check"
#: Output Docker keeps of one check (the log file gets it, the issue its last lines).
LOG_MAX = "10m"


class ContainerCheck:
    """Runs each check in a throw-away container (the module says with what).

    Nothing of Docker is reached before the first check: a queue with nothing to
    check needs no daemon. ``client`` (a Docker SDK client) and ``tag`` (the image)
    are seams; by default the daemon's shared client and the agent image, built
    when its sources changed.
    """

    def __init__(self, settings: Settings, *, monotonic: Callable[[], float] = time.monotonic,
                 client: Any = None, tag: str | None = None):
        self.settings = settings
        self.monotonic = monotonic
        self._client = client
        self._tag = tag

    @functools.cached_property
    def _who(self) -> tuple[int, int, Path]:
        """(uid, gid) the agents run as, and the user's git directory."""
        from ..containers import provision
        from ..git import Git

        git_dir = Git(self.settings.repo).common_dir()
        uid, gid = provision.repo_owner(self.settings, git_dir=git_dir)
        return uid, gid, git_dir

    def options(self, command: str, cwd: Path) -> dict[str, Any]:
        """The ``containers.run`` arguments of one check of ``command`` in the worktree ``cwd``.

        The worktree read-write, the user's ``.git`` read-only (the worktree's ``.git`` file
        names it), that file read-only too, so a check cannot point the next check's git
        elsewhere; no network, the agents' limits, no capability, no new privileges.
        """
        from .. import platform

        uid, gid, git_dir = self._who
        limits = platform.limits(self.settings)
        volumes = {str(git_dir): {"bind": str(git_dir), "mode": "ro"}, str(cwd): {"bind": str(cwd), "mode": "rw"}}
        if (cwd / ".git").is_file():
            volumes[str(cwd / ".git")] = {"bind": str(cwd / ".git"), "mode": "ro"}
        return {"command": ["sh", "-c", command], "detach": True, "user": f"{uid}:{gid}", "working_dir": str(cwd),
                "network_mode": "none", "mem_limit": limits.memory, "memswap_limit": limits.memory,
                "nano_cpus": int(float(limits.cpus) * 1e9), "pids_limit": int(limits.pids), "cap_drop": ["ALL"],
                "security_opt": ["no-new-privileges:true"], "environment": {"HOME": "/tmp"},
                "tmpfs": {"/tmp": "mode=1777,size=256m"}, "labels": {LABEL: "1"}, "volumes": volumes,
                "log_config": {"type": "json-file", "config": {"max-size": LOG_MAX}}}

    def _docker(self) -> tuple[Any, str]:
        """The client and the image tag; DockerUnavailable names ``host`` as the way without Docker."""
        from ..containers import daemon, image
        from ..errors import DockerUnavailable

        try:
            client = self._client or daemon.client()
            if self._tag is None:
                self._tag = image.ensure_image(self.settings, progress=lambda _: None, client=client)
        except DockerUnavailable as err:
            raise DockerUnavailable(f"the merge check runs in a container: {err}; or set merge_check_runner: "
                                    "host to run it on this host as you (that trusts the agents' code)") from None
        return client, self._tag

    def __call__(self, command: str, cwd: Path, timeout: float, log: Path) -> CheckResult:
        started = self.monotonic()
        client, tag = self._docker()
        options = self.options(command, cwd)
        container = client.containers.run(tag, options.pop("command"), **options)
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
        return CheckResult(status == "passed", round(self.monotonic() - started, 3), output, status)


__all__ = ["CheckResult", "CheckRunner", "ContainerCheck", "run_on_host", "runner_for", "container_runner"]
