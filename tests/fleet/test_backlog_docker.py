"""A real backlog end to end (issue 21): script agents in REAL containers, the merge queue running
continuously (what ``agents.start --merge`` runs), dependencies and paths in an issue file.

A chain A <- B <- C and a diamond top <- (left, right) <- bottom: every dependent's commit has its
predecessors' merge commits as ancestors and no dependent is claimed before its predecessors
are merged; a predecessor rejected by the merge queue leaves its dependent blocked with the
reason; two issues on overlapping paths never run at once; a file with a cycle is refused in
one line with nothing imported.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from parallel_autopilot import config, fleet
from parallel_autopilot.errors import MalformedIssueFile
from parallel_autopilot.issues import issuefile
from support.waiting import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CHECK = "python3 -m unittest -q"
IMAGE = os.environ.get("INVOKE_AUTOPILOT_IMAGE") or "parallel-autopilot-test-backlog:latest"

BACKLOG = """\
- {title: A, key: a, script: "echo A >> chain.txt"}
- {title: B, key: b, depends_on: [a], script: "grep -qx A chain.txt || exit 3; echo B >> chain.txt"}
- {title: C, key: c, depends_on: [b], script: "grep -qx B chain.txt || exit 3; echo C >> chain.txt"}
- {title: top, key: top, script: "echo top > top.txt"}
- {title: left, key: left, depends_on: [top], script: "test -f top.txt || exit 3; echo l > left.txt"}
- {title: right, key: right, depends_on: [top], script: "test -f top.txt || exit 3; echo r > right.txt"}
- {title: bottom, depends_on: [left, right],
   script: "test -f left.txt && test -f right.txt || exit 3; echo b > bottom.txt"}
- {title: red on main, key: red, check: "true", script: "sed -i 's/a + b/a - b/' calc.py"}
- {title: after red, key: after-red, depends_on: [red], script: "echo z > z.txt"}
- {title: P1, paths: ["shared/*"], script: "mkdir -p shared; echo 1 > shared/one.txt; sleep 2"}
- {title: P2, paths: ["shared/two.txt"], script: "mkdir -p shared; echo 2 > shared/two.txt; sleep 2"}
"""


def git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-c", "safe.directory=*", "-C", str(repo), *args], capture_output=True, text=True)


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Host User")
    git(path, "config", "user.email", "host@example.invalid")
    (path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (path / "test_calc.py").write_text("import unittest\nimport calc\n\n\nclass T(unittest.TestCase):\n"
                                       "    def test_add(self):\n        self.assertEqual(calc.add(2, 3), 5)\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "calc and its test")
    return path


@pytest.fixture
def site(tmp_path, built_test_image):
    built_test_image(IMAGE)
    repo = make_repo(tmp_path / "repo")
    settings = config.load({}, repo=str(repo), network="none", profile="light", memory="256m", cpus=0.5,
                           lease_seconds=60, poll_seconds=0.3, stop_grace_seconds=20, health_interval_seconds=1,
                           start_timeout_seconds=180, watchdog_seconds=60, backoff_seconds=1, max_attempts=1,
                           image=IMAGE, check=CHECK, check_timeout=60, merge_requeue=False, base_branch="main",
                           merge_poll_seconds=0.5, codex_home=str(tmp_path / "no-codex"),
                           ssh_dir=str(tmp_path / "no-ssh"), gitconfig=str(tmp_path / "no-gitconfig"))
    yield tmp_path, repo, settings
    try:
        fleet.Fleet.open(settings).stop(progress=lambda _: None)
    except Exception:  # noqa: BLE001 - best-effort teardown
        pass


def _first(store, number: int, kind: str) -> float:
    return min(e.at for e in store.events(number) if e.kind == kind)


def test_dependencies_and_paths_with_the_merge_queue_running(site):
    tmp_path, repo, settings = site
    store = fleet.store_for(settings)

    # a cycle in an issue file: one line, nothing imported
    cycle = tmp_path / "cycle.yaml"
    cycle.write_text("- {title: x, key: x, depends_on: [y]}\n- {title: y, key: y, depends_on: [x]}\n")
    with pytest.raises(MalformedIssueFile) as err:
        store.add_many(issuefile.load(cycle))
    assert "cycle (x -> y -> x)" in str(err.value) and "\n" not in str(err.value)
    assert store.list() == []

    path = tmp_path / "backlog.yaml"
    path.write_text(BACKLOG)
    n = {i.title: i.number for i in store.add_many(issuefile.load(path))}

    stop = threading.Event()
    merging = threading.Thread(target=fleet.Fleet.open(settings).merge_loop,
                               kwargs={"stop": stop, "progress": lambda _: None}, daemon=True)
    merging.start()
    try:
        fleet.Fleet.open(settings).start(2, progress=lambda _: None)
        settled = [t for t in n if t != "after red"]
        wait_for(lambda: all(store.get(n[t]).status in ("merged", "rejected", "dead") for t in settled),
                 300.0, 1.0, "every issue but the blocked one to be merged or rejected")
    finally:
        stop.set()
        merging.join(60)

    issues = {t: store.get(number) for t, number in n.items()}
    assert {t: i.status for t, i in issues.items() if i.status != "merged"} == {
        "red on main": "rejected", "after red": "ready"}

    # nothing started early, and each dependent's work sits on its predecessors' merges
    for title, issue in issues.items():
        for predecessor in issue.depends_on:
            before = store.get(predecessor)
            if before.status != "merged":
                continue
            assert _first(store, issue.number, "claimed") >= _first(store, predecessor, "merged"), (title, predecessor)
            assert git(repo, "merge-base", "--is-ancestor", before.merge_commit, issue.commit).returncode == 0, \
                (title, predecessor)
    assert git(repo, "show", "main:chain.txt").stdout == "A\nB\nC\n"

    # the rejected predecessor leaves its dependent blocked, with the reason, never attempted
    after_red = issues["after red"]
    assert after_red.attempts == 0
    assert store.waits()[after_red.number].startswith(f"blocked by #{n['red on main']} (rejected)")

    # overlapping paths never ran at once: the second was claimed after the first was merged
    p1, p2 = sorted((issues["P1"], issues["P2"]), key=lambda i: _first(store, i.number, "claimed"))
    assert _first(store, p2.number, "claimed") >= _first(store, p1.number, "merged")
