"""One agent's logs, in its own directory: ``<logs>/agents/<agent-id>/``.

- ``agent.log``: concise human lines (``2026-01-02T03:04:05Z agent-001 claimed #4 ...``),
  also printed to stdout, so ``docker logs`` carries the same story.
- ``events.jsonl``: one JSON object per event (boot, claimed, started,
  committed, completed, failed, lease-lost, released, salvaged, watchdog, stopped...).
- ``issue-<N>-attempt-<k>.log``: the agent subprocess's output for that attempt.

Two agents never share a file: every path holds the agent id. Each line is
written with one ``write`` on a file opened with ``O_APPEND`` and flushed at
once, so a line is never split and a crash loses nothing written before it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, TextIO


def utc(ts: float) -> str:
    """``2026-01-02T03:04:05Z`` for epoch seconds ``ts``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class AgentLog:
    """The log directory of one agent (one incarnation writes, appending)."""

    def __init__(self, root: str | os.PathLike, agent_id: str, incarnation: str,
                 clock: Callable[[], float] = time.time, stdout: TextIO | None = None):
        self.agent_id = agent_id
        self.incarnation = incarnation
        self.clock = clock
        self.stdout = sys.stdout if stdout is None else stdout
        self.dir = Path(root) / "agents" / agent_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.agent_log = self.dir / "agent.log"
        self.events_file = self.dir / "events.jsonl"
        # one lock for both files, reentrant: a line may be written while another is built
        self._lock = threading.RLock()

    def attempt_path(self, number: int, attempt: int) -> Path:
        """Where the output of attempt ``attempt`` on issue ``number`` goes."""
        return self.dir / f"issue-{number}-attempt-{attempt}.log"

    def line(self, text: str, at: float | None = None) -> None:
        """Write one human line to ``agent.log`` and stdout."""
        at = self.clock() if at is None else at
        flat = str(text).replace("\r", " ").replace("\n", " ")  # one event, one line
        text = f"{utc(at)} {self.agent_id} {flat}"
        with self._lock:
            _append(self.agent_log, text + "\n")
            try:
                self.stdout.write(text + "\n")
                self.stdout.flush()
            except (OSError, ValueError):
                pass  # a closed stdout must not stop the agent; the file has the line

    def event(self, kind: str, message: str | None = None, /, **fields: Any) -> dict[str, Any]:
        """Record one event in ``events.jsonl`` (and ``message``, if any, in ``agent.log``)."""
        at = self.clock()
        record = {"time": utc(at), "ts": round(at, 3), "agent": self.agent_id,
                  "incarnation": self.incarnation, "event": kind}
        record.update({k: v for k, v in fields.items() if v is not None})
        with self._lock:
            _append(self.events_file, json.dumps(record, default=str, sort_keys=False) + "\n")
            if message:
                self.line(message, at)
        return record

    def events(self) -> list[dict[str, Any]]:
        """Every event recorded so far, oldest first (for tests and tools)."""
        try:
            text = self.events_file.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def _append(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode("utf-8", "replace"))
    finally:
        os.close(fd)


def read_end(path: str | os.PathLike, size: int) -> str | None:
    """The last ``size`` bytes of a file, as text (undecodable bytes replaced); None if unreadable.

    The one reader of a log's end: an attempt's last line, a check's tail (the merge
    queue's too) - never the whole of a log that may be large.
    """
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


def last_line(path: str | os.PathLike, limit: int = 200, skip_prefix: str = "### ") -> str | None:
    """The last non-empty output line of an attempt log (our own ``### `` headers skipped)."""
    text = read_end(path, 8192)
    for line in reversed((text or "").splitlines()):
        line = line.strip()
        if line and not line.startswith(skip_prefix):
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return None


def tail(path: str | os.PathLike, lines: int = 20, limit: int = 4000, skip_prefix: str | None = "### ") -> str | None:
    """The last ``lines`` output lines of a log (our ``### `` headers skipped; None: none skipped),
    at most ``limit`` characters; None when there are none or the file cannot be read."""
    text = read_end(path, 65536)
    if text is None:
        return None
    kept = [line.rstrip() for line in text.splitlines()
            if line.strip() and not (skip_prefix and line.startswith(skip_prefix))]
    result = "\n".join(kept[-lines:])
    return (result[-limit:] if len(result) > limit else result) or None


class Follow:
    """Follow a file another process appends to: :meth:`lines` gives the complete lines added since.

    How the runtime reads a CLI's events as they stream (its attempt log, codex's
    session log), without a pipe in between: the CLI writes straight to the file.
    """

    def __init__(self, path: str | os.PathLike, offset: int = 0):
        self.path = Path(path)
        self.offset = offset
        self._partial = b""

    def lines(self, limit: int = 4 << 20) -> list[str]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read(limit)
        except OSError:
            return []
        self.offset += len(data)
        data = self._partial + data
        complete, _, self._partial = data.rpartition(b"\n")
        if len(self._partial) > limit:  # one line longer than we keep: no event of ours, drop it
            self._partial = b""
        return complete.decode(errors="replace").splitlines() if complete else []
