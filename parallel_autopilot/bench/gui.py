"""Scenario ``gui``: the pane with a real backlog (500 open issues, 5,000 events) in headless Chromium.

The GUI's own app (``gui.create_app``, the Fleet of a scratch directory: no agent runs) is served
by uvicorn on 127.0.0.1 and opened with Playwright in Chromium, ``repeats`` times:

- **first paint**: the browser's first contentful paint of the pane;
- **500 rows**: from ``goto`` until the 500 issue rows are in the page;
- **update latency**: an issue added to the store until the page's count shows it (the live
  stream's snapshot interval is 250 ms: that is its floor);
- **longest task**: the longest task of the page's main thread meanwhile (the page never freezes).

There is no bare baseline: the numbers are judged against targets (1 s, 2 s, 1 s, 200 ms).
Skipped without Playwright or a Chromium.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from typing import Any

from . import stats

TITLE = "gui: first paint and live update latency with 500 issues and 5,000 events"
ISSUES = 500
EVENTS = 5000
INTERVAL = 0.25
CHROMIUMS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
LONG_TASKS = """(() => { window.__long = [];
  new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__long.push(e.duration); })
    .observe({ type: "longtask", buffered: true }); })()"""


def _chromium() -> str | None:
    found = [path for path in CHROMIUMS if os.access(path, os.X_OK)] or [shutil.which("chromium") or ""]
    return found[0] or None


def run(ctx) -> dict[str, Any]:
    """Serve the pane over a filled backlog; measure it in Chromium ``repeats`` times."""
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        return stats.failed("gui", TITLE, "Playwright is not installed (pip install playwright)", status="skipped")
    chromium = _chromium()
    if chromium is None:
        return stats.failed("gui", TITLE, "no Chromium at /usr/bin/chromium (bootstrap.sh --browser)", status="skipped")
    from .. import config
    from ..gui.app import bind_socket, create_app, server_for
    from ..issues import IssueStore

    root = ctx.workdir / "gui"
    root.mkdir(parents=True, exist_ok=True)
    settings = config.load({}, repo=str(root), project=f"pa-bench-gui-{ctx.run_id}")
    store = IssueStore(settings.db_path)
    ctx.progress(f"filling the backlog: {ISSUES} issues, {EVENTS} events")
    store.add_many([{"title": f"Issue {i} of the night", "priority": ("urgent", "high", "medium", "low")[i % 4]}
                    for i in range(ISSUES)])
    for i in range(EVENTS - ISSUES):
        store.record(i % ISSUES + 1, "note", "bench", f"event {i}")
    app = create_app(settings, interval=INTERVAL)
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = server_for(app, port=port)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    paints, rows, updates, longest = [], [], [], []
    added = 0
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                         args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
            try:
                for k in range(ctx.repeats):
                    ctx.progress(f"page {k + 1}/{ctx.repeats}")
                    page = browser.new_page(viewport={"width": 1100, "height": 900})
                    page.add_init_script(LONG_TASKS)
                    started = ctx.clock()
                    page.goto(f"http://127.0.0.1:{port}/")
                    expect(page.locator("#issues li")).to_have_count(ISSUES, timeout=60_000)
                    rows.append((ctx.clock() - started) * 1000)
                    paint = dict(page.evaluate("performance.getEntriesByType('paint').map(e => [e.name, e.startTime])"))
                    paints.append(float(paint.get("first-contentful-paint", 0.0)))
                    expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=30_000)
                    for _ in range(3):
                        before = ctx.clock()
                        store.add(f"late issue {added}")
                        added += 1
                        expect(page.locator("#open-total")).to_have_text(str(ISSUES + added), timeout=30_000)
                        updates.append((ctx.clock() - before) * 1000)
                    longest.append(max(page.evaluate("window.__long") or [0.0]))
                    page.close()
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()
    case = f"{ISSUES} issues, {EVENTS} events"
    result_rows = [
        stats.row(case, "first contentful paint", "ms", paints, target="<= 1000 ms",
                  met=stats.summary(paints)["median"] <= 1000),
        stats.row(case, f"all {ISSUES} rows shown", "ms", rows, target="<= 2000 ms",
                  met=stats.summary(rows)["median"] <= 2000),
        stats.row(case, "update latency (store change to page)", "ms", updates, target="<= 1000 ms",
                  met=stats.summary(updates)["median"] <= 1000, note=f"snapshot interval {INTERVAL * 1000:g} ms"),
        stats.row(case, "longest main-thread task", "ms", longest, target="<= 200 ms",
                  met=stats.summary(longest)["median"] <= 200),
    ]
    return stats.scenario("gui", TITLE, result_rows, params={"issues": ISSUES, "events": EVENTS,
                                                             "interval": INTERVAL, "pages": ctx.repeats},
                          notes=["Chromium headless via Playwright; the pane's own server on 127.0.0.1"])


__all__ = ["run", "TITLE"]
