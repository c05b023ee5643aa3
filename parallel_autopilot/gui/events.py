"""Server-sent events: one shared snapshot watcher, per-client streams, log pumps.

The page never polls. ONE :class:`SnapshotHub` per app computes the snapshot
(agents, issues, counts, resources) every ``interval`` seconds while at least
one browser listens, and pushes it to every listener only when it changed.
A listener that goes away is dropped at once (:class:`EventStream` watches
for the disconnect); when the last one goes, the watcher stops.

Log streams are per client, since each follows the agent it selected: a
thread iterates ``Fleet.logs(follow=True, stop=event)`` (a blocking
generator) and hands lines to the event loop; the disconnect sets ``stop``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from typing import Any, AsyncIterator, Callable, Iterator

import anyio
import anyio.to_thread
from starlette.responses import Response

from ..errors import AutopilotError

log = logging.getLogger(__name__)

PING = b": ping\n\n"
CLOSE = object()  # put in a listener's queue: the server is shutting down, end the stream
RETRY = b"retry: 2000\n\n"  # the browser reconnects 2 s after losing the stream


def sse(event: str, data: Any) -> bytes:
    """One server-sent event whose data is JSON (so it is always one line)."""
    payload = json.dumps(data, separators=(",", ":"), default=str)
    return f"event: {event}\ndata: {payload}\n\n".encode()


class EventStream(Response):
    """An ASGI response streaming SSE chunks until the source ends or the client leaves.

    Unlike a plain streaming response it always listens for the disconnect,
    whatever ASGI spec version the server speaks, so an idle stream of a gone
    browser is closed at once instead of at its next write.
    """

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[bytes]):  # noqa: D107 - no body, no headers to set up
        self.chunks = chunks
        self.background = None
        self.status_code = 200

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),  # proxies must not buffer an event stream
        ]})
        try:
            async with anyio.create_task_group() as group:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(watch)
                await send({"type": "http.response.body", "body": RETRY, "more_body": True})
                async for chunk in self.chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                group.cancel_scope.cancel()
        except OSError:  # the client went away in the middle of a write
            pass
        finally:
            await self.chunks.aclose()  # runs the source's cleanup (unsubscribe, stop thread)


def _offer(queue: asyncio.Queue, item: Any) -> None:
    """Put ``item``, replacing an unread older one: a slow client gets the latest."""
    while True:
        try:
            queue.put_nowait(item)
            return
        except asyncio.QueueFull:
            try:
                queue.get_nowait()
            except asyncio.QueueEmpty:
                pass


class SnapshotHub:
    """The one watcher shared by every connected page.

    ``compute`` is blocking (Docker, SQLite) and runs in a worker thread.
    ``fingerprint`` maps a snapshot to what counts as a change (volatile fields
    such as uptimes left out), so an unchanged fleet sends nothing.
    """

    def __init__(self, compute: Callable[[], dict], *, interval: float = 0.75,
                 fingerprint: Callable[[dict], str] | None = None, ping_seconds: float = 15.0):
        self.compute = compute
        self.interval = interval
        self.fingerprint = fingerprint or (lambda snap: json.dumps(snap, sort_keys=True, default=str))
        self.ping_seconds = ping_seconds
        self.ticks = 0  # snapshots computed: one per interval, however many listeners
        self.pushes = 0  # snapshots that differed from the previous one
        self.latest: dict | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: set[asyncio.Queue] = set()
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None

    @property
    def subscriber_count(self) -> int:
        """Listeners connected now."""
        return len(self._subscribers)

    @property
    def running(self) -> bool:
        """Whether the watcher task is alive."""
        return self._task is not None and not self._task.done()

    def poke(self) -> None:
        """Recompute now rather than at the next tick (after a start/stop...).

        Safe to call from any thread.
        """
        loop, wake = self.loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        try:
            if _running_loop() is loop:
                wake.set()
            else:
                loop.call_soon_threadsafe(wake.set)
        except RuntimeError:  # the loop closed meanwhile
            pass

    async def stream(self) -> AsyncIterator[bytes]:
        """SSE chunks for one listener: the snapshot now, then each change."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        self._subscribers.add(queue)
        try:
            if self.running and self.latest is not None:
                _offer(queue, self.latest)
            self._ensure_running()
            while True:
                try:
                    snapshot = await asyncio.wait_for(queue.get(), self.ping_seconds)
                except asyncio.TimeoutError:
                    yield PING  # keeps proxies from closing an idle stream
                    continue
                if snapshot is CLOSE:
                    return
                yield sse("snapshot", snapshot)
        finally:
            self._subscribers.discard(queue)
            if not self._subscribers and self._wake is not None:
                self._wake.set()  # let the watcher notice it is alone and stop

    def _ensure_running(self) -> None:
        if self.running:
            return
        self.loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = self.loop.create_task(self._run(), name="gui-snapshot-watcher")

    async def _run(self) -> None:
        last = None
        self.latest = None
        while self._subscribers:
            self._wake.clear()
            snapshot = await anyio.to_thread.run_sync(self._safe_compute)
            self.ticks += 1
            key = self.fingerprint(snapshot)
            if key != last:
                last, self.latest = key, snapshot
                self.pushes += 1
                for queue in list(self._subscribers):
                    _offer(queue, snapshot)
            if not self._subscribers:
                break
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
        self.latest = None

    def _safe_compute(self) -> dict:
        try:
            return self.compute()
        except Exception:  # noqa: BLE001 - the watcher must outlive any bug, and say so
            log.exception("computing the GUI snapshot failed")
            return {"errors": ["internal error while reading the fleet: see the `inv gui` terminal"]}

    def close_streams(self) -> None:
        """End every listener's stream now (server shutdown: they would hold it up)."""
        for queue in list(self._subscribers):
            _offer(queue, CLOSE)

    async def aclose(self) -> None:
        """Stop the watcher (server shutdown)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class LogPumps:
    """Bridges blocking log iterators into SSE streams, one thread per stream.

    ``active`` counts live pumps (threads not yet finished), so a test can
    check that a dropped browser leaves none behind.
    """

    def __init__(self, batch: int = 500, queue_size: int = 2000, ping_seconds: float = 15.0):
        self.batch = batch
        self.queue_size = queue_size
        self.ping_seconds = ping_seconds
        self._threads: set[threading.Thread] = set()
        self._streams: set[tuple[asyncio.Queue, threading.Event]] = set()
        self._lock = threading.Lock()

    @property
    def active(self) -> int:
        """Pump threads still running."""
        with self._lock:
            return sum(t.is_alive() for t in self._threads)

    def close_streams(self) -> None:
        """End every log stream now (server shutdown). Call on the event loop."""
        for queue, stop in list(self._streams):
            stop.set()
            _offer(queue, CLOSE)

    async def stream(self, name: str, lines: Iterator[str], stop: threading.Event) -> AsyncIterator[bytes]:
        """SSE ``lines`` events (JSON lists of lines) from ``lines`` until ``stop`` or disconnect.

        ``lines`` must end soon after ``stop`` is set (``Fleet.logs`` does).
        An error while reading becomes one ``failure`` event, then the stream ends.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(maxsize=self.queue_size)
        end = object()

        def put(item: Any) -> bool:
            # blocks while the client is slow (backpressure), gives up once stopped
            future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
            while True:
                try:
                    future.result(timeout=0.5)
                    return True
                except concurrent.futures.TimeoutError:
                    if stop.is_set():
                        future.cancel()
                        return False

        def pump() -> None:
            try:
                for line in lines:
                    if stop.is_set() or not put(line):
                        return
            except AutopilotError as err:
                put(("failure", str(err)))
            except RuntimeError:  # the event loop is gone (server shutdown)
                return
            except Exception:  # noqa: BLE001 - report, never kill the server
                log.exception("reading logs for %s failed", name)
                put(("failure", "reading the log failed: see the `inv gui` terminal"))
            finally:
                close = getattr(lines, "close", None)
                if close:
                    close()
                try:
                    if not stop.is_set():
                        put(end)
                except RuntimeError:
                    pass

        thread = threading.Thread(target=pump, name=f"gui-logs-{name}", daemon=True)
        with self._lock:
            self._threads = {t for t in self._threads if t.is_alive()} | {thread}
        thread.start()
        self._streams.add((queue, stop))
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), self.ping_seconds)
                except asyncio.TimeoutError:
                    yield PING
                    continue
                if item is CLOSE:
                    return
                batch, last = [], None
                while True:  # drain what is queued into one event
                    if item is end or item is CLOSE or isinstance(item, tuple):
                        last = item
                        break
                    batch.append(item)
                    if len(batch) >= self.batch or queue.empty():
                        break
                    item = queue.get_nowait()
                if batch:
                    yield sse("lines", batch)
                if isinstance(last, tuple):
                    yield sse(last[0], {"error": last[1]})
                if last is CLOSE:
                    return
                if last is not None:
                    yield sse("end", {})
                    return
        finally:
            stop.set()
            self._streams.discard((queue, stop))


__all__ = ["EventStream", "SnapshotHub", "LogPumps", "sse", "PING"]
