"""The pane's first paint is the real state, before the live stream's first event (real Chromium)."""

from __future__ import annotations

import json
import re

import pytest
from support.gui import FakeFleet, LiveServer, TestClient, chromium_available, chromium_page, make_settings

from parallel_autopilot.gui import create_app
from parallel_autopilot.issues import IssueStore

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


@pytest.fixture
def busy(tmp_path):
    """Two agents at work and three open issues behind the pane."""
    settings = make_settings(tmp_path)
    store = IssueStore(settings.db_path)
    for title in ("Implement feature X", "Fix bug in Y", "Polish the README </script><!--"):
        store.add(title)
    fleet = FakeFleet(store)
    fleet.start(2, progress=lambda _: None)
    fleet.claim("agent-001")
    return settings, fleet


@pytest.mark.skipif(not chromium_available(), reason="Chromium not installed (bootstrap.sh --browser)")
def test_first_paint_shows_agents_and_issues_and_says_connecting_before_any_event(busy):
    from playwright.sync_api import expect

    settings, fleet = busy
    held = []
    with LiveServer(create_app(settings, fleet=fleet)) as server, chromium_page() as page:
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.route(re.compile(r".*/api/events.*"), lambda route: held.append(route))  # the stream never answers
        page.goto(server.url + "/")
        expect(page.locator(".agent")).to_have_count(2)
        expect(page.locator("#issues li")).to_have_count(3)
        assert page.locator("#no-agents").is_hidden() and page.locator("#no-issues").is_hidden()
        assert page.locator("#live").text_content() == "connecting..."
        assert "#1" in page.locator('.agent[data-agent="agent-001"]').text_content()
        assert page.locator("#issues li").last.locator(".title").text_content() == "Polish the README </script><!--"
        assert errors == [] and held, "the stream was asked for and held"
        for route in held:
            route.abort()


def test_the_page_carries_the_snapshot_as_inert_json(busy):
    settings, fleet = busy
    with TestClient(create_app(settings, fleet=fleet), base_url="http://127.0.0.1") as client:
        page = client.get("/").text
    inline = re.search(r'<script type="application/json" id="first-snapshot">(.*?)</script>', page, re.S)
    assert inline, "no first snapshot in the page"
    assert "<" not in inline.group(1)  # nothing in it can close the element or open a comment
    data = json.loads(inline.group(1))
    assert [a["id"] for a in data["agents"]] == ["agent-001", "agent-002"] and data["open_total"] == 3
