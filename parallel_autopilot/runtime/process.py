"""Process groups: the agent subprocess runs in its own session, so it and
everything it spawns can be stopped together (SIGTERM, then SIGKILL after a
grace). Linux ``/proc`` is read to find our descendants (the watchdog kills
them before it exits) and to recognise a leftover agent group of a previous
incarnation (the runtime may run outside a container, where a SIGKILL of the
runtime does not take its children with it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence


def start(argv: Sequence[str], cwd: str | os.PathLike, env: Mapping[str, str], output) -> subprocess.Popen:
    """Start ``argv`` in a new session (its own process group); output to the file ``output``."""
    return subprocess.Popen(
        list(argv), cwd=str(cwd), env=dict(env), stdin=subprocess.DEVNULL,
        stdout=output, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
    )


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; False when the group is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop(proc: subprocess.Popen, grace: float, tick: Callable[[], None] = lambda: None,
         monotonic: Callable[[], float] = time.monotonic) -> int:
    """SIGTERM the group of ``proc``, SIGKILL it after ``grace`` seconds; return the exit code.

    ``tick`` is called while waiting (the loop's progress mark).
    """
    signal_group(proc.pid, signal.SIGTERM)
    deadline = monotonic() + grace
    while proc.poll() is None and monotonic() < deadline:
        tick()
        try:
            proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            pass
    signal_group(proc.pid, signal.SIGKILL)  # also the children that outlived their leader
    while True:
        tick()
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue  # uninterruptible sleep (D state): keep waiting, the watchdog guards us


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may itself hold spaces or ')'
    return [raw[: raw.index(" ")]] + ["comm"] + raw[raw.rindex(")") + 2:].split()


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), to tell it from a reused pid."""
    fields = _stat(pid)
    return fields[21] if fields and len(fields) > 21 else None


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first), read from ``/proc``."""
    parents: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields and len(fields) > 3:
                parents.setdefault(int(fields[3]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_descendants(pid: int | None = None) -> list[int]:
    """SIGKILL every descendant of ``pid`` (default: this process); return their pids."""
    victims = descendants(os.getpid() if pid is None else pid)
    for victim in victims:
        try:
            os.kill(victim, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return victims


class ChildRecord:
    """A small file naming the running agent group (``<pgid> <start time>``).

    A new incarnation reads it at boot and kills that group if it still runs:
    outside a container, a SIGKILLed runtime leaves its agent running, and that
    agent would go on writing into the worktree.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def write(self, pid: int) -> None:
        """Record ``pid`` (the leader of the agent's group)."""
        stamp = start_time(pid) or "?"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(f"{pid} {stamp}\n")
        except OSError:
            pass  # a best effort: inside a container the group dies with us anyway

    def clear(self) -> None:
        """Forget the group (it has ended)."""
        try:
            self.path.unlink()
        except OSError:
            pass

    def kill_leftover(self) -> int | None:
        """Kill the recorded group if its leader is still the process we started; its pgid or None."""
        try:
            pid_text, stamp = self.path.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        self.clear()
        now = start_time(pid)
        if now is not None and now != stamp:
            return None  # the pid now belongs to someone else
        # leader alive and ours, or leader gone: members of its group may remain
        # (a pid that is still some group's id is never handed out again)
        return pid if signal_group(pid, signal.SIGKILL) else None
