"""The GUI's check results and merge queue (issue 10), over a fake fleet and a real IssueStore."""

from __future__ import annotations

import pytest
from support.gui import FakeFleet, TestClient, make_settings

from parallel_autopilot.gui import create_app
from parallel_autopilot.issues import IssueStore


def test_snapshot_shows_the_merge_queue_with_check_results_and_issues_filter_by_new_statuses(tmp_path):
    settings = make_settings(tmp_path)
    store = IssueStore(settings.db_path)
    numbers = [store.add(f"issue {i}").number for i in range(3)]
    for number in numbers:
        claim = store.claim("agent-001")
        store.complete(claim, {"branch": f"autopilot/issue-{number}", "commit": f"{number:040d}",
                               "check_status": "passed", "check_duration": 1.5, "check_output": "OK"})
    store.mark_merged(numbers[0], f"{numbers[0]:040d}", "a" * 40)
    store.reject(numbers[1], f"{numbers[1]:040d}", "conflicts in shapes.py")
    app = create_app(settings, fleet=FakeFleet(store))
    with TestClient(app, base_url="http://127.0.0.1:8787") as client:
        snap = client.get("/api/snapshot").json()
        mq = snap["merge_queue"]
        assert [i["number"] for i in mq["queued"]] == [numbers[2]] and mq["testing"] == []
        assert mq["queued"][0]["check_status"] == "passed" and mq["queued"][0]["check_duration"] == 1.5
        assert [(i["number"], i["merge_commit"]) for i in mq["merged"]] == [(numbers[0], "a" * 40)]
        assert [(i["number"], i["error"]) for i in mq["rejected"]] == [(numbers[1], "conflicts in shapes.py")]
        merged = client.get("/api/issues", params={"status": "merged"}).json()["issues"]
        assert [i["number"] for i in merged] == [numbers[0]] and merged[0]["merge_commit"] == "a" * 40
        rejected = client.get("/api/issues", params={"status": "rejected"}).json()["issues"]
        assert rejected[0]["feedback"] == "conflicts in shapes.py" and rejected[0]["check_status"] == "passed"
        page = client.get("/").text
        assert 'id="merge-queue"' in page
    store.close()


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_the_pane_shows_the_merge_queue_live_in_a_browser(tmp_path):
    from support.gui import LiveServer, chromium_page
    from playwright.sync_api import expect

    settings = make_settings(tmp_path)
    store = IssueStore(settings.db_path)
    numbers = [store.add(f"issue {i}").number for i in range(2)]
    for number in numbers:
        store.complete(store.claim("agent-001"), {"branch": f"autopilot/issue-{number}",
                                                  "commit": f"{number:040d}", "check_status": "passed",
                                                  "check_duration": 2.0})
    app = create_app(settings, fleet=FakeFleet(store), interval=0.25)
    with LiveServer(app) as server, chromium_page() as page:
        page.goto(server.url + "/")
        queued = page.locator('#merge-queue li[data-phase="queued"]')
        expect(queued).to_have_count(2, timeout=10_000)
        expect(queued.first).to_contain_text("check passed 2.0s")
        # the merge queue acts; the pane follows without a reload (server-sent events)
        store.mark_merged(numbers[0], f"{numbers[0]:040d}", "b" * 40)
        store.reject(numbers[1], f"{numbers[1]:040d}", "conflicts in shapes.py")
        expect(page.locator('#merge-queue li[data-phase="merged"]')).to_contain_text("bbbbbbbbbb", timeout=10_000)
        expect(page.locator('#merge-queue li[data-phase="rejected"]')).to_contain_text("conflicts in shapes.py")
        expect(page.locator('#merge-queue li[data-phase="queued"]')).to_have_count(0)
    store.close()
