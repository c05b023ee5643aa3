"""parallel_autopilot.runtime.process: agent process groups, stopped and reaped."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from parallel_autopilot.runtime import process


def alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_stop_escalates_to_sigkill_for_the_whole_group(tmp_path):
    pids = tmp_path / "pids"
    # the leader ignores SIGTERM and has a child in the background that ignores it too
    script = f"trap '' TERM; (trap '' TERM; sleep 60) & echo $! > {pids}; sleep 60"
    with open(tmp_path / "out", "wb") as out:
        proc = process.start(["bash", "-c", script], tmp_path, dict(os.environ), out)
    deadline = time.monotonic() + 10
    while not (pids.exists() and pids.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    child = int(pids.read_text())
    ticks = []
    code = process.stop(proc, 0.3, tick=lambda: ticks.append(1))
    assert code == -9 and ticks
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(child)
    assert os.getpgid(os.getpid()) != proc.pid  # it had its own group: we were not signalled


def test_descendants_are_found_and_killed(tmp_path):
    proc = subprocess.Popen(["bash", "-c", "sleep 60 & sleep 60 & wait"])
    deadline = time.monotonic() + 10
    while len(process.descendants(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(process.descendants(proc.pid)) == 2
    assert proc.pid in process.descendants(os.getpid())
    victims = process.kill_descendants(proc.pid)
    assert len(victims) == 2
    proc.wait(timeout=10)  # its children died, so `wait` returned


def test_child_record_kills_only_its_own_leftover_group(tmp_path):
    record = process.ChildRecord(tmp_path / "heartbeat.child")
    assert record.kill_leftover() is None  # nothing recorded
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    record.write(proc.pid)
    assert record.kill_leftover() == proc.pid
    assert proc.wait(timeout=10) == -9
    assert not record.path.exists()
    # a recorded pid that now belongs to another process is left alone
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        record.path.write_text(f"{other.pid} 1\n")
        assert record.kill_leftover() is None
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
    record.path.write_text("garbage")
    assert record.kill_leftover() is None


def test_start_time_tells_processes_apart():
    assert process.start_time(os.getpid()) == process.start_time(os.getpid())
    assert process.start_time(os.getpid()) != process.start_time(1) or os.getpid() == 1
    assert process.start_time(2 ** 22 + 12345) is None
    assert sys.platform == "linux"
