"""Scenario ``backlog``: what the queue's hints (dependencies and paths, issue 21) buy a real backlog.

24 issues done by script agents in real containers, the merge queue running continuously
(``agents.start --merge``: ``Fleet.merge_loop`` beside the agents, re-queueing what it rejects)
with a real check (the repository's unittest suite, in the agents and in the merge queue):

- a chain of 4 (each needs the line its predecessor appended: it fails without it),
- a diamond (top; left and right need top; bottom needs left and right),
- 6 pairs of issues that edit the same line of one file (each appends to it),
- 4 independent issues.

The same backlog, on a fresh sandbox each, with the hints off (today's behaviour: no
``depends_on``, no ``paths``; a dependent that starts early fails and is retried after its
backoff, a pair that runs side by side conflicts at merge and is re-queued) and on. Measured
per mode: merges rejected for a conflict, agent-seconds spent on attempts that were thrown
away (failed, or done and then rejected), and seconds until every issue is merged.
"""

from __future__ import annotations

import threading
from typing import Any

from . import stats
from .progress import quiet
from .sandbox import Sandbox, git, wait_for

TITLE = "backlog: dependencies and paths kept by the queue (hints) against none"
NEEDS_FLEET = True
AGENTS = 4
WORK_SECONDS = 2  # each issue's script sleeps this long: an agent's work
ROUND_TIMEOUT = 900.0
CHECK = "python3 -m unittest -q"
PAIRS = 6
INDEPENDENT = 4


def backlog(hints: bool, work: float = WORK_SECONDS) -> list[dict[str, Any]]:
    """The 24 issues (with ``depends_on``/``paths`` only when ``hints``)."""
    sleep = f"sleep {work:g}; "
    items: list[dict[str, Any]] = []
    for k in range(4):  # the chain
        need = f"grep -qx c{k - 1} chain.txt || exit 3; " if k else ""
        items.append({"title": f"chain {k + 1}", "key": f"c{k}", "depends_on": [f"c{k - 1}"] if k else [],
                      "script": f"{sleep}{need}echo c{k} >> chain.txt"})
    items += [
        {"title": "diamond top", "key": "top", "script": f"{sleep}echo top > top.txt"},
        {"title": "diamond left", "key": "left", "depends_on": ["top"],
         "script": f"{sleep}test -f top.txt || exit 3; echo left > left.txt"},
        {"title": "diamond right", "key": "right", "depends_on": ["top"],
         "script": f"{sleep}test -f top.txt || exit 3; echo right > right.txt"},
        {"title": "diamond bottom", "depends_on": ["left", "right"],
         "script": f"{sleep}test -f left.txt && test -f right.txt || exit 3; echo bottom > bottom.txt"},
    ]
    for p in range(PAIRS):  # both edit line 1 of pair_p.txt: side by side, the second conflicts
        for side in "ab":
            items.append({"title": f"pair {p} {side}", "paths": [f"pair_{p}.txt"],
                          "script": f"{sleep}sed -i '1s/$/ +{side}/' pair_{p}.txt"})
    for i in range(INDEPENDENT):
        items.append({"title": f"independent {i}", "script": f"{sleep}echo {i} > independent_{i}.txt"})
    if not hints:
        items = [{k: v for k, v in item.items() if k not in ("depends_on", "paths")} for item in items]
    return items


def prepare(box: Sandbox) -> None:
    """The sandbox's repository: the files the pairs edit and a real test suite."""
    for p in range(PAIRS):
        (box.repo / f"pair_{p}.txt").write_text(f"pair {p}\nsecond line\n")
    (box.repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (box.repo / "test_calc.py").write_text("import unittest\nimport calc\n\n\nclass T(unittest.TestCase):\n"
                                           "    def test_add(self):\n        self.assertEqual(calc.add(2, 3), 5)\n")
    git(box.repo, "add", "-A")
    git(box.repo, "commit", "-q", "-m", "pairs and a suite")


def waste(store, numbers: list[int]) -> tuple[int, float, int]:
    """(conflict rejections, agent-seconds of attempts thrown away, attempts) over ``numbers``'s audit trail."""
    conflicts, wasted, attempts = 0, 0.0, 0
    for number in numbers:
        claimed_at, finished = None, None  # finished: (kind, at) of the attempt's end
        for event in store.events(number):
            if event.kind == "claimed":
                claimed_at, finished = event.at, None
                attempts += 1
            elif event.kind in ("failed", "dead", "done", "empty") and claimed_at is not None:
                finished = (event.kind, event.at)
                if event.kind != "done":
                    wasted += event.at - claimed_at
            elif event.kind == "rejected":
                if "conflict" in (event.detail or ""):
                    conflicts += 1
                if finished and finished[0] == "done" and claimed_at is not None:
                    wasted += finished[1] - claimed_at
    return conflicts, wasted, attempts


def one(ctx, hints: bool, label: str, work: float, round_: int = 1) -> dict[str, Any]:
    """The backlog with the hints on or off, on a fresh sandbox: its figures."""
    name = f"backlog-{'on' if hints else 'off'}-{round_}"
    with Sandbox(ctx, name, check=CHECK, merge_requeue=True, merge_poll_seconds=0.5, max_attempts=12,
                 backoff_seconds=1, poll_seconds=0.3) as box:
        prepare(box)
        box.start(AGENTS, progress=quiet)
        store = box.store()
        stop = threading.Event()
        merging = threading.Thread(target=box.fleet.merge_loop, kwargs={"stop": stop, "progress": quiet},
                                   daemon=True)
        t0 = ctx.clock()
        numbers = [i.number for i in store.add_many(backlog(hints, work))]
        merging.start()
        try:
            def all_merged() -> bool:
                issues = [i for i in store.list() if i.number in numbers]
                stuck = [i for i in issues if i.status in ("dead", "rejected", "blocked")]
                if stuck:
                    raise RuntimeError(f"hints {'on' if hints else 'off'}: #{stuck[0].number} "
                                       f"({stuck[0].title}) is {stuck[0].status}: {stuck[0].error}")
                return all(i.status == "merged" for i in issues)

            wait_for(all_merged, ROUND_TIMEOUT, f"{len(numbers)} issues merged", poll=0.2, sleep=ctx.sleep)
            seconds = ctx.clock() - t0
        finally:
            stop.set()
            merging.join(120)
        conflicts, wasted, attempts = waste(store, numbers)
        chain = git(box.repo, "show", "main:chain.txt")
        if chain.split() != ["c0", "c1", "c2", "c3"]:
            raise RuntimeError(f"hints {'on' if hints else 'off'}: the chain merged as {chain.split()}")
        store.close()
    ctx.progress(f"{label}, hints {'on' if hints else 'off'}: all merged in {seconds:.1f}s, "
                 f"{conflicts} conflict rejections, {wasted:.1f} agent-seconds wasted, {attempts} attempts")
    return {"seconds": seconds, "conflicts": conflicts, "wasted": wasted, "attempts": attempts}


def run(ctx) -> dict[str, Any]:
    """Each round: hints off and on (which first alternates by round), each on a fresh sandbox."""
    rounds = 1 if ctx.quick else ctx.repeats
    work = 1 if ctx.quick else WORK_SECONDS
    results: dict[str, list[dict]] = {"off": [], "on": []}
    for r in range(rounds):
        for hints in ((False, True) if r % 2 == 0 else (True, False)):  # which goes first alternates
            results["on" if hints else "off"].append(one(ctx, hints, f"round {r + 1}/{rounds}", work, r + 1))
    off, on = results["off"], results["on"]
    case = f"24 issues (chain of 4, diamond, {PAIRS} same-line pairs), {AGENTS} agents, merge queue running"
    zero = all(x["conflicts"] == 0 for x in on)
    faster = (stats.summary([x["seconds"] for x in on])["median"]
              <= stats.summary([x["seconds"] for x in off])["median"])
    rows = [
        stats.row(case, "merges rejected for a conflict, hints on", "rejections", [x["conflicts"] for x in on],
                  baseline=[x["conflicts"] for x in off], baseline_label="hints off (no depends_on, no paths)",
                  target="0 with hints", met=None if ctx.quick else zero),
        stats.row(case, "agent-seconds wasted (failed or rejected attempts), hints on", "s",
                  [x["wasted"] for x in on], baseline=[x["wasted"] for x in off],
                  baseline_label="hints off"),
        stats.row(case, "time until all merged, hints on", "s", [x["seconds"] for x in on],
                  baseline=[x["seconds"] for x in off], baseline_label="hints off",
                  target="no worse than hints off", met=None if ctx.quick else faster),
        stats.row(case, "attempts, hints on", "attempts", [x["attempts"] for x in on],
                  baseline=[x["attempts"] for x in off], baseline_label="hints off"),
    ]
    notes = [f"each issue's script sleeps {work:g} s; the check ({CHECK}) runs in the agents and in the merge "
             "queue; merge_requeue on, max_attempts 12, backoff 1 s doubling"]
    return stats.scenario("backlog", TITLE, rows, params={"agents": AGENTS, "rounds": rounds, "work": work},
                          notes=notes, details={"results": results})
