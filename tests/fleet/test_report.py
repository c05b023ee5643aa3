"""The morning report (issue 22): every number checked against the events trail, in md, html and json.

A night played on a real store with a fake clock: merged, rejected (once for good, once re-queued),
dead, a quota wait in an agent's events.jsonl, tokens and cost; the report's numbers are then
worked out again here straight from ``store.events()`` and compared.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from support.clock import T0, FakeClock

from parallel_autopilot import report
from parallel_autopilot.errors import InvalidInput
from parallel_autopilot.issues import IssueStore


def night(tmp_path: Path):
    clock = FakeClock(T0)
    store = IssueStore(tmp_path / "state" / "autopilot.db", clock=clock, backoff_seconds=0, max_attempts=2)
    logs = tmp_path / "logs"
    numbers = [store.add(f"issue <{i}>", priority="medium").number for i in range(6)]

    def work(agent: str, seconds: float, outcome: str, usage: dict | None = None, error: str = "tests failed"):
        claim = store.claim(agent)
        clock.advance(seconds)
        if outcome == "done":
            store.complete(claim, {"branch": f"autopilot/issue-{claim.number}", "commit": f"{claim.number:040x}",
                                   **({"usage": usage} if usage else {})})
        else:
            store.fail(claim, error)
        return claim.number

    a = work("agent-001", 60, "done", {"input_tokens": 1000, "output_tokens": 50, "cost_usd": 0.01})
    b = work("agent-002", 90, "done", {"input_tokens": 2000, "output_tokens": 70, "cost_usd": 0.02})
    store.mark_merged(a, f"{a:040x}", "m" * 40)
    store.reject(b, f"{b:040x}", "conflicts in calc.py", requeue=False)
    c = work("agent-001", 30, "done")
    store.reject(c, f"{c:040x}", "check failed: 1 test", requeue=True)
    d = store.add("dies", priority="urgent", max_attempts=2).number
    assert work("agent-002", 10, "fail", error="ImportError: no module x") == d
    clock.advance(5)
    assert work("agent-002", 10, "fail", error="ImportError: no module x") == d  # dead now (2 attempts)
    assert store.get(d).status == "dead"
    # agent-003 waits 120 s for a quota, as the runtime records it
    path = logs / "agents" / "agent-003" / "events.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"ts": clock.now, "event": "quota", "until": clock.now + 120, "agent": "agent-003"}) + "\n")
    clock.advance(200)
    return store, clock, logs, numbers


def test_every_number_of_the_report_is_the_events_trails(tmp_path):
    store, clock, logs, numbers = night(tmp_path)
    data = report.build(store, now=clock.now, logs_path=logs)
    trail = store.events()
    kinds = defaultdict(set)
    for e in trail:
        kinds[e.kind].add(e.issue)
    assert data["merged"] == sorted(kinds["merged"]) and len(data["merged"]) == 1
    assert [r["number"] for r in data["rejected"]] == sorted(kinds["rejected"]) and len(data["rejected"]) == 2
    assert [r["requeued"] for r in data["rejected"]] == [False, True]
    assert data["rejected"][0]["reason"] == "conflicts in calc.py"
    assert data["dead"] == sorted(kinds["dead"]) and len(data["dead"]) == 1
    assert data["resolved"] == sorted(kinds["done"])
    issues = {i.number: i for i in store.list()}
    assert data["still_open"] == sorted(n for n, i in issues.items() if i.status in ("ready", "claimed", "failed", "blocked"))
    assert data["waiting_for_merge"] == []
    assert data["events"] == len(trail) and data["wall_seconds"] == pytest.approx(clock.now - trail[0].at)
    # tokens: the issues' usage, summed
    assert data["tokens"] == {"input_tokens": 3000, "output_tokens": 120, "cost_usd": pytest.approx(0.03)}
    # each agent's busy time: from each claimed event to the event that ended that claim
    busy = defaultdict(float)
    open_claims = {}
    for e in trail:
        if e.kind == "claimed":
            open_claims[e.issue] = (e.worker, e.at)
        elif e.kind in ("done", "failed", "dead") and e.issue in open_claims:
            who, at = open_claims.pop(e.issue)
            busy[who] += e.at - at
    agents = {a["agent"]: a for a in data["agents"]}
    assert {k: v["busy_seconds"] for k, v in agents.items() if v["busy_seconds"]} == dict(busy)
    assert busy == {"agent-001": 90.0, "agent-002": 110.0}
    assert agents["agent-003"]["quota_seconds"] == 120.0 and agents["agent-003"]["busy_seconds"] == 0
    assert agents["agent-001"]["idle_seconds"] == pytest.approx(data["wall_seconds"] - 90.0)
    assert {k: v["resolved"] for k, v in agents.items()} == {"agent-001": 2, "agent-002": 1, "agent-003": 0}
    causes = Counter()
    for e in trail:
        if e.kind in ("failed", "dead"):
            causes[e.detail] += 1
    assert data["failure_causes"][0] == {"cause": "ImportError: no module x", "count": causes["ImportError: no module x"]}


def test_since_limits_the_window_and_bad_input_is_one_line(tmp_path):
    store, clock, logs, _ = night(tmp_path)
    later = report.build(store, since=clock.now - 100, now=clock.now, logs_path=logs)
    assert later["merged"] == [] and later["events"] == 0 and later["wall_seconds"] == 100
    assert report.parse_since("2h", 10_000.0) == 10_000.0 - 7200
    assert report.parse_since("30m", 10_000.0) == 10_000.0 - 1800
    for bad in ("yesterday", "2x", "12 hours"):
        with pytest.raises(InvalidInput, match="is not a time"):
            report.parse_since(bad, 0)
    with pytest.raises(InvalidInput, match="not one of md, html, json"):
        report.render(later, "pdf")


def test_the_formats_escape_agent_written_text(tmp_path):
    store, clock, logs, _ = night(tmp_path)
    data = report.build(store, now=clock.now, logs_path=logs)
    md = report.render(data, "md")
    assert "merged: 1" in md and "rejected: 2" in md and "dead: 1" in md and r"issue \<0\>" in md
    page = report.render(data, "html")
    assert "<svg" in page and page.count('class="series"') == 2 and "issue &lt;0&gt;" in page and "<0>" not in page
    assert json.loads(report.render(data, "json"))["merged"] == data["merged"]


@pytest.mark.browser
@pytest.mark.timeout(120)
def test_the_html_report_opens_in_chromium_and_shows_the_plot(tmp_path):
    from playwright.sync_api import expect
    from support.gui import chromium_page, screenshot

    store, clock, logs, _ = night(tmp_path)
    path = tmp_path / "report.html"
    path.write_text(report.render(report.build(store, now=clock.now, logs_path=logs), "html"))
    with chromium_page() as page:
        page.goto(path.as_uri())
        expect(page.locator("#summary [data-count=merged] b")).to_have_text("1")
        plot = page.locator("svg#resolved-plot")
        expect(plot).to_be_visible()
        box = plot.bounding_box()
        assert box["width"] >= 600 and box["height"] >= 200
        expect(page.locator("svg#resolved-plot polyline.series")).to_have_count(2)
        screenshot(page, "report")
