"""Scenario ``gui`` (issue 22): the pane with 500 issues and 5,000 events in real Chromium."""

from __future__ import annotations

import json

import pytest

from parallel_autopilot import config
from parallel_autopilot.bench import SCENARIOS, gui
from parallel_autopilot.bench.context import Context

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(300)]


def test_the_gui_row_measures_first_paint_and_update_latency(tmp_path):
    assert "gui" in SCENARIOS
    settings = config.load({}, repo=str(tmp_path))
    lines = []
    result = gui.run(Context(settings=settings, workdir=tmp_path / "work", run_id="t1", quick=True, repeats=2,
                             progress=lines.append))
    assert result["status"] == "ok", result.get("reason")
    rows = {row["metric"]: row for row in result["rows"]}
    assert set(rows) == {"first contentful paint", "all 500 rows shown", "update latency (store change to page)",
                         "longest main-thread task"}
    assert all(row["status"] == "ok" and row["value"]["n"] for row in rows.values())
    assert rows["update latency (store change to page)"]["value"]["n"] == 6
    assert 0 < rows["first contentful paint"]["value"]["median"] < 5000
    print("bench gui:", json.dumps({m: r["value"]["median"] for m, r in rows.items()}))
