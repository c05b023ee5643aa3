"""Many PROCESSES on one database file: exactly-once completion under lease loss.

Each worker is a separate Python process (this file run as a script) with its
own IssueStore on the same database. Some workers take 50 ms leases, and every
worker sometimes sleeps past its lease until another has re-claimed the issue,
so its late complete/fail/release/renew calls must be refused. The checks read the
audit trail, not the workers' word alone.

Run with ``-s`` to see the throughput line.
"""

from __future__ import annotations

import collections
import json
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parallel_autopilot.errors import LeaseLost
from parallel_autopilot.issues import MIGRATIONS, IssueStore

ISSUES = 5_000
WORKERS = 8
SLOW_WORKERS = 3  # short leases, and they sometimes sleep past them
SHORT_LEASE = 0.05
VERBS = ("complete", "fail", "release", "renew")


def _wait_for(go: Path) -> None:
    while not go.exists():
        time.sleep(0.002)


def _go_stale(store: IssueStore, claim, deadline: float) -> None:
    """Sleep past the lease, until another worker has re-claimed the issue (or the deadline)."""
    time.sleep(2 * SHORT_LEASE)
    while time.monotonic() < deadline and store.get(claim.number).token == claim.token:
        time.sleep(0.005)


def worker(path: str, name: str, slow: bool, seed: int, go: str) -> dict:
    """Claim until the queue is empty; return what happened (the parent checks it against the db).

    Every worker sometimes takes a short lease and goes stale on purpose (a slow
    worker always takes short leases); a stale worker then tries one of the four
    fenced verbs. The rest of the time: mostly complete, sometimes fail, release
    or renew first.
    """
    rng = random.Random(seed)
    store = IssueStore(path, backoff_seconds=0.0)
    completed, lost, accepted = [], collections.Counter(), collections.Counter()
    claims = 0
    _wait_for(Path(go))
    while True:
        stale = rng.random() < (0.25 if slow else 0.03)
        claim = store.claim(name, lease_seconds=SHORT_LEASE if slow or stale else 60.0)
        if claim is None:
            counts = store.counts()
            if counts["ready"] + counts["failed"] + counts["claimed"] == 0:
                break
            time.sleep(0.002)  # the rest is held by others (or backing off): look again
            continue
        claims += 1
        if stale:
            _go_stale(store, claim, time.monotonic() + 0.5)
            verb = rng.choice(VERBS)
        else:
            roll = rng.random()
            verb = "fail" if roll < 0.04 else "release" if roll < 0.08 else "renew" if roll < 0.12 else "complete"
        try:
            if verb == "renew":
                claim = store.renew(claim, lease_seconds=claim.lease_until - claim.issue.claimed_at)
                accepted["renew"] += 1
                verb = "complete"
            if verb == "complete":
                store.complete(claim, {"branch": f"{name}/{claim.number}", "duration": 0.0})
                completed.append((claim.number, claim.token))
            elif verb == "fail":
                store.fail(claim, f"{name} failed on purpose")
            else:
                store.release(claim)
            accepted[verb] += 1
        except LeaseLost:
            lost[verb] += 1
    store.close()
    return {"name": name, "claims": claims, "completed": completed, "lost": lost, "accepted": accepted}


@pytest.mark.slow
def test_many_processes_complete_every_issue_exactly_once(tmp_path):
    path = tmp_path / "state" / "autopilot.db"
    go = tmp_path / "go"
    with IssueStore(path, max_attempts=1000) as store:  # lease losses use attempts: never dead here
        store.add_many([{"title": f"issue {i}", "priority": ("urgent", "high", "medium", "low")[i % 4]}
                        for i in range(ISSUES)])
    procs = [
        subprocess.Popen([sys.executable, __file__, str(path), f"agent-{i + 1:03d}",
                          "slow" if i < SLOW_WORKERS else "fast", str(i), str(go)],
                         stdout=subprocess.PIPE, text=True)
        for i in range(WORKERS)
    ]
    time.sleep(0.5)  # let them import and wait at the barrier, so they start together
    started = time.monotonic()
    go.touch()
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    elapsed = time.monotonic() - started
    assert [p.returncode for p in procs] == [0] * WORKERS
    reports = [json.loads(out) for out in outputs]

    con = sqlite3.connect(path)
    q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
    # every issue done, exactly one 'done' event each, none lost
    assert q("SELECT status, count(*) FROM issues GROUP BY status") == [("done", ISSUES)]
    done = dict(q("SELECT issue, count(*) FROM events WHERE kind = 'done' GROUP BY issue"))
    assert sorted(done) == list(range(1, ISSUES + 1))
    assert set(done.values()) == {1}
    # every accepted completion carried the issue's CURRENT token: no stale one got through
    assert q("""SELECT count(*) FROM events e JOIN issues i ON i.number = e.issue
                WHERE e.kind = 'done' AND e.token != i.token""") == [(0,)]
    # tokens went 1, 2, 3...: one 'claimed' event per token, and none after 'done'
    assert q("""SELECT count(*) FROM issues i WHERE i.token !=
                (SELECT count(*) FROM events c WHERE c.issue = i.number AND c.kind = 'claimed')""") == [(0,)]
    assert q("""SELECT count(*) FROM events c JOIN events d ON d.issue = c.issue AND d.kind = 'done'
                WHERE c.kind = 'claimed' AND c.id > d.id""") == [(0,)]
    # what the workers saw agrees with the log
    completions = [tuple(c) for r in reports for c in r["completed"]]
    assert sorted(n for n, _ in completions) == list(range(1, ISSUES + 1))
    tokens = dict(q("SELECT number, token FROM issues"))
    assert all(tokens[n] == t for n, t in completions)
    # stale calls really happened, were refused, and each left its event
    lost = collections.Counter()
    for r in reports:
        lost.update(r["lost"])
    refused = collections.Counter(dict(q(
        "SELECT substr(kind, 9), count(*) FROM events WHERE kind LIKE 'refused-%' GROUP BY kind")))
    assert refused == lost
    assert all(lost[verb] > 0 for verb in VERBS), lost
    assert q("PRAGMA integrity_check") == [("ok",)]
    con.close()

    claims = sum(r["claims"] for r in reports)
    print(f"\nhammer: {WORKERS} processes, {ISSUES} issues, {claims} claims in {elapsed:.1f} s: "
          f"{ISSUES / elapsed:.0f} completions/s, {claims / elapsed:.0f} claims/s; "
          f"refused {dict(lost)}; per worker "
          f"{ {r['name']: r['claims'] for r in reports} }")


CREATE_ROUNDS = 8


def _open_and_add(base: str, name: str, go: str) -> dict:
    """Round after round, open a NEW database together with the other processes and add one issue."""
    for round_ in range(CREATE_ROUNDS):
        _wait_for(Path(f"{go}-{round_}"))
        with IssueStore(Path(base) / f"round-{round_}" / "autopilot.db") as store:
            store.add(f"from {name}")
    return {"name": name}


def test_many_processes_creating_the_database_at_once(tmp_path):
    """Containers start together: the first open of a new database races in every one of them."""
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, __file__, str(tmp_path), f"agent-{i:03d}", "create", "0", str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(1, 13)]
    time.sleep(0.5)
    for round_ in range(CREATE_ROUNDS):
        Path(f"{go}-{round_}").touch()
        time.sleep(0.15)
    results = [p.communicate(timeout=120) for p in procs]
    assert [(p.returncode, err.strip().splitlines()[-1:]) for p, (_, err) in zip(procs, results)] == [(0, [])] * 12
    for round_ in range(CREATE_ROUNDS):
        with sqlite3.connect(tmp_path / f"round-{round_}" / "autopilot.db") as con:
            assert con.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
            assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert con.execute("SELECT count(*), count(DISTINCT title) FROM issues").fetchone() == (12, 12)


if __name__ == "__main__":
    db, name, mode, seed, go_file = sys.argv[1:]
    if mode == "create":
        report = _open_and_add(db, name, go_file)
    else:
        report = worker(db, name, mode == "slow", int(seed), go_file)
    json.dump(report, sys.stdout)
