"""Shared by the GUI tests: a real Fleet over a fake daemon, a real uvicorn server in a thread, Chromium.

``FakeFleet`` IS a ``parallel_autopilot.fleet.Fleet``: the GUI calls the real
start/stop/restart/list/logs code, with real clones in a real git repository
and a REAL IssueStore; only Docker and compose are the fakes of
tests/support/fleet_fakes.py. What an agent works on comes from its own report in the
store, which the fake containers write like the runtime (an agent "works on"
the issue it claimed there), so the GUI's reading of the queue is tested for real.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from support.fleet_fakes import FakeCompose, FakeDocker

from parallel_autopilot import config
from parallel_autopilot.fleet import AgentStatus, Fleet, agent_log_path

with warnings.catch_warnings():  # starlette nags about httpx2 at import; the tests use httpx
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: F401 - re-exported for the GUI tests
from parallel_autopilot.ids import agent_id
from parallel_autopilot.issues import IssueStore

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


# the real dataclass: a fake with its own copy would drift from what the GUI really gets
FakeAgentStatus = AgentStatus


class FakeFleet(Fleet):
    """The real Fleet of ``store``'s repository over a FakeDocker and a FakeCompose.

    ``settings`` defaults to the repository holding ``store`` (``<repo>/.autopilot/autopilot.db``);
    ``maximum`` is its ``autopilot.max_agents``. The helpers below are for the tests:
    ``log``/``claim`` play an agent, ``docker_down`` and ``gate`` the daemon, and
    ``calls``, ``list_calls``, ``follow_stops`` record what the GUI asked for.
    """

    def __init__(self, store: IssueStore, maximum: int = 10, clock=time.time, *, settings=None):
        settings = settings or config.load(repo=str(store.path.parent.parent), state_dir=str(store.path.parent))
        self.fake_docker = FakeDocker(clock)
        self.runner = FakeCompose(self.fake_docker, boot=self._boot)
        super().__init__(settings.replace(max_agents=maximum), runner=self.runner, docker=self.fake_docker,
                         clock=clock, ensure_image=self.fake_docker.ensure_image)
        self.store_ = store
        self.lock = threading.RLock()
        self.calls: list[tuple] = []
        self.list_calls = 0
        self.follow_stops: list[threading.Event] = []

    # -- helpers for tests -----------------------------------------------------

    @property
    def maximum(self) -> int:
        return self.settings.max_agents

    @maximum.setter
    def maximum(self, value: int) -> None:
        self.settings = self.settings.replace(max_agents=value)
        self.refresh()  # the limits, resolved again from the new settings

    @property
    def docker_down(self) -> bool:
        return self.fake_docker.down

    @docker_down.setter
    def docker_down(self, value: bool) -> None:
        self.fake_docker.down = value

    @property
    def gate(self) -> threading.Event | None:
        """When set to an Event, starting waits for it (inside compose up)."""
        return self.runner.gate

    @gate.setter
    def gate(self, value: threading.Event | None) -> None:
        self.runner.gate = value

    @property
    def agents(self) -> dict:
        """The agents whose (fake) container exists."""
        return self.fake_docker.agents(self.project)

    def log(self, agent: str, line: str) -> None:
        path = agent_log_path(self.settings, agent)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock, path.open("a") as handle:
            handle.write(line + "\n")

    def claim(self, agent: str):
        return self.store_.claim(agent_id(agent))

    def _boot(self, agent: str) -> None:
        """A new container's runtime: it frees what its previous incarnation held and reports in."""
        self.store_.release_agent(agent, reason="restarted: released by the new incarnation")
        self.store_.agent_heartbeat(agent, "idle")
        self.log(agent, f"{agent} started")

    def _report(self) -> None:
        """The running agents' heartbeats: working on the issue each holds in the store, else idle."""
        if not self.settings.db_path.exists():
            return
        held = {i.owner: i.number for i in self.store_.list("claimed")}
        rows = {r.id: r for r in self.store_.agents()}
        for ident, container in self.agents.items():
            if container.status != "running":
                continue
            state, issue = ("working", held[ident]) if ident in held else ("idle", None)
            row = rows.get(ident)
            if row is None or (row.state, row.issue) != (state, issue):  # only a change: a quiet fleet stays quiet
                self.store_.agent_heartbeat(ident, state, issue=issue)

    def _ensure_repository(self) -> None:
        # the GUI tests' directory becomes a git repository with one commit when agents start
        repo = Path(self.settings.repo)
        if not (repo / ".git").exists():
            repo.mkdir(parents=True, exist_ok=True)
            for args in (["init", "-q", "-b", "main"],
                         ["-c", "user.name=GUI Test", "-c", "user.email=gui-test@example.invalid",
                          "commit", "-q", "--allow-empty", "-m", "first"]):
                subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)

    # -- the Fleet, recorded -------------------------------------------------------

    def start(self, n, *, progress=print, wait=True):
        self.calls.append(("start", n))
        if not self.docker_down:
            self._ensure_repository()
        return super().start(n, progress=progress, wait=wait)

    def stop(self, ids=None, *, progress=print):
        self.calls.append(("stop", None if ids is None else list(ids)))
        return super().stop(ids, progress=progress)

    def restart(self, agent, *, progress=print):
        self.calls.append(("restart", agent))
        return super().restart(agent, progress=progress)

    def list(self, now=None):  # noqa: A003 - the Fleet's name
        self.list_calls += 1
        if not self.docker_down:
            self._report()
        return super().list(now)

    def logs(self, agent=None, tail=100, follow=False, stop=None, poll=0.02) -> Iterator[str]:
        stop = stop or threading.Event()
        if follow:
            self.follow_stops.append(stop)
        return super().logs(agent, tail=tail, follow=follow, stop=stop, poll=poll)


def make_settings(tmp: Path, **overrides: Any) -> config.Settings:
    """Settings for a scratch repository directory ``tmp``."""
    return config.load(repo=str(tmp), **overrides)


# -- a real server ------------------------------------------------------------------

class LiveServer:
    """``app`` served by a real uvicorn on a free 127.0.0.1 port, in a thread."""

    def __init__(self, app):
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> "LiveServer":
        from parallel_autopilot.gui.app import bind_socket, server_for

        sock = bind_socket("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.server = server_for(self.app, port=self.port)

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve(sockets=[sock])

        self.thread = threading.Thread(target=lambda: asyncio.run(main()), name="gui-test-server", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, coro, timeout: float = 10):
        """Run a coroutine on the server's event loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def tasks(self) -> list[str]:
        """Names of the tasks alive on the server's loop (but the one asking)."""
        async def names() -> list[str]:
            me = asyncio.current_task()
            return sorted(t.get_name() for t in asyncio.all_tasks() if t is not me and not t.done())
        return self.run(names())

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


# -- a real browser -------------------------------------------------------------------

@contextmanager
def chromium_page(viewport=(1100, 900)):
    """A Playwright page in Debian's headless Chromium with a fresh profile."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="gui-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            yield page
        finally:
            context.close()


def screenshot(page, name: str) -> Path:
    """Save a full-page screenshot to tests/artifacts/<name>.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def chromium_available() -> bool:
    return os.access(CHROMIUM, os.X_OK)
