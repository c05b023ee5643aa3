"""The pane in a real headless Chromium (Playwright) against a real uvicorn server.

First over the fake fleet (fast: every behaviour of the page), then end to end
over REAL containers (markers ``docker`` and ``browser``). Screenshots go to
tests/artifacts/; measured update latencies to tests/artifacts/gui-latency.txt.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from support.gui import ARTIFACTS, FakeFleet, LiveServer, chromium_page, make_settings, screenshot, wait_until

from parallel_autopilot import config, platform
from parallel_autopilot.gui import create_app
from parallel_autopilot.issues import IssueStore

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

SEEN = 10_000  # ms: generous waits; the latency itself is measured and recorded, not asserted
XSS = '<img src=x onerror="window.__pwned=1">'


def expect():
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect


def record_latency(what: str, seconds: float) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / "gui-latency.txt").open("a") as out:
        out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {what}: {seconds:.2f} s\n")


class Pane:
    """A browser on the pane, with the fake fleet and store behind it."""

    def __init__(self, page, server, fleet, store):
        self.page, self.server, self.fleet, self.store = page, server, fleet, store
        self.js_errors: list[str] = []
        self.requests: list[str] = []
        page.on("pageerror", lambda err: self.js_errors.append(str(err)))
        page.on("console", lambda msg: self.js_errors.append(msg.text)
                if msg.type == "error" and "Failed to load resource" not in msg.text else None)
        page.on("request", lambda request: self.requests.append(request.url))

    def row(self, agent: str):
        return self.page.locator(f'.agent[data-agent="{agent}"]')

    def open(self) -> None:
        self.page.goto(self.server.url + "/")
        expect()(self.page.locator("#live")).to_have_text("live", timeout=SEEN)


@pytest.fixture
def pane(tmp_path):
    settings = make_settings(tmp_path)
    store = IssueStore(settings.db_path)
    for priority, title in [("high", "Implement feature X"), ("medium", "Fix bug in Y"),
                            ("urgent", "Hotfix the login"), ("low", "Polish the README"),
                            ("high", "Add slugify()")]:
        store.add(title, priority=priority)
    fleet = FakeFleet(store)
    app = create_app(settings, fleet=fleet, interval=0.25)
    with LiveServer(app) as server, chromium_page() as page:
        view = Pane(page, server, fleet, store)
        yield view
        assert view.js_errors == []
        assert page.evaluate("window.__pwned") is None


def test_start_watch_read_logs_stop(pane):
    page, fleet, store, check = pane.page, pane.fleet, pane.store, expect()
    pane.open()
    check(page.locator("#no-agents")).to_be_visible()
    assert page.locator("#count option").all_inner_texts() == [str(i) for i in range(1, 11)]
    host = platform.detect()  # the real Fleet's resources: this machine's
    check(page.locator("#resources")).to_contain_text(f"Platform: {host.os} {host.arch}")
    check(page.locator("#resources")).to_contain_text(re.compile(r"Memory: [0-9.]+ GB / [0-9.]+ GB"))
    check(page.locator("#issues li")).to_have_count(5)
    assert page.locator("#issues li .title").all_inner_texts()[0] == "Hotfix the login"  # by priority
    check(page.locator("#counts")).to_contain_text("ready 5")
    screenshot(page, "gui-fake-1-empty")

    page.select_option("#count", "3")
    page.click("#start")
    check(page.locator(".agent")).to_have_count(3, timeout=SEEN)
    check(page.locator("#operation")).to_have_text("start 3 agents: done", timeout=SEEN)
    for agent in ("agent-001", "agent-002", "agent-003"):
        check(pane.row(agent).locator(".activity")).to_have_text("Idle")

    started = time.monotonic()
    claims = {agent: fleet.claim(agent) for agent in ("agent-001", "agent-002")}
    for agent, claim in claims.items():
        check(pane.row(agent).locator(".activity")).to_have_text(
            f"Working on #{claim.number} {claim.issue.title}", timeout=SEEN)
    record_latency("fake fleet: claim -> row shows 'Working on #N'", time.monotonic() - started)
    check(pane.row("agent-001").locator(".dot")).to_have_class(re.compile(r"\bworking\b"))
    check(pane.row("agent-003").locator(".dot")).to_have_class(re.compile(r"\bidle\b"))
    check(page.locator("#counts")).to_contain_text("claimed 2")
    check(page.locator('#issues li[data-status="claimed"] .owner')).to_have_text(["agent-001", "agent-002"])
    check(pane.row("agent-001").locator(".uptime")).to_have_text(re.compile(r"^\d+s$"))

    for agent in ("agent-001", "agent-002", "agent-003"):
        fleet.log(agent, f"{agent}: step 1")
    pane.row("agent-002").locator(".view-logs").click()
    logs = page.locator("#logs")
    check(logs).to_contain_text("agent-002: step 1", timeout=SEEN)
    check(page.locator("#logs-agent")).to_have_text("agent-002")
    started = time.monotonic()
    fleet.log("agent-001", "agent-001: step 2")
    fleet.log("agent-002", "agent-002: step 2")
    check(logs).to_contain_text("agent-002: step 2", timeout=SEEN)
    record_latency("fake fleet: log line -> shown in the log view", time.monotonic() - started)
    assert logs.inner_text().strip().splitlines() == ["agent-002 started", "agent-002: step 1", "agent-002: step 2"]
    screenshot(page, "gui-fake-2-working-with-logs")

    pane.row("agent-003").locator(".stop").click()
    check(page.locator(".agent")).to_have_count(2, timeout=SEEN)
    assert fleet.calls[-1] == ("stop", ["agent-003"])

    pane.row("agent-001").locator(".restart").click()
    check(pane.row("agent-001").locator(".activity")).to_have_text("Idle", timeout=SEEN)
    assert store.get(claims["agent-001"].number).status == "ready"

    page.click("#stop-all")
    check(page.locator(".agent")).to_have_count(0, timeout=SEEN)
    check(page.locator("#no-agents")).to_be_visible()
    check(page.locator("#stop-all")).to_be_disabled()
    assert store.list("claimed") == [] and fleet.agents == {}
    check(page.locator("#counts")).to_contain_text("claimed 0")
    screenshot(page, "gui-fake-3-stopped")


def test_errors_show_in_a_banner_not_a_blank_page(pane):
    page, fleet, check = pane.page, pane.fleet, expect()
    fleet.docker_down = True
    pane.open()
    banner = page.locator("#banner")
    check(banner).to_be_visible(timeout=SEEN)
    check(banner).to_contain_text("Docker is not reachable")
    check(page.locator("#issues li")).to_have_count(5)  # the rest of the page still works
    page.select_option("#count", "2")
    page.click("#start")
    check(page.locator("#operation")).to_contain_text("start 2 agents failed: Docker is not reachable", timeout=SEEN)
    # the refused request and the live state say the same: said once
    check(page.locator("#banner-messages li")).to_have_text(["Docker is not reachable: start dockerd (or Docker Desktop) and retry"])
    check(page.locator("#start")).to_be_enabled()
    screenshot(page, "gui-fake-4-docker-down")

    fleet.docker_down = False
    page.click("#banner-close")
    check(banner).to_be_hidden(timeout=SEEN)

    # a count the server refuses (the menu offers only 1..max, so forge one)
    page.evaluate("""() => { const o = document.createElement('option'); o.value = o.textContent = '11';
                     document.getElementById('count').append(o); }""")
    page.select_option("#count", "11")
    page.click("#start")
    check(banner).to_contain_text("agent count 11 is out of range: give --n N with N from 1 to 10", timeout=SEEN)
    assert fleet.agents == {}
    screenshot(page, "gui-fake-5-count-too-high")


def test_ten_agents_and_two_hundred_issues(pane):
    page, fleet, store, check = pane.page, pane.fleet, pane.store, expect()
    store.add(XSS, priority="urgent")
    for i in range(194):
        store.add(f"Generated issue {i:03d} with a title long enough to need truncation in a narrow row",
                  priority=("urgent", "high", "medium", "low")[i % 4])
    fleet.start(10, progress=lambda _: None)
    for i in range(1, 11):
        fleet.claim(str(i))
    pane.open()
    check(page.locator(".agent")).to_have_count(10, timeout=SEEN)
    check(page.locator("#issues li")).to_have_count(200)
    check(page.locator("#open-total")).to_have_text("200")
    check(page.locator("#agent-count")).to_have_text("10")
    texts = page.locator(".agent .activity").all_inner_texts()
    assert all(t.startswith("Working on #") for t in texts), texts
    # the hostile title is text, never markup
    check(page.locator(".agent .activity", has_text=XSS)).to_have_count(1)
    assert page.locator("#issues img, .agent img").count() == 0
    check(page.locator("#counts")).to_contain_text("ready 190 · claimed 10 · done 0")
    screenshot(page, "gui-fake-6-ten-agents-200-issues")


def test_agent_written_text_is_text_in_every_part_of_the_pane(tmp_path):
    # titles, a rejection's report, what an agent does and its log: all agent-written, all text
    check = expect()
    settings = make_settings(tmp_path)
    store = IssueStore(settings.db_path)
    for name, priority in (("done", "urgent"), ("rejected", "high"), ("working", "medium"), ("ready", "low")):
        store.add(f"{XSS} {name}", priority=priority)
    for number in (1, 2):
        store.complete(store.claim("agent-009"), {"branch": f"autopilot/issue-{number}", "commit": f"{number:040d}"})
    store.reject(2, f"{2:040d}", f"red: {XSS}")
    fleet = FakeFleet(store)
    fleet.start(1, progress=lambda _: None)
    fleet.claim("agent-001")  # #3: the agent works on a hostile title
    fleet.log("agent-001", f"log: {XSS}")
    with LiveServer(create_app(settings, fleet=fleet, interval=0.25)) as server, chromium_page() as page:
        view = Pane(page, server, fleet, store)
        view.open()
        check(page.locator("#issues li .title")).to_have_text([f"{XSS} working", f"{XSS} ready"], timeout=SEEN)
        check(page.locator("#done li .title")).to_have_text([f"{XSS} done"])
        check(page.locator('#merge-queue li[data-phase="queued"] .title')).to_have_text(f"{XSS} done")
        check(page.locator('#merge-queue li[data-phase="rejected"] .title')).to_have_text(f"{XSS} rejected")
        check(page.locator('#merge-queue li[data-phase="rejected"] .detail')).to_have_text(f"red: {XSS}")
        check(view.row("agent-001").locator(".activity")).to_have_text(f"Working on #3 {(XSS + ' working')[:40]}")
        view.row("agent-001").locator(".view-logs").click()
        check(page.locator("#logs")).to_contain_text(f"log: {XSS}", timeout=SEEN)
        assert page.locator("main img").count() == 0
        assert page.evaluate("window.__pwned") is None and view.js_errors == []
    store.close()


def test_the_page_never_polls(pane):
    page, fleet, check = pane.page, pane.fleet, expect()
    fleet.start(2, progress=lambda _: None)
    pane.open()
    check(page.locator(".agent")).to_have_count(2, timeout=SEEN)
    before = len(pane.requests)
    ticks = pane.server.app.state.hub.ticks
    fleet.claim("agent-002")  # a change, delivered by the one open stream
    check(pane.row("agent-002").locator(".activity")).to_contain_text("Working on #", timeout=SEEN)
    wait_until(lambda: pane.server.app.state.hub.ticks >= ticks + 12, what="a dozen server ticks")
    assert pane.requests[before:] == []
    api = [u for u in pane.requests if "/api/" in u]
    assert api == [pane.server.url + "/api/events"]


def test_a_lost_server_is_said_and_the_page_stays(tmp_path):
    settings = make_settings(tmp_path)
    app = create_app(settings, fleet=FakeFleet(IssueStore(settings.db_path)), interval=0.25)
    server = LiveServer(app).__enter__()
    with chromium_page() as page:
        page.goto(server.url + "/")
        expect()(page.locator("#live")).to_have_text("live", timeout=SEEN)
        server.__exit__(None, None, None)
        expect()(page.locator("#banner")).to_contain_text("Lost the live connection", timeout=SEEN)
        expect()(page.locator("#start")).to_be_visible()
        screenshot(page, "gui-fake-7-server-gone")


# -- end to end: real containers -------------------------------------------------------

def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_end_to_end_with_real_containers(tmp_path):
    from parallel_autopilot import fleet

    check = expect()
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "GUI Test")
    git(repo, "config", "user.email", "gui-test@example.invalid")
    (repo / "README.md").write_text("gui end-to-end\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    settings = config.load({}, repo=str(repo), network="none", profile="light", memory="256m", cpus=0.5,
                           lease_seconds=60, poll_seconds=0.3, stop_grace_seconds=10, health_interval_seconds=1,
                           start_timeout_seconds=180, watchdog_seconds=30, backoff_seconds=1,
                           codex_home=str(tmp_path / "no-codex"), ssh_dir=str(tmp_path / "no-ssh"),
                           gitconfig=str(tmp_path / "no-gitconfig"))
    store = fleet.store_for(settings)
    store.add_many([{"title": f"Slow job {i}", "priority": "high" if i <= 3 else "medium",
                     "script": f"echo working on job {i}; sleep 12; echo {i} > job-{i}.txt"} for i in range(1, 10)])
    app = create_app(settings, interval=0.5)  # the REAL fleet
    try:
        with LiveServer(app) as server, chromium_page() as page:
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(server.url + "/")
            check(page.locator("#live")).to_have_text("live", timeout=SEEN)
            check(page.locator("#issues li")).to_have_count(9)
            page.select_option("#count", "3")
            page.click("#start")
            check(page.locator("#operation")).to_contain_text("start 3 agents", timeout=SEEN)
            screenshot(page, "gui-real-1-starting")
            check(page.locator(".agent")).to_have_count(3, timeout=240_000)
            working = {}
            for agent in ("agent-001", "agent-002", "agent-003"):
                activity = page.locator(f'.agent[data-agent="{agent}"] .activity')
                check(activity).to_have_text(re.compile(r"^Working on #\d+ Slow job \d+$"), timeout=120_000)
                working[agent] = int(re.search(r"#(\d+)", activity.inner_text()).group(1))
            # each number shown is an issue that agent really claimed
            for agent, number in working.items():
                assert any(e.kind == "claimed" and e.worker == agent for e in store.events(number)), (agent, number)
            screenshot(page, "gui-real-2-working")

            page.locator('.agent[data-agent="agent-002"] .view-logs').click()
            logs = page.locator("#logs")
            check(logs).to_contain_text("agent-002", timeout=60_000)
            shown = [line for line in logs.inner_text().splitlines() if line.strip()]
            own = set((settings.logs_path / "agents" / "agent-002" / "agent.log").read_text().splitlines())
            others = set()
            for agent in ("agent-001", "agent-003"):
                others |= set((settings.logs_path / "agents" / agent / "agent.log").read_text().splitlines())
            assert shown and all(line in own and line not in others for line in shown), shown
            assert all(line.split()[1] == "agent-002" for line in shown), shown
            screenshot(page, "gui-real-3-logs-agent-002")

            page.click("#stop-all")
            check(page.locator(".agent")).to_have_count(0, timeout=180_000)
            check(page.locator("#no-agents")).to_be_visible()
            assert store.list("claimed") == []  # every claim released
            assert fleet.Fleet.open(settings).list() == []
            check(page.locator("#counts")).to_contain_text("claimed 0", timeout=SEEN)
            screenshot(page, "gui-real-4-stopped")
            assert errors == []
    finally:
        try:
            fleet.Fleet.open(settings).stop(progress=lambda _: None)
        except Exception:  # noqa: BLE001 - best-effort teardown
            pass
