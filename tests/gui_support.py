"""Shared by the GUI tests: a fake fleet, a real uvicorn server in a thread, Chromium.

The fake has the same functions and signatures as ``parallel_autopilot.fleet``
but keeps its agents in memory; what an agent works on comes from a REAL
IssueStore (an agent "works on" the issue it claimed there), so the GUI's
reading of the queue is tested for real.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from parallel_autopilot import config

with warnings.catch_warnings():  # starlette nags about httpx2 at import; the tests use httpx
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: F401 - re-exported for the GUI tests
from parallel_autopilot.errors import AgentNotFound, DockerUnavailable
from parallel_autopilot.ids import agent_count
from parallel_autopilot.ids import agent_id
from parallel_autopilot.fleet import AgentStatus
from parallel_autopilot.issues import IssueStore

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts"


# the real dataclass: a fake with its own copy would drift from what the GUI really gets
FakeAgentStatus = AgentStatus


class FakeFleet:
    """In-memory stand-in for ``parallel_autopilot.fleet`` (same functions and signatures)."""

    def __init__(self, store: IssueStore, maximum: int = 10, clock=time.time):
        self.store = store
        self.maximum = maximum
        self.clock = clock
        self.lock = threading.RLock()
        self.agents: dict[str, dict] = {}
        self.logs: dict[str, list[str]] = {}
        self.docker_down = False
        self.gate: threading.Event | None = None  # when set, start_agents waits for it
        self.calls: list[tuple] = []
        self.list_calls = 0
        self.follow_stops: list[threading.Event] = []

    # -- helpers for tests -----------------------------------------------------

    def log(self, agent: str, line: str) -> None:
        with self.lock:
            self.logs.setdefault(agent_id(agent), []).append(line)

    def claim(self, agent: str):
        return self.store.claim(agent_id(agent))

    def _docker(self) -> None:
        if self.docker_down:
            raise DockerUnavailable("Docker is not reachable: start dockerd (or Docker Desktop) and retry")

    # -- fleet's functions -------------------------------------------------------

    def max_agents(self, settings) -> int:
        return self.maximum

    def start_agents(self, settings, n, *, progress=print, wait=True):
        self.calls.append(("start", n))
        n = agent_count(n, self.maximum)  # fleet.check_count's rule
        self._docker()
        ids = [agent_id(i) for i in range(1, n + 1)]
        progress(f"worktrees: {', '.join(ids)}")
        if self.gate is not None:
            self.gate.wait(30)
        with self.lock:
            for ident in ids:
                if ident not in self.agents:
                    self.agents[ident] = {"since": self.clock(), "restarts": 0}
                    self.logs.setdefault(ident, []).append(f"{ident} started")
        for ident in ids:
            progress(f"{ident} healthy")
        return [a for a in self.list_agents(settings) if a.id in ids]

    def stop_agents(self, settings, ids=None, *, progress=print):
        self.calls.append(("stop", None if ids is None else list(ids)))
        self._docker()
        with self.lock:
            targets = sorted(self.agents) if ids is None else sorted({agent_id(i) for i in ids})
            missing = [i for i in targets if i not in self.agents]
            if missing:
                raise AgentNotFound(f"no such agent: {', '.join(missing)}")
            for ident in targets:
                del self.agents[ident]
        for ident in targets:
            self.store.release_agent(ident, reason="stopped by the orchestrator")
        progress(f"stopped {', '.join(targets) or 'nothing'}")
        return targets

    def restart_agent(self, settings, agent, *, progress=print):
        self.calls.append(("restart", agent))
        self._docker()
        ident = agent_id(agent)
        with self.lock:
            if ident not in self.agents:
                raise AgentNotFound(f"no such agent: {ident}")
            self.agents[ident] = {"since": self.clock(), "restarts": self.agents[ident]["restarts"] + 1}
        self.store.release_agent(ident, reason="restarted")
        progress(f"{ident} restarted")
        return next(a for a in self.list_agents(settings) if a.id == ident)

    def list_agents(self, settings, *, now=None):
        self._docker()
        now = self.clock() if now is None else now
        self.list_calls += 1
        claimed = {i.owner: i for i in self.store.list("claimed")}
        with self.lock:
            agents = dict(self.agents)
        result = []
        for ident, info in sorted(agents.items()):
            issue = claimed.get(ident)
            result.append(FakeAgentStatus(
                id=ident, container=f"fake-{ident}", state="running", health="healthy",
                activity="working" if issue else "idle", issue=issue.number if issue else None,
                issue_title=issue.title if issue else None, since=info["since"],
                uptime=round(now - info["since"], 1), heartbeat_age=0.5, restarts=info["restarts"]))
        return result

    def get_logs(self, settings, agent=None, tail=100, follow=False, stop=None, poll=0.02) -> Iterator[str]:
        stop = stop or threading.Event()
        if agent is not None:
            ident = agent_id(agent)
            with self.lock:
                if ident not in self.logs and ident not in self.agents:
                    raise AgentNotFound(f"no logs for {ident}")
            sources = [ident]
        else:
            sources = sorted(self.logs)
        if follow:
            self.follow_stops.append(stop)

        def lines() -> Iterator[str]:
            prefix = agent is None
            with self.lock:
                seen = {s: len(self.logs.get(s, [])) for s in sources}
                initial = [(s, line) for s in sources for line in self.logs.get(s, [])]
            for s, line in initial[-tail:] if tail else []:
                yield f"{s} | {line}" if prefix else line
            while follow and not stop.is_set():
                fresh = []
                with self.lock:
                    for s in sources:
                        got = self.logs.get(s, [])
                        fresh += [(s, line) for line in got[seen[s]:]]
                        seen[s] = len(got)
                for s, line in fresh:
                    yield f"{s} | {line}" if prefix else line
                if not fresh:
                    stop.wait(poll)

        return lines()

    def resources(self, settings) -> dict:
        return {"platform": "Linux x86_64", "arch": "x86_64", "cpus": 2, "memory_total": 24 * 1024 ** 3,
                "memory_used": 5 * 1024 ** 3, "max_agents": self.maximum, "memory_per_agent": "2g",
                "cpus_per_agent": 1.0, "profile": "light", "docker": not self.docker_down}


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
