"""Throw-away repositories where the fleet scenarios start real agents.

A :class:`Sandbox` is a fresh git repository under the run's scratch directory
with Settings of its own: its own compose project (named after the run, so two
runs or two engineers never collide), state directory, worktrees and logs;
``script`` agents with the light profile on network ``none``. The user's
repository and queue are never touched. Leaving the ``with`` block stops the
agents and removes every container the sandbox made, whatever happened.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .. import config
from ..errors import DockerUnavailable, one_line
from ..git import Git
from ..issues import IssueStore
from .context import Context
from .progress import quiet

#: Label on every bare (baseline) container, valued with the run id: cleanup finds them all.
LABEL_BENCH = "parallel-autopilot.bench"

#: The user's settings that shape what is measured and are kept in sandboxes.
KEPT = ("image", "base_image", "agent_cli", "lease_seconds", "max_attempts", "backoff_seconds",
        "issue_timeout", "poll_seconds", "watchdog_seconds", "pids_limit", "stop_grace_seconds",
        "health_interval_seconds", "start_timeout_seconds")


def fleet_problem(ctx: Context) -> str | None:
    """Why the fleet scenarios cannot run here (None when they can)."""
    if ctx.image is None:
        return ctx.image_problem or "the agent image is not available"
    try:
        from .. import fleet
    except ImportError as err:
        return f"parallel_autopilot.fleet cannot be imported ({err})"
    missing = [f for f in ("open", "start", "stop", "list") if not hasattr(getattr(fleet, "Fleet", None), f)]
    return f"parallel_autopilot.fleet.Fleet lacks {', '.join(missing)}" if missing else None


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` (the sandbox's own repository); raise on failure."""
    return Git(repo).run(*args)


class Sandbox:
    """A fresh repository named ``name`` with its own fleet Settings (``.settings``)."""

    def __init__(self, ctx: Context, name: str, **overrides: Any):
        self.ctx = ctx
        self.name = name
        self.root = ctx.workdir / name
        self.repo = self.root / "repo"
        self.project = f"pa-bench-{ctx.run_id}-{name}"
        self.repo.mkdir(parents=True)
        git(self.repo, "init", "-q", "-b", "main")
        git(self.repo, "config", "user.name", "bench")
        git(self.repo, "config", "user.email", "bench@localhost")
        (self.repo / "README.md").write_text(f"benchmark sandbox {self.project}\n")
        git(self.repo, "add", "README.md")
        git(self.repo, "commit", "-q", "-m", "sandbox")
        user = {k: getattr(ctx.settings, k) for k in KEPT}
        absent = self.root / "absent"  # credentials: none (compose mounts a placeholder)
        values = {
            **user,
            "image": ctx.image or user.get("image"),
            "project": self.project,
            "state_dir": ".autopilot", "worktrees_dir": ".worktrees", "logs_dir": "docs/logs",
            "base_branch": "main",
            "agent_kind": "script", "agent_command": None, "profile": "light",
            "memory": None, "cpus": None, "max_agents": 10,
            "network": "none", "env_file": None,
            "codex_home": str(absent / "codex"), "ssh_dir": str(absent / "ssh"),
            "gitconfig": str(absent / "gitconfig"),
            **overrides,
        }
        self.settings = config.load({"autopilot": values}, repo=str(self.repo))
        self.bare: list[str] = []

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the queue -----------------------------------------------------------

    def store(self) -> IssueStore:
        """The sandbox's issue store."""
        return IssueStore(self.settings.db_path, max_attempts=self.settings.max_attempts,
                          backoff_seconds=self.settings.backoff_seconds)

    def add_sleepers(self, count: int, seconds: float, title: str) -> list[int]:
        """Add ``count`` issues whose script sleeps ``seconds``; return their numbers."""
        store = self.store()
        # each writes a file: an attempt that changes nothing ends `empty`, not done (issue 10)
        items = [{"title": f"{title} {i + 1}/{count}",
                  "script": f'sleep {seconds:g}; echo done > "sleeper-$ISSUE_NUMBER.txt"'} for i in range(count)]
        return [issue.number for issue in store.add_many(items)]

    def seconds_until_done(self, numbers: Iterable[int], timeout: float, what: str) -> float:
        """Seconds from now until every issue in ``numbers`` is done (RuntimeError at a failed or dead one)."""
        t0 = self.ctx.clock()
        wait_for(all_done(self.store(), list(numbers)), timeout, what, poll=0.1, sleep=self.ctx.sleep)
        return self.ctx.clock() - t0

    # -- the fleet -----------------------------------------------------------

    @contextlib.contextmanager
    def settings_changed(self, **changes: Any) -> Iterator[None]:
        """Run the fleet with ``changes`` to the sandbox's settings (``compose="v1"``) inside the block."""
        default = self.settings
        self.settings = default.replace(**changes)
        self.__dict__.pop("fleet", None)
        try:
            yield
        finally:
            self.settings = default
            self.__dict__.pop("fleet", None)

    @functools.cached_property
    def fleet(self):
        """The sandbox's one :class:`~parallel_autopilot.fleet.Fleet` (each start resolves what may change)."""
        from ..fleet import Fleet

        return Fleet.open(self.settings)

    def start(self, n: int, progress: Callable[[str], None] | None = None) -> list:
        """``Fleet.start`` of this sandbox (waits until healthy)."""
        return self.fleet.start(n, progress=progress or self.ctx.progress)

    def stop(self, ids: Iterable[str] | None = None, progress: Callable[[str], None] | None = None) -> list[str]:
        """``Fleet.stop`` of this sandbox."""
        return self.fleet.stop(ids, progress=progress or self.ctx.progress)

    def agents(self) -> list:
        """``Fleet.list`` of this sandbox."""
        return self.fleet.list()

    def reset_worktrees(self) -> None:
        """Remove every agent worktree and branch, so the next start makes them anew."""
        from ..git import clones

        clones.remove(self.settings, force=True)

    # -- bare containers (baselines) -----------------------------------------

    def bare_name(self, label: str) -> str:
        """A unique name for a baseline container of this sandbox."""
        return f"{self.project}-bare-{label}"

    def docker_run(self, name: str, *, command: Iterable[str] = (), user: str | None = None,
                   volumes: dict[str, str] | None = None) -> str:
        """``docker run -d`` of the agent image with the agents' light limits; return the id.

        ``volumes`` maps a host path to its mount point in the container (read-write).
        """
        from .. import platform
        from ..containers import daemon

        limits = platform.limits(self.settings)
        self.bare.append(name)
        with docker_step(f"docker run {name}"):
            container = daemon.client().containers.run(
                self.settings.image, list(command), detach=True, name=name, init=True,
                labels={LABEL_BENCH: self.ctx.run_id}, network_mode="none", user=user,
                mem_limit=limits.memory, nano_cpus=int(limits.cpus * 1e9), pids_limit=limits.pids,
                volumes={host: {"bind": inside, "mode": "rw"} for host, inside in (volumes or {}).items()})
        return container.id

    def docker_rm(self, names: Iterable[str]) -> None:
        """``docker rm -f`` of baseline containers (no error if already gone)."""
        from ..containers import daemon

        names = list(names)
        if names:
            daemon.remove(names)
            self.bare = [n for n in self.bare if n not in names]

    # -- cleanup -------------------------------------------------------------

    def close(self) -> None:
        """Stop the agents and remove every container of this sandbox (never raises)."""
        try:
            self.stop(progress=quiet)
        except Exception:  # noqa: BLE001 - cleanup goes on with the blunt tools below
            pass
        try:
            self.docker_rm(self.bare)
        except Exception:  # noqa: BLE001 - the runner removes every container of the run at the end
            pass
        remove_labelled(f"parallel-autopilot.project={self.project}")


@contextlib.contextmanager
def docker_step(what: str) -> Iterator[None]:
    """Turn the Docker SDK's errors inside the block into one RuntimeError line starting with ``what``."""
    try:
        yield
    except DockerUnavailable:
        raise
    except Exception as err:  # noqa: BLE001 - APIError, NotFound, requests' errors: all one line
        raise RuntimeError(f"{what}: {one_line(err)}") from None


def remove_labelled(label: str) -> None:
    """``docker rm -f`` every container carrying ``label`` (``key=value``); never raises (cleanup)."""
    from ..containers import daemon

    try:
        daemon.remove_labelled(label)
    except Exception:  # noqa: BLE001 - a daemon that went away has nothing left to clean
        pass


def all_done(store: Any, numbers: list[int]) -> Callable[[], bool]:
    """A :func:`wait_for` predicate: every issue in ``numbers`` is done (RuntimeError at the first that ended otherwise)."""
    def finished() -> bool:
        mine = [i for i in store.list(("done", "failed", "dead")) if i.number in numbers]
        bad = [i for i in mine if i.status != "done"]
        if bad:
            raise RuntimeError(f"issue #{bad[0].number} is {bad[0].status}: {bad[0].error}")
        return len(mine) == len(numbers)

    return finished


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, *, poll: float = 0.05,
             clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Any:
    """Poll ``predicate`` until it returns something truthy; TimeoutError naming ``what``."""
    deadline = clock() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if clock() > deadline:
            raise TimeoutError(f"{what}: not reached after {timeout:g}s")
        sleep(poll)


def container_memory(name: str) -> dict[str, float]:
    """Memory of a running container in MiB, the way ``docker stats`` counts it.

    ``used`` is the cgroup's usage minus inactive page cache (what ``docker
    stats`` shows); ``rss`` is anonymous memory; ``usage`` is the raw counter.
    """
    from ..containers import daemon

    data = daemon.client().api.stats(name, stream=False, one_shot=True)
    memory = data.get("memory_stats") or {}
    detail = memory.get("stats") or {}
    usage = float(memory.get("usage") or 0)
    inactive = float(detail.get("total_inactive_file", detail.get("inactive_file", 0)))
    rss = float(detail.get("total_rss", detail.get("rss", detail.get("anon", 0))))
    mib = 1024 * 1024
    if usage <= 0:
        raise RuntimeError(f"docker stats of {name} gave no memory usage: {json.dumps(memory)[:200]}")
    return {"used": (usage - inactive) / mib, "rss": rss / mib, "usage": usage / mib}


__all__ = ["Sandbox", "LABEL_BENCH", "fleet_problem", "git", "docker_step", "remove_labelled", "wait_for", "container_memory"]
