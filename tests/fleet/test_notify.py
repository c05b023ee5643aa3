"""A word when someone is needed (issue 22): each notification once per event, to a local receiver
(a real HTTP server on 127.0.0.1) and a real command; a failing notifier is harmless."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from parallel_autopilot import config
from parallel_autopilot.issues import IssueStore
from parallel_autopilot.notify import Notifier, Watch, events_of


class Receiver:
    """A webhook receiver on 127.0.0.1: every POSTed JSON body, in order."""

    def __init__(self):
        self.bodies: list[dict] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                length = int(self.headers.get("content-length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def agent(ident, state="running", activity="idle", problem=None, heartbeat_age=1.0, waiting_until=None):
    return {"id": ident, "state": state, "activity": activity, "problem": problem, "heartbeat_age": heartbeat_age,
            "waiting_until": waiting_until}


def test_each_event_is_said_once_to_the_webhook_and_the_command(tmp_path, receiver):
    store = IssueStore(tmp_path / "state" / "autopilot.db", backoff_seconds=0)
    out = tmp_path / "said.jsonl"
    command = f"{sys.executable} -c \"import sys; open({str(out)!r}, 'a').write(sys.stdin.read() + chr(10))\""
    agents = [agent("agent-001"), agent("agent-002")]
    watch = Watch(Notifier(command=command, webhook=receiver.url), lambda: store, lambda: agents,
                  repo="/r", stuck_seconds=60)
    old = store.add("rejected before the watch began").number
    store.complete(store.claim("agent-001"), {"commit": "a" * 40})
    store.reject(old, "a" * 40, "red before")
    assert watch.tick() == []  # the first look only takes note: nothing old is said
    one = store.add("one").number
    watch.tick()
    store.complete(store.claim("agent-001"), {"commit": "b" * 40})
    store.reject(one, "b" * 40, "check failed: test_add")
    said = watch.tick() + watch.tick()
    assert events_of(said) == ["backlog-drained", "merge-rejected"]
    assert said[1]["issue"] == one and said[1]["reason"] == "check failed: test_add"
    # crash-looping, stuck, every agent on quota: said when they start, not again while they last
    agents[0] = agent("agent-001", state="restarting", problem="crash-looping (5 restarts)")
    agents[1] = agent("agent-002", heartbeat_age=601.0)
    assert events_of(watch.tick() + watch.tick()) == ["agent-crash-looping", "agent-stuck"]
    agents[:] = [agent("agent-001", activity="quota", waiting_until=5.0), agent("agent-002", activity="quota")]
    assert events_of(watch.tick() + watch.tick()) == ["quota-all-parked"]
    agents[1] = agent("agent-002")  # one works again: cleared; all parked again: said again
    watch.tick()
    agents[1] = agent("agent-002", activity="quota")
    assert events_of(watch.tick()) == ["quota-all-parked"]
    # the fleet run's budget (issue 21): said once when the queue says it is spent
    store.set_fleet_budget(tokens=1000)
    store.spend(400)
    assert watch.tick() == []
    store.spend(700)
    said = watch.tick() + watch.tick()
    assert events_of(said) == ["budget-spent"] and said[0]["budget"]["spent_tokens"] == 1100
    # work again, then drained again: said again
    store.add("two")
    watch.tick()
    store.block(store.list("ready")[0].number)
    assert events_of(watch.tick()) == ["backlog-drained"]
    expected = ["backlog-drained", "merge-rejected", "agent-crash-looping", "agent-stuck", "quota-all-parked",
                "quota-all-parked", "budget-spent", "backlog-drained"]
    assert [b["event"] for b in receiver.bodies] == expected
    assert [json.loads(line)["event"] for line in out.read_text().splitlines()] == expected
    assert all(b["repo"] == "/r" and isinstance(b["at"], float) for b in receiver.bodies)
    assert watch.notifier.failures == []


def test_a_failing_notifier_never_stops_the_caller(tmp_path):
    store = IssueStore(tmp_path / "state" / "autopilot.db", backoff_seconds=0)
    # a refused webhook (nothing listens), a command that fails, one that hangs
    for notifier in (Notifier(webhook="http://127.0.0.1:9/nothing", timeout=2),
                     Notifier(command="false"), Notifier(command="/no/such/program"),
                     Notifier(command=f"{sys.executable} -c 'import time; time.sleep(30)'", timeout=0.5)):
        watch = Watch(notifier, lambda: store, lambda: [])
        watch.tick()
        number = store.add("x").number
        watch.tick()
        store.block(number)
        assert events_of(watch.tick()) == ["backlog-drained"]
        assert len(notifier.failures) == 1 and "\n" not in notifier.failures[0]

    def broken():
        raise RuntimeError("docker went away")

    assert Watch(Notifier(command="true"), lambda: store, broken).tick() == []


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_the_merge_loop_goes_on_with_a_failing_notifier_and_says_each_rejection_once(tmp_path, receiver):
    from support.gui import FakeFleet

    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.name=U", "-c", "user.email=u@x.invalid", "commit", "-q", "--allow-empty", "-m", "base")
    settings = config.load({}, repo=str(repo), base_branch="main", merge_check_runner="host", check="false",
                           merge_poll_seconds=0.01, notify_webhook=receiver.url, notify_command="false")
    store = IssueStore(settings.db_path, backoff_seconds=0)
    fleet = FakeFleet(store, settings=settings)
    number = store.add("red").number
    claim = store.claim("agent-001")
    git(repo, "-c", "user.name=U", "-c", "user.email=u@x.invalid", "commit", "-q", "--allow-empty", "-m", "work")
    commit = git(repo, "rev-parse", "HEAD")
    git(repo, "reset", "-q", "--hard", "HEAD~1")
    store.complete(claim, {"branch": "autopilot/issue-1", "commit": commit})
    reports = fleet.merge_loop(rounds=4, progress=lambda _: None, sleep=lambda _: None)
    assert [list(r.rejected) for r in reports] == [[number]]  # the queue ran its rounds despite the notifier
    assert [b["event"] for b in receiver.bodies] == ["merge-rejected"]  # the command failed; the webhook heard it
