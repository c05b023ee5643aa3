"""Server-sent events against a real uvicorn server: pushes, one watcher, no leaks."""

from __future__ import annotations

import json
import socket
import struct

import httpx
import pytest
from support.gui import FakeFleet, LiveServer, make_settings, wait_until

from parallel_autopilot.errors import DockerUnavailable
from parallel_autopilot.gui import create_app
from parallel_autopilot.issues import IssueStore

pytestmark = pytest.mark.timeout(120)


class Events:
    """One SSE connection read event by event (httpx, blocking reads with a timeout)."""

    def __init__(self, url: str, path: str):
        self.client = httpx.Client(base_url=url, timeout=httpx.Timeout(15.0))
        self.response = self.client.send(self.client.build_request("GET", path), stream=True)
        assert self.response.status_code == 200, self.response.read()
        assert self.response.headers["content-type"].startswith("text/event-stream")
        self.raw = self.response.iter_lines()

    def next(self) -> tuple[str, object]:
        name, data = None, []
        for line in self.raw:
            if line == "":
                if name or data:
                    return name, json.loads("\n".join(data))
            elif line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        raise EOFError("stream ended")

    def until(self, predicate, limit: int = 50):
        """The first event (name, data) satisfying ``predicate``."""
        for _ in range(limit):
            event = self.next()
            if predicate(*event):
                return event
        raise AssertionError("no such event")

    def lines(self, last: str) -> list[str]:
        """Log lines from ``lines`` events up to and including ``last`` (batching may vary)."""
        got: list[str] = []
        while last not in got:
            name, batch = self.next()
            assert name == "lines", (name, batch)
            got += batch
        return got

    def close(self) -> None:
        self.response.close()
        self.client.close()


def raw_stream(port: int, path: str) -> socket.socket:
    """A bare socket that asked for a stream and saw its first event."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
    seen = b""
    while b"event: " not in seen:
        chunk = sock.recv(65536)
        assert chunk, "closed before the first event"
        seen += chunk
    return sock


def abort(sock: socket.socket) -> None:
    """Close with a TCP reset, like a killed browser."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.fixture
def live(tmp_path, request):
    """A real server over a FakeFleet; ``create_app``'s options from ``@pytest.mark.parametrize("live", [{...}],
    indirect=True)``."""
    settings = make_settings(tmp_path)
    store = IssueStore(settings.db_path)
    for title in ("First job", "Second job", "Third job"):
        store.add(title, priority="high")
    fleet = FakeFleet(store)
    app = create_app(settings, fleet=fleet, interval=0.2, **getattr(request, "param", {}))
    with LiveServer(app) as server:
        server.fleet, server.store, server.hub = fleet, store, app.state.hub
        server.pumps, server.csrf = app.state.pumps, {"X-CSRF-Token": app.state.guard.csrf_token}
        yield server
    assert not server.thread.is_alive(), "the server did not shut down"


def post(live, path, body=None):
    response = httpx.post(live.url + path, json=body, headers=live.csrf, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_stream_starts_with_a_snapshot_and_pushes_each_change(live):
    events = Events(live.url, "/api/events")
    try:
        name, snap = events.next()
        assert name == "snapshot" and snap["agents"] == [] and snap["open_total"] == 3
        post(live, "/api/agents/start", {"n": 3})
        _, snap = events.until(lambda _, s: len(s["agents"]) == 3)
        assert [a["activity"] for a in snap["agents"]] == ["idle"] * 3
        claim = live.fleet.claim("agent-002")
        _, snap = events.until(lambda _, s: s["agents"][1]["issue"] is not None)
        assert snap["agents"][1]["issue"] == claim.number
        assert snap["agents"][1]["issue_title"] == claim.issue.title
        assert snap["counts"]["claimed"] == 1
        post(live, "/api/agents/stop", {"all": True})
        _, snap = events.until(lambda _, s: s["agents"] == [] and s["operation"]["state"] == "done")
        assert snap["counts"]["claimed"] == 0 and snap["operation"]["action"] == "stop"
    finally:
        events.close()


def test_an_unchanged_fleet_sends_nothing(live):
    post(live, "/api/agents/start", {"n": 2})  # uptimes now change on every tick
    events = Events(live.url, "/api/events")
    try:
        events.next()
        pushes, ticks = live.hub.pushes, live.hub.ticks
        wait_until(lambda: live.hub.ticks >= ticks + 8, what="eight more ticks")
        assert live.hub.pushes == pushes
        live.fleet.claim("agent-001")
        wait_until(lambda: live.hub.pushes == pushes + 1, what="one push for one change")
        _, snap = events.next()
        assert snap["agents"][0]["issue"] is not None
    finally:
        events.close()


def test_one_watcher_serves_every_client(live):
    streams = [Events(live.url, "/api/events") for _ in range(20)]
    try:
        for stream in streams:
            assert stream.next()[0] == "snapshot"
        assert live.hub.subscriber_count == 20
        ticks = live.hub.ticks
        wait_until(lambda: live.hub.ticks >= ticks + 5, what="five more ticks")
        # one fleet read per tick, however many pages listen
        calls, ticks = live.fleet.list_calls, live.hub.ticks
        assert calls - ticks in (0, 1)  # a tick may be between its read and its count
        assert live.tasks().count("gui-snapshot-watcher") == 1
    finally:
        for stream in streams:
            stream.close()


def test_fifty_dropped_streams_leave_no_subscriber_and_no_task(live):
    baseline = live.tasks()
    assert live.hub.subscriber_count == 0 and not live.hub.running
    polite = [Events(live.url, "/api/events") for _ in range(25)]
    for stream in polite:
        stream.next()
    rude = [raw_stream(live.port, "/api/events") for _ in range(25)]
    assert live.hub.subscriber_count == 50
    for stream in polite:
        stream.close()
    for sock in rude:
        abort(sock)
    wait_until(lambda: live.hub.subscriber_count == 0, what="every subscriber to be dropped")
    wait_until(lambda: not live.hub.running, what="the watcher to stop")
    wait_until(lambda: live.tasks() == baseline, what="the server's tasks to return to the baseline")
    # and the server still works
    assert httpx.get(live.url + "/api/snapshot").status_code == 200
    again = Events(live.url, "/api/events")
    try:
        assert again.next()[0] == "snapshot" and live.hub.running
    finally:
        again.close()


def test_the_log_stream_follows_the_selected_agent_only(live):
    post(live, "/api/agents/start", {"n": 3})
    for agent in ("agent-001", "agent-002", "agent-003"):
        live.fleet.log(agent, f"{agent} did step 1")
    events = Events(live.url, "/api/agents/002/logs/stream?tail=10")
    try:
        assert events.lines("agent-002 did step 1") == ["agent-002 started", "agent-002 did step 1"]
        live.fleet.log("agent-001", "agent-001 did step 2")
        live.fleet.log("agent-002", "agent-002 did step 2")
        live.fleet.log("agent-003", "agent-003 did step 2")
        live.fleet.log("agent-002", "agent-002 did step 3")
        assert events.lines("agent-002 did step 3") == ["agent-002 did step 2", "agent-002 did step 3"]
    finally:
        events.close()


def test_dropped_log_streams_stop_their_readers(live):
    post(live, "/api/agents/start", {"n": 2})
    baseline = live.tasks()
    polite = [Events(live.url, "/api/agents/1/logs/stream") for _ in range(10)]
    for stream in polite:
        stream.next()
    rude = [raw_stream(live.port, "/api/agents/2/logs/stream") for _ in range(10)]
    assert live.pumps.active == 20
    for stream in polite:
        stream.close()
    for sock in rude:
        abort(sock)
    wait_until(lambda: live.pumps.active == 0, what="every log reader thread to end")
    assert len(live.fleet.follow_stops) == 20 and all(stop.is_set() for stop in live.fleet.follow_stops)
    wait_until(lambda: live.tasks() == baseline, what="the server's tasks to return to the baseline")


def test_a_failing_log_reader_ends_the_stream_with_its_error(live):
    post(live, "/api/agents/start", {"n": 1})

    def broken(agent=None, tail=100, follow=False, stop=None, poll=0.02):
        def lines():
            yield "last good line"
            raise DockerUnavailable("Docker is not reachable: start dockerd and retry")
        return lines()

    live.fleet.logs = broken
    events = Events(live.url, "/api/agents/1/logs/stream")
    try:
        assert events.next() == ("lines", ["last good line"])
        assert events.next() == ("failure", {"error": "Docker is not reachable: start dockerd and retry"})
        assert events.next() == ("end", {})
    finally:
        events.close()
    wait_until(lambda: live.pumps.active == 0, what="the reader thread to end")


def test_shutdown_with_open_streams_ends(tmp_path):
    settings = make_settings(tmp_path)
    fleet = FakeFleet(IssueStore(settings.db_path))
    fleet.start(1, progress=lambda _: None)
    app = create_app(settings, fleet=fleet, interval=0.2)
    server = LiveServer(app).__enter__()
    streams = [Events(server.url, "/api/events"), Events(server.url, "/api/agents/1/logs/stream")]
    for stream in streams:
        stream.next()
    server.__exit__(None, None, None)  # what Ctrl-C on `inv gui` does
    assert not server.thread.is_alive()
    assert app.state.pumps.active == 0 and not app.state.hub.running
    for stream in streams:
        stream.close()


@pytest.mark.parametrize("live", [{"max_log_streams": 3}], indirect=True, ids=["three-views"])
def test_log_views_are_bounded(live):
    post(live, "/api/agents/start", {"n": 1})
    streams = [Events(live.url, "/api/agents/1/logs/stream") for _ in range(3)]
    try:
        for stream in streams:
            stream.next()
        refused = httpx.get(live.url + "/api/agents/1/logs/stream", timeout=15)
        assert refused.status_code == 409 and "close some pages" in refused.json()["error"]
    finally:
        for stream in streams:
            stream.close()
    wait_until(lambda: live.pumps.active == 0, what="the readers to end")
    again = Events(live.url, "/api/agents/1/logs/stream")
    try:
        assert again.next()[0] == "lines"
    finally:
        again.close()
