"""The review and backlog from the GUI (issue 22), over a real repository, a real store and real git.

An issue's page (timeline, attempts, check, tokens, the diff from git through the library), the
review actions (merge through the merge queue, send back with a note that reaches the next prompt,
reject), the backlog's actions (add, import, retry, block, priority) and the merge queue's
controls: each in the audit trail with who did it. The checks run on the host here (fast); the
end-to-end path with agents in containers is in test_gui_review_docker.py.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from support.gui import FakeFleet, TestClient

from parallel_autopilot import config
from parallel_autopilot.gui import create_app
from parallel_autopilot.issues import IssueStore
from parallel_autopilot.runtime import kinds

BASE = "http://127.0.0.1:8787"
CHECK = "python3 -m unittest -q"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


class Repo:
    """A user's repository with a test suite, its store, and issues done on branches (as an agent does)."""

    def __init__(self, root: Path):
        self.path = root / "repo"
        self.path.mkdir()
        git(self.path, "init", "-q", "-b", "main")
        for key, value in (("user.name", "User"), ("user.email", "u@example.invalid"), ("commit.gpgsign", "false")):
            git(self.path, "config", key, value)
        (self.path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
        (self.path / "test_calc.py").write_text(
            "import unittest\nimport calc\n\n\nclass T(unittest.TestCase):\n"
            "    def test_add(self):\n        self.assertEqual(calc.add(2, 3), 5)\n")
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "-m", "calc and its test")
        self.store = IssueStore(self.path / ".autopilot" / "autopilot.db", backoff_seconds=0)
        self.settings = config.load({}, repo=str(self.path), check=CHECK, base_branch="main",
                                    merge_check_runner="host")

    def done(self, title: str, files: dict[str, str | bytes], usage: dict | None = None) -> int:
        number = self.store.add(title).number
        claim = self.store.claim("agent-001")
        branch = f"autopilot/issue-{number}"
        wt = self.path.parent / f"work-{number}"
        git(self.path, "worktree", "add", "-q", "-B", branch, str(wt), "main")
        for name, text in files.items():
            (wt / name).write_bytes(text) if isinstance(text, bytes) else (wt / name).write_text(text)
        git(wt, "add", "-A")
        git(wt, "commit", "-q", "-m", f"#{number}: {title}")
        commit = git(wt, "rev-parse", "HEAD")
        git(self.path, "worktree", "remove", "--force", str(wt))
        log = self.settings.logs_path / "agents" / "agent-001" / f"issue-{number}-attempt-1.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"### attempt 1\nworking on <b>#{number}</b>\n")
        self.store.complete(claim, {"branch": branch, "commit": commit, "check_status": "passed",
                                    "check_duration": 0.5, "check_output": "Ran 1 test\nOK",
                                    **({"usage": usage} if usage else {})})
        return number


@pytest.fixture
def env(tmp_path):
    repo = Repo(tmp_path)
    fleet = FakeFleet(repo.store, settings=repo.settings)
    app = create_app(repo.settings, fleet=fleet)
    with TestClient(app, base_url=BASE) as client:
        yield repo, client, {"X-CSRF-Token": app.state.guard.csrf_token}
    repo.store.close()


def events(store, number):
    return [(e.kind, e.worker) for e in store.events(number)]


def test_the_issue_page_has_its_timeline_attempts_check_tokens_and_the_diff_from_git(env):
    repo, client, _ = env
    big = "".join(f"line {i}\n" for i in range(500))
    number = repo.done("Add mul", {"calc.py": "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n",
                                   "logo.png": b"\x89PNG\r\n\x1a\n\x00\x00binary\x00", "big.txt": big},
                       usage={"input_tokens": 1200, "output_tokens": 80, "cost_usd": 0.0123})
    page = client.get(f"/api/issues/{number}/page").json()
    assert page["issue"]["number"] == number and page["issue"]["status"] == "done"
    assert [e["kind"] for e in page["timeline"]] == ["added", "claimed", "done"]
    assert page["timeline"][1]["who"] == "agent-001" and page["timeline"][0]["at"] > 0
    assert page["attempts"] == [{"agent": "agent-001", "attempt": 1, "size": page["attempts"][0]["size"],
                                 "truncated": False, "log": f"### attempt 1\nworking on <b>#{number}</b>\n"}]
    assert page["check"] == {"status": "passed", "duration": 0.5, "output": "Ran 1 test\nOK"}
    assert page["usage"] == {"input_tokens": 1200, "output_tokens": 80, "cost_usd": 0.0123}
    diff = page["diff"]
    assert diff["error"] is None and diff["base"] == "main"
    assert diff["from"] == git(repo.path, "rev-parse", "main") and diff["to"] == page["issue"]["commit"]
    files = {f["path"]: f for f in diff["files"]}
    assert set(files) == {"calc.py", "logo.png", "big.txt"}
    assert files["calc.py"]["added"] == 4 and files["calc.py"]["deleted"] == 0 and not files["calc.py"]["folded"]
    assert "+def mul(a, b):" in files["calc.py"]["patch"]
    assert files["logo.png"]["binary"] and files["logo.png"]["patch"] is None
    assert files["big.txt"]["folded"] and files["big.txt"]["added"] == 500
    # the page itself: one URL per issue, served with the CSRF token and the strict CSP
    html = client.get(f"/issues/{number}")
    assert html.status_code == 200 and "content-security-policy" in html.headers and "/static/issue.js" in html.text


def test_the_diff_of_a_merged_issue_is_still_against_the_base_it_started_from(env):
    repo, client, csrf = env
    number = repo.done("Add sub", {"calc.py": "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"})
    started = git(repo.path, "rev-parse", "main")
    report = client.post(f"/api/issues/{number}/merge", json={}, headers=csrf)
    assert report.status_code == 200, report.text
    diff = client.get(f"/api/issues/{number}/page").json()["diff"]
    assert diff["from"] == started and [f["path"] for f in diff["files"]] == ["calc.py"]


def test_merge_hands_the_issue_to_the_merge_queue_which_runs_the_check_and_moves_the_base(env):
    repo, client, csrf = env
    good = repo.done("Add mul", {"mathx.py": "def mul(a, b):\n    return a * b\n"})
    red = repo.done("Break add", {"calc.py": "def add(a, b):\n    return a - b\n"})
    before = git(repo.path, "rev-parse", "main")
    dry = client.post(f"/api/issues/{good}/merge", json={"dry_run": True}, headers=csrf).json()
    assert dry["dry_run"] and dry["merged"] == [good] and git(repo.path, "rev-parse", "main") == before
    report = client.post(f"/api/issues/{good}/merge", json={}, headers=csrf).json()
    assert report["merged"] == [good] and report["base_after"] != before
    assert git(repo.path, "rev-parse", "main") == report["base_after"]
    assert repo.store.get(good).status == "merged"
    assert events(repo.store, good)[-3:] == [("merge-dry-run", "gui"), ("merge-requested", "gui"),
                                             ("merged", "merge-queue")]
    # a red one is refused by the check: the base stays
    green_tip = git(repo.path, "rev-parse", "main")
    report = client.post(f"/api/issues/{red}/merge", json={}, headers=csrf).json()
    assert list(report["rejected"]) == [str(red)] or list(report["rejected"]) == [red]
    assert git(repo.path, "rev-parse", "main") == green_tip
    assert repo.store.get(red).status == "rejected"
    # only a done issue is handed over
    response = client.post(f"/api/issues/{good}/merge", json={}, headers=csrf)
    assert response.status_code == 409 and "only a done issue" in response.json()["error"]


def test_send_back_puts_the_note_in_the_next_prompt_and_reject_ends_it(env):
    repo, client, csrf = env
    back = repo.done("Add mul", {"mathx.py": "def mul(a, b):\n    return a * b\n"})
    gone = repo.done("Add div", {"mathx.py": "def div(a, b):\n    return a / b\n"})
    # a send-back needs a note, refused in one line as the CLI refuses it
    response = client.post(f"/api/issues/{back}/send-back", json={"note": "  "}, headers=csrf)
    assert response.status_code == 422 and response.json()["error"].startswith("send back needs a note")
    note = "use integer division & name it <mul2>"
    issue = client.post(f"/api/issues/{back}/send-back", json={"note": note}, headers=csrf).json()
    assert issue["status"] == "ready" and issue["feedback"] == note
    claim = repo.store.claim("agent-002")
    assert claim.number == back
    environment = kinds.environment({}, claim.issue, agent="agent-002", workspace="/w", kind="script")
    assert environment["ISSUE_FEEDBACK"] == note and note in environment["AUTOPILOT_PROMPT"]
    issue = client.post(f"/api/issues/{gone}/reject", json={"note": "not wanted"}, headers=csrf).json()
    assert issue["status"] == "rejected" and issue["error"] == "not wanted"
    assert events(repo.store, back)[-2:] == [("sent-back", "gui"), ("claimed", "agent-002")]
    assert events(repo.store, gone)[-1] == ("rejected", "gui")
    # a claimed issue cannot be sent back from under its agent
    response = client.post(f"/api/issues/{back}/send-back", json={"note": "x"}, headers=csrf)
    assert response.status_code == 409 and "claimed by agent-002" in response.json()["error"]


def test_the_backlog_from_the_gui_with_the_clis_checks(env):
    repo, client, csrf = env
    added = client.post("/api/issues", json={"title": "Fix it", "body": "b", "priority": "high",
                                             "check": "true"}, headers=csrf)
    assert added.status_code == 200, added.text
    number = added.json()["issues"][0]["number"]
    assert repo.store.get(number).priority == "high" and repo.store.get(number).check == "true"
    for body, message in [({"title": "  "}, "a non-empty 'title' is required"),
                          ({"title": "x", "priority": "soon"}, "priority 'soon' is not one of"),
                          ({"title": "x", "colour": "red"}, "unknown field(s) colour")]:
        response = client.post("/api/issues", json=body, headers=csrf)
        assert response.status_code == 422 and message in response.json()["error"], response.text
        assert "\n" not in response.json()["error"]
    text = "- title: One\n- title: Two\n  priority: low\n"
    imported = client.post("/api/issues/import", json={"text": text, "name": "night.yaml"}, headers=csrf).json()
    assert [i["title"] for i in imported["issues"]] == ["One", "Two"]
    bad = client.post("/api/issues/import", json={"text": "- title: A\n- priority: low\n", "name": "x.yaml"},
                      headers=csrf)
    assert bad.status_code == 422 and bad.json()["error"].startswith("x.yaml:2: issue 2:")
    assert len(repo.store.list()) == 3  # nothing of the bad file
    assert client.post(f"/api/issues/{number}/priority", json={"priority": "urgent"}, headers=csrf).json()["priority"] == "urgent"
    assert client.post(f"/api/issues/{number}/block", headers=csrf).json()["status"] == "blocked"
    assert client.post(f"/api/issues/{number}/retry", headers=csrf).json()["status"] == "ready"
    assert events(repo.store, number)[-3:] == [("priority", "gui"), ("block", "gui"), ("retry", "gui")]
    response = client.post(f"/api/issues/{number}/priority", json={"priority": "soon"}, headers=csrf)
    assert response.status_code == 422


@pytest.mark.parametrize("bad", ["abc", "0", "-1", "1.5", "99999", "%231x", "1e3", "99999999999999999999999"])
def test_a_bad_issue_id_is_404_on_every_issue_route(env, bad):
    repo, client, csrf = env
    repo.store.add("exists")
    assert client.get(f"/api/issues/{bad}/page").status_code == 404
    assert client.get(f"/issues/{bad}").status_code == 404
    for action, body in [("retry", None), ("block", None), ("priority", {"priority": "low"}),
                         ("send-back", {"note": "x"}), ("reject", {"note": "x"}), ("merge", {})]:
        response = client.post(f"/api/issues/{bad}/{action}", json=body, headers=csrf)
        assert response.status_code == 404, (action, response.text)
        assert "no issue" in response.json()["error"]
    assert [e.kind for e in repo.store.events()] == ["added"]


def test_the_merge_queue_controls_run_once_dry_run_continuously_and_stop(env):
    repo, client, csrf = env
    one = repo.done("Add mul", {"mathx.py": "def mul(a, b):\n    return a * b\n"})
    before = git(repo.path, "rev-parse", "main")
    dry = client.post("/api/merge-queue/run", json={"dry_run": True}, headers=csrf).json()
    assert dry["merged"] == [one] and git(repo.path, "rev-parse", "main") == before
    assert client.post("/api/merge-queue/run", json={}, headers=csrf).json()["merged"] == [one]
    assert git(repo.path, "rev-parse", "main") != before
    two = repo.done("Add pow", {"powx.py": "def pow2(a):\n    return a * a\n"})
    loop = client.post("/api/merge-queue/continuous", headers=csrf)
    assert loop.status_code == 200 and loop.json()["running"] and loop.json()["by"] == "gui"
    assert client.post("/api/merge-queue/continuous", headers=csrf).status_code == 409
    deadline = time.time() + 30
    while repo.store.get(two).status != "merged" and time.time() < deadline:
        time.sleep(0.2)
    assert repo.store.get(two).status == "merged"
    stopped = client.post("/api/merge-queue/stop", headers=csrf)
    assert stopped.status_code == 200
    assert client.get("/api/snapshot").json()["merge_loop"]["by"] == "gui"
    kinds_ = [(e.kind, e.worker) for e in repo.store.events() if e.issue is None]
    assert kinds_ == [("merge-loop-started", "gui"), ("merge-loop-stopped", "gui")]


def test_the_report_page_and_its_json(env):
    repo, client, csrf = env
    one = repo.done("Add <mul>", {"mathx.py": "def mul(a, b):\n    return a * b\n"},
                    usage={"input_tokens": 10, "output_tokens": 2, "cost_usd": 0.5})
    client.post(f"/api/issues/{one}/merge", json={}, headers=csrf)
    data = client.get("/api/report").json()
    assert data["merged"] == [one] and data["tokens"]["cost_usd"] == 0.5
    page = client.get("/report")
    assert page.status_code == 200 and "content-security-policy" in page.headers
    assert "<style>" not in page.text and "/static/app.css" in page.text  # the CSP forbids inline styles
    assert f'href="/issues/{one}"' in page.text and "Add &lt;mul&gt;" in page.text and "<svg" in page.text
    response = client.get("/api/report", params={"since": "yesterday"})
    assert response.status_code == 422 and "is not a time" in response.json()["error"]


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_review_in_a_browser_add_open_merge_send_back_reject_and_agent_text_stays_text(tmp_path):
    """The pane and the issue page in real Chromium, over a real store and git (agents are played here;
    the same with agents in real containers: test_gui_review_docker.py)."""
    from playwright.sync_api import expect
    from support.gui import LiveServer, chromium_page, screenshot

    repo = Repo(tmp_path)
    hostile = '<img src=x onerror="document.title=\'pwned\'">'
    good = repo.done("Add mul " + hostile, {"mathx.py": "def mul(a, b):\n    return a * b\n# <script>alert(1)</script>\n",
                                            "logo.png": b"\x89PNG\x00\x00binary",
                                            "big.txt": "".join(f"{i}\n" for i in range(400))},
                     usage={"input_tokens": 1500, "output_tokens": 90, "cost_usd": 0.02})
    back = repo.done("Add sub", {"subx.py": "def sub(a, b):\n    return a - b\n"})
    gone = repo.done("Add div", {"divx.py": "def div(a, b):\n    return a / b\n"})
    fleet = FakeFleet(repo.store, settings=repo.settings)
    app = create_app(repo.settings, fleet=fleet, interval=0.25)
    before = git(repo.path, "rev-parse", "main")
    with LiveServer(app) as server, chromium_page() as page:
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(server.url + "/")
        # add an issue from the pane; an agent claims it: the pane shows it live
        page.fill("#add-title", "Fix the parser")
        page.select_option("#add-priority", "high")
        page.click("#add")
        row = page.locator("#issues li", has_text="Fix the parser")
        expect(row).to_have_attribute("data-status", "ready", timeout=10_000)
        repo.store.claim("agent-009")
        expect(row).to_have_attribute("data-status", "claimed", timeout=10_000)
        # open the done issue's page from the merge queue's list
        page.locator(f'#merge-queue li[data-issue="{good}"] a').click()
        page.wait_for_url(f"**/issues/{good}")
        expect(page.locator("#issue-status")).to_have_text("done", timeout=10_000)
        expect(page.locator("#issue-title")).to_have_text(f"#{good} Add mul {hostile}")
        expect(page.locator('#diff details[data-file="mathx.py"]')).to_contain_text("+def mul(a, b):")
        expect(page.locator('#diff details[data-file="mathx.py"]')).to_contain_text("<script>alert(1)</script>")
        expect(page.locator('#diff details[data-file="logo.png"]')).to_contain_text("binary")
        assert page.locator('#diff details[data-file="big.txt"]').get_attribute("data-folded") == "yes"
        assert page.locator('#diff details[data-file="big.txt"]').evaluate("d => d.open") is False
        expect(page.locator("#check-output")).to_have_text("Ran 1 test\nOK")
        expect(page.locator("#facts")).to_contain_text("1500 in / 90 out tokens $0.0200")
        expect(page.locator("#attempts details")).to_have_count(1)
        expect(page.locator("#timeline tbody tr")).to_have_count(3)
        assert page.locator("img").count() == 0 and page.locator("#diff script").count() == 0
        screenshot(page, "issue-page")
        page.click("#merge")
        expect(page.locator("#issue-status")).to_have_text("merged", timeout=60_000)
        assert git(repo.path, "rev-parse", "main") != before
        expect(page.locator('#timeline tbody tr[data-kind="merge-requested"]')).to_contain_text("gui")
        # send one back with a note, reject another
        page.goto(server.url + f"/issues/{back}")
        expect(page.locator("#issue-status")).to_have_text("done", timeout=10_000)
        page.fill("#note", "also handle negative numbers")
        page.click("#send-back")
        expect(page.locator("#issue-status")).to_have_text("ready", timeout=10_000)
        expect(page.locator("#facts")).to_contain_text("also handle negative numbers")
        page.goto(server.url + f"/issues/{gone}")
        page.fill("#note", "not wanted")
        page.click("#reject")
        expect(page.locator("#issue-status")).to_have_text("rejected", timeout=10_000)
        # a refusal is one line in the banner
        page.fill("#note", "")
        page.click("#send-back")
        expect(page.locator("#banner-messages")).to_contain_text("send back needs a note")
        assert dialogs == [] and page.title() != "pwned"
    assert repo.store.get(back).feedback == "also handle negative numbers"
    assert repo.store.get(gone).status == "rejected"
    repo.store.close()


def test_fields_a_newer_backlog_adds_are_shown_when_the_issue_has_them(env):
    """Dependencies, paths and budgets (another issue) appear on the page as soon as Issue.to_dict has them."""
    from dataclasses import dataclass

    from parallel_autopilot import review

    repo, _, _ = env
    number = repo.store.add("with dependencies").number
    real = repo.store.get(number)

    @dataclass(frozen=True)
    class Newer:
        def to_dict(self):
            return {**real.to_dict(), "depends_on": [1, 2], "paths": ["src/"], "budget_usd": None}

        def __getattr__(self, name):
            return getattr(real, name)

    class Store:
        def get(self, n):
            return Newer()

        def events(self, n):
            return repo.store.events(n)

    page = review.issue_page(repo.settings, Store(), number, diff=False)
    assert page["extra"] == {"depends_on": [1, 2], "paths": ["src/"]}


def test_the_gui_watches_for_notifications_and_says_each_once(tmp_path):
    import json as json_
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    bodies = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            bodies.append(json_.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    repo = Repo(tmp_path)
    settings = repo.settings.replace(notify_webhook=f"http://127.0.0.1:{receiver.server_address[1]}/")
    app = create_app(settings, fleet=FakeFleet(repo.store, settings=settings), notify_every=0.1)
    number = repo.store.add("the last one").number
    with TestClient(app, base_url=BASE):
        assert app.state.watch is not None
        deadline = time.time() + 10
        while app.state.watch.cursor is None and time.time() < deadline:
            time.sleep(0.05)
        repo.store.block(number)  # nothing left to do
        while not bodies and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # more looks: still once
    receiver.shutdown()
    assert [b["event"] for b in bodies] == ["backlog-drained"]


def test_a_huge_diff_names_every_file_and_sends_patches_only_up_to_the_limit(env):
    from parallel_autopilot import review

    repo, _, _ = env
    files = {f"f{i}.txt": "".join(f"{i}-{j}\n" for j in range(100)) for i in range(5)}
    number = repo.done("Many files", files)
    diff = review.issue_diff(repo.settings, repo.store, repo.store.get(number), fold_lines=50, max_lines=250)
    assert [f["path"] for f in diff["files"]] == sorted(files)
    sent = [f for f in diff["files"] if f["patch"] is not None]
    assert len(sent) == 3 and all(f["folded"] for f in sent)  # each 100+ lines: folded; 3 x ~106 passes 250
    assert [f["omitted"] for f in diff["files"]] == [False, False, False, True, True]
    assert diff["added"] == 500 and diff["error"] is None


def test_dependencies_and_paths_from_the_gui_and_on_the_issue_page(env):
    """With the backlog's order (issue 21): the pane adds them, the page shows them and why it waits."""
    repo, client, csrf = env
    first = client.post("/api/issues", json={"title": "Model"}, headers=csrf).json()["issues"][0]["number"]
    added = client.post("/api/issues", json={"title": "Endpoint", "depends_on": [first], "paths": ["src/api/*.py"]},
                        headers=csrf)
    assert added.status_code == 200, added.text
    number = added.json()["issues"][0]["number"]
    extra = client.get(f"/api/issues/{number}/page").json()["extra"]
    assert extra["depends_on"] == [first] and extra["paths"] == ["src/api/*.py"]
    assert extra["waiting"].startswith(f"waiting for #{first}")
    bad = client.post("/api/issues", json={"title": "Orphan", "depends_on": [99]}, headers=csrf)
    assert bad.status_code == 422 and "depends on #99, which does not exist" in bad.json()["error"]


def test_an_added_issues_odd_field_name_is_refused_in_one_line(env):
    _, client, csrf = env
    for key in ("\n", "two words", "x" * 41):
        response = client.post("/api/issues", json={"title": "t", key: 1}, headers=csrf)
        assert response.status_code == 422 and "field names are words" in response.json()["error"]
        assert "\n" not in response.json()["error"]


def test_an_issue_file_yaml_cannot_build_is_one_line_not_a_crash(env):
    _, client, csrf = env
    response = client.post("/api/issues/import", json={"text": "{{csrf}}"}, headers=csrf)
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith("issues.yaml:1: not valid YAML (found unhashable key)")
