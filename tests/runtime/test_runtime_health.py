"""parallel_autopilot.runtime.health: the heartbeat file's freshness is the container's health."""

from __future__ import annotations

import os

from parallel_autopilot.runtime import health


def test_touch_creates_then_refreshes(tmp_path):
    path = tmp_path / "run" / "heartbeat"
    health.touch(path)
    os.utime(path, (1000, 1000))
    health.touch(path)
    assert health.age(path) < 5


def test_check_is_fresh_stale_or_missing(tmp_path):
    path = tmp_path / "heartbeat"
    assert health.check(path) == (False, f"unhealthy: no heartbeat file {path} (the runtime has not booted)")
    health.touch(path)
    mtime = os.stat(path).st_mtime
    assert health.check(path, 10, now=mtime + 2) == (True, "healthy: heartbeat 2.0s old")
    healthy, line = health.check(path, 10, now=mtime + 11)
    assert not healthy and line.startswith("unhealthy: heartbeat 11.0s old (limit 10s)")


def test_main_reads_the_environment_and_flags(tmp_path, monkeypatch, capsys):
    path = tmp_path / "heartbeat"
    monkeypatch.setenv("AUTOPILOT_HEARTBEAT_FILE", str(path))
    assert health.main([]) == 1
    health.touch(path)
    assert health.main([]) == 0
    os.utime(path, (os.stat(path).st_atime, os.stat(path).st_mtime - 30))
    assert health.main([]) == 1
    assert health.main(["--max-age", "60"]) == 0
    assert health.main(["--file", str(tmp_path / "other")]) == 1
    assert health.main(["--bogus"]) == 2
    assert health.main(["--max-age", "soon"]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7 and lines[1].startswith("healthy")
