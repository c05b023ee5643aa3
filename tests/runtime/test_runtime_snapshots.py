"""While agents run, ONE of them at a time snapshots the database every N seconds (real runtimes)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_runtime_agent import Site

from parallel_autopilot.issues import snapshots


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    yield s
    s.close()


@pytest.mark.slow
def test_three_runtimes_take_one_snapshot_per_period_and_keep_a_bounded_number(site):
    site.store.add_many([{"title": f"issue {i}", "script": "sleep 0.2"} for i in range(6)])
    procs = [site.start(f"agent-00{i}", AUTOPILOT_SNAPSHOT_SECONDS="1.5", AUTOPILOT_SNAPSHOTS_KEPT="3")
             for i in (1, 2, 3)]
    site.wait(lambda: sum(len(site.events(f"agent-00{i}", "snapshot")) for i in (1, 2, 3)) >= 4,
              "four snapshots", timeout=60)
    for proc in procs:
        assert site.stop(proc) == 0
    taken = sorted(e["path"] for i in (1, 2, 3) for e in site.events(f"agent-00{i}", "snapshot"))
    times = [snapshots.taken_at(Path(p)) for p in taken]
    assert all(b - a >= 1.5 for a, b in zip(times, times[1:])), times  # one per period, never two
    kept = snapshots.list_snapshots(site.db)
    assert len(kept) == 3 and [str(p) for p in kept] == taken[-3:]
    counts = snapshots.check(kept[-1])
    assert counts["issues"] == 6 and counts["events"] >= 6
    assert not list(kept[0].parent.glob(".partial-*"))
