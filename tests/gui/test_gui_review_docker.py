"""Issue 22's acceptance, end to end: a person reviews the night in real Chromium against agents in
REAL containers (script agents, network none, light profile) and the real merge queue.

They add an issue in the pane, see it claimed live, open its page, see the diff the agent made and
the check's output, press Merge and see the base move; send another back with a note and find the
note in that issue's next prompt (the agent's environment: the script prints ``$ISSUE_FEEDBACK``
into its attempt log); reject a third.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support.waiting import wait_for

from parallel_autopilot import config, fleet
from parallel_autopilot.gui import create_app

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.browser]

CHECK = "python3 -m unittest -q"
IMAGE = os.environ.get("INVOKE_AUTOPILOT_IMAGE", "parallel-autopilot-test-review:latest")
NOTE = "also cover negative numbers, please"

MUL = ("sleep 6; printf 'def mul(a, b):\\n    return a * b\\n' > mathx.py; "
       "printf 'import unittest\\nimport mathx\\n\\n\\nclass M(unittest.TestCase):\\n"
       "    def test_mul(self):\\n        self.assertEqual(mathx.mul(2, 3), 6)\\n' > test_mul.py")
ECHO_FEEDBACK = 'echo "FEEDBACK=[$ISSUE_FEEDBACK]"; printf "%s\\n" "$ISSUE_FEEDBACK" > feedback.txt; date +%s%N > stamp.txt'
OTHER = "echo unwanted > unwanted.txt"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "safe.directory=*", "-C", str(repo), *args], check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def site(tmp_path, built_test_image):
    built_test_image(IMAGE)
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Host User")
    git(repo, "config", "user.email", "host@example.invalid")
    (repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (repo / "test_calc.py").write_text("import unittest\nimport calc\n\n\nclass T(unittest.TestCase):\n"
                                       "    def test_add(self):\n        self.assertEqual(calc.add(2, 3), 5)\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "calc and its test")
    settings = config.load({}, repo=str(repo), network="none", profile="light", memory="256m", cpus=0.5,
                           lease_seconds=60, poll_seconds=0.3, stop_grace_seconds=10, health_interval_seconds=1,
                           start_timeout_seconds=300, watchdog_seconds=60, backoff_seconds=1, max_attempts=3,
                           image=IMAGE, check=CHECK, check_timeout=60, merge_requeue=False, base_branch="main",
                           project=f"i22review{os.getpid()}",
                           codex_home=str(tmp_path / "no-codex"), ssh_dir=str(tmp_path / "no-ssh"),
                           gitconfig=str(tmp_path / "no-gitconfig"))
    the_fleet = fleet.Fleet.open(settings)
    yield repo, settings, the_fleet
    try:
        the_fleet.stop(progress=lambda _: None)
    except Exception:  # noqa: BLE001 - best-effort teardown
        pass


@pytest.mark.timeout(900)
def test_a_person_reviews_the_night_in_chromium_against_real_containers(site):
    from playwright.sync_api import expect
    from support.gui import LiveServer, chromium_page, screenshot

    repo, settings, the_fleet = site
    store = fleet.store_for(settings)
    back = store.add("echo the feedback", script=ECHO_FEEDBACK).number
    gone = store.add("something unwanted", script=OTHER).number
    the_fleet.start(2, progress=lambda _: None)
    app = create_app(settings, fleet=the_fleet, interval=0.3)
    base_before = git(repo, "rev-parse", "main")
    with LiveServer(app) as server, chromium_page() as page:
        page.goto(server.url + "/")
        page.fill("#add-title", "Add mul")
        page.fill("#add-script", MUL)
        page.click("#add")
        row = page.locator("#issues li", has_text="Add mul")
        expect(row).to_have_attribute("data-status", "claimed", timeout=120_000)  # live, by an agent in a container
        mul = int(row.get_attribute("data-issue"))
        assert store.get(mul).owner in ("agent-001", "agent-002")
        wait_for(lambda: all(store.get(n).status == "done" for n in (mul, back, gone)), 180, 0.5,
                 "the three issues to be done")
        # its page: the diff from git, the check's output from the agent's check
        page.locator(f'#merge-queue li[data-issue="{mul}"] a').click()
        page.wait_for_url(f"**/issues/{mul}")
        expect(page.locator("#issue-status")).to_have_text("done", timeout=20_000)
        expect(page.locator('#diff-files li[data-file="mathx.py"]')).to_contain_text("+2 -0")
        expect(page.locator('#diff details[data-file="mathx.py"]')).to_contain_text("+    return a * b")
        expect(page.locator('#diff details[data-file="test_mul.py"]')).to_be_visible()
        expect(page.locator("#check-status")).to_contain_text("passed")
        expect(page.locator("#check-output")).to_contain_text("OK")
        screenshot(page, "review-docker-issue")
        page.click("#merge")  # the merge queue runs the check (in a container) and moves the base
        expect(page.locator("#issue-status")).to_have_text("merged", timeout=240_000)
        base_after = git(repo, "rev-parse", "main")
        assert base_after != base_before and git(repo, "show", "main:mathx.py").startswith("def mul")
        assert store.get(mul).merge_commit == base_after
        # send one back with a note: the note is in its next attempt's environment
        page.goto(server.url + f"/issues/{back}")
        expect(page.locator("#issue-status")).to_have_text("done", timeout=20_000)
        page.fill("#note", NOTE)
        page.click("#send-back")
        wait_for(lambda: store.get(back).status == "done" and store.get(back).attempts == 2, 180, 0.5,
                 "the second attempt")
        expect(page.locator('#attempts details[data-attempt="2"]')).to_contain_text(f"FEEDBACK=[{NOTE}]",
                                                                                   timeout=20_000)
        expect(page.locator('#diff details[data-file="feedback.txt"]')).to_contain_text(NOTE)
        # and reject the third
        page.goto(server.url + f"/issues/{gone}")
        expect(page.locator("#issue-status")).to_have_text("done", timeout=20_000)
        page.fill("#note", "not wanted")
        page.click("#reject")
        expect(page.locator("#issue-status")).to_have_text("rejected", timeout=20_000)
    first = [p for p in (settings.logs_path / "agents").glob(f"agent-*/issue-{back}-attempt-1.log")]
    assert first and "FEEDBACK=[]" in first[0].read_text()
    trail = [(e.kind, e.worker) for e in store.events(back)]
    assert ("sent-back", "gui") in trail and trail.count(("claimed", trail[1][1])) >= 1
    assert [(e.kind, e.worker) for e in store.events(gone)][-1] == ("rejected", "gui")
    assert [(e.kind, e.worker) for e in store.events(mul)][0] == ("added", "gui")
    assert ("merge-requested", "gui") in [(e.kind, e.worker) for e in store.events(mul)]
    assert git(repo, "rev-parse", "main") == base_after  # nothing rejected or sent back reached the base
