"""The container healthcheck: ``python3 -m parallel_autopilot.runtime.health``.

Exit 0 when the heartbeat file (``AUTOPILOT_HEARTBEAT_FILE``) was touched less
than ``--max-age`` seconds ago (``AUTOPILOT_HEALTH_MAX_AGE``, default 10),
else 1; prints one line either way. The runtime touches the file about every
second, and only while its main loop makes progress, so a stalled loop turns
the container unhealthy within ``stall + max-age`` seconds; the runtime's own
watchdog then exits the process, because Docker never restarts a container
merely for being unhealthy.

Runs every few seconds: imports nothing but ``os``, ``sys`` and ``time``.
"""

from __future__ import annotations

import os
import sys
import time

DEFAULT_FILE = "/run/autopilot/heartbeat"
DEFAULT_MAX_AGE = 10.0


def touch(path: str | os.PathLike) -> None:
    """Set the heartbeat file's mtime to now (creating it and its directory)."""
    path = os.fspath(path)
    try:
        os.utime(path)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "a"):
            pass


def age(path: str | os.PathLike, now: float | None = None) -> float | None:
    """Seconds since the heartbeat file was touched; None when it does not exist."""
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return None
    return max(0.0, (time.time() if now is None else now) - mtime)


def check(path: str | os.PathLike, max_age: float = DEFAULT_MAX_AGE, now: float | None = None) -> tuple[bool, str]:
    """(healthy, one line) for the heartbeat file at ``path``."""
    seconds = age(path, now)
    if seconds is None:
        return False, f"unhealthy: no heartbeat file {os.fspath(path)} (the runtime has not booted)"
    if seconds > max_age:
        return False, (f"unhealthy: heartbeat {seconds:.1f}s old (limit {max_age:g}s): "
                       "the agent loop is stalled; its watchdog restarts it")
    return True, f"healthy: heartbeat {seconds:.1f}s old"


def main(argv: list[str] | None = None) -> int:
    """``health [--max-age S] [--file PATH]``: exit 0 iff the heartbeat is fresh."""
    args = list(sys.argv[1:] if argv is None else argv)
    path = os.environ.get("AUTOPILOT_HEARTBEAT_FILE") or DEFAULT_FILE
    raw_age = os.environ.get("AUTOPILOT_HEALTH_MAX_AGE") or str(DEFAULT_MAX_AGE)
    while args:
        flag = args.pop(0)
        if flag in ("--file", "--max-age") and args:
            value = args.pop(0)
            if flag == "--file":
                path = value
            else:
                raw_age = value
        else:
            print(f"unknown argument {flag!r}: use --file PATH and/or --max-age SECONDS")
            return 2
    try:
        max_age = float(raw_age)
    except ValueError:
        print(f"max age {raw_age!r} is not a number: use seconds, e.g. 10")
        return 2
    healthy, line = check(path, max_age)
    print(line)
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())
