"""The merge queue's check in a container (``merge_check_runner: container``).

The candidate the merge queue tests is the agents' code: run like the agents
run, it can read the candidate and write nothing of the user's. One throw-away
container per check (the agent image, ``docker run`` through the Docker SDK):
the repository's owner as user, ``network: none``, the agents' memory/CPU/pids
limits, every capability dropped, ``no-new-privileges``; the user's ``.git``
read-only at its own path and the queue's worktree (inside it) read-write over
it. The container is killed at ``timeout`` and removed whatever happened.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import containers, docker_client, image, platform
from .git import Git

if TYPE_CHECKING:  # for annotations only: this module needs nothing of config at run time
    from .config import Settings


def container_runner(settings: Settings):
    """A :class:`~parallel_autopilot.mergequeue.CheckRunner` that runs each check in a container."""
    from .mergequeue import CheckResult, _tail

    tag = image.ensure_image(settings, progress=lambda _: None)
    limits = platform.limits(settings)
    uid, gid = containers.repo_owner(settings)
    git_dir = Git(settings.repo).common_dir()

    def run(command: str, cwd: Path, timeout: float, log: Path) -> CheckResult:
        started = time.monotonic()
        docker = docker_client.client()
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
        return CheckResult(status == "passed", round(time.monotonic() - started, 3), output, status)

    return run


__all__ = ["container_runner"]
