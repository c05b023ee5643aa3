"""Many PROCESSES on one queue: exactly-once completion under lease loss, on both backends.

Each worker is a separate Python process (this file run as a script) with its
own store on the same database (a SQLite file, or a PostgreSQL database). Some workers take 50 ms leases, and every
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

from parallel_autopilot.bench import pgcluster
from parallel_autopilot.issues import postgres as pgstore
from parallel_autopilot.errors import LeaseLost
from parallel_autopilot.issues import MIGRATIONS, is_url, open_store

ISSUES = 5_000
WORKERS = 8
SLOW_WORKERS = 3  # short leases, and they sometimes sleep past them
SHORT_LEASE = 0.05
VERBS = ("complete", "fail", "release", "renew")


def _wait_for(go: Path) -> None:
    while not go.exists():
        time.sleep(0.002)


def _go_stale(store, claim, deadline: float) -> None:
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
    store = open_store(path, backoff_seconds=0.0)
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


class Query:
    """The parent's own connection to the queue's database, for checks in plain SQL."""

    def __init__(self, target: str):
        if is_url(target):
            import pg8000.native

            self.con = pg8000.native.Connection(**pgstore.connect_options(target))
            self.run = lambda sql: [tuple(r) for r in self.con.run(sql)]
        else:
            self.con = sqlite3.connect(Path(target) / "autopilot.db")
            self.run = lambda sql: self.con.execute(sql).fetchall()
        self.sqlite = not is_url(target)

    def __call__(self, sql: str) -> list[tuple]:
        return self.run(sql)

    def close(self) -> None:
        self.con.close()


@pytest.mark.slow
def test_many_processes_complete_every_issue_exactly_once(tmp_path, queue_target):
    path = queue_target
    issues = ISSUES
    go = tmp_path / "go"
    with open_store(path, max_attempts=1000) as store:  # lease losses use attempts: never dead here
        store.add_many([{"title": f"issue {i}", "priority": ("urgent", "high", "medium", "low")[i % 4]}
                        for i in range(issues)])
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

    q = Query(path)
    # every issue done, exactly one 'done' event each, none lost
    assert q("SELECT status, count(*) FROM issues GROUP BY status") == [("done", issues)]
    done = dict(q("SELECT issue, count(*) FROM events WHERE kind = 'done' GROUP BY issue"))
    assert sorted(done) == list(range(1, issues + 1))
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
    assert sorted(n for n, _ in completions) == list(range(1, issues + 1))
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
    if q.sqlite:
        assert q("PRAGMA integrity_check") == [("ok",)]
    q.close()

    claims = sum(r["claims"] for r in reports)
    print(f"\nhammer: {WORKERS} processes, {issues} issues, {claims} claims in {elapsed:.1f} s: "
          f"{issues / elapsed:.0f} completions/s, {claims / elapsed:.0f} claims/s; "
          f"refused {dict(lost)}; per worker "
          f"{ {r['name']: r['claims'] for r in reports} }")


CREATE_ROUNDS = 8


def _open_and_add(targets: str, name: str, go: str) -> dict:
    """Round after round, open a NEW database together with the other processes and add one issue."""
    for round_, target in enumerate(json.loads(targets)):
        _wait_for(Path(f"{go}-{round_}"))
        with open_store(target) as store:
            store.add(f"from {name}")
    return {"name": name}


def test_many_processes_creating_the_database_at_once(tmp_path, queue_target, request):
    """Containers (or hosts) start together: the first open of a new database races in every one."""
    if is_url(queue_target):
        cluster = request.getfixturevalue("pg_cluster")
        targets = [queue_target] + [cluster.create_database() for _ in range(CREATE_ROUNDS - 1)]
    else:
        targets = [str(tmp_path / f"round-{r}") for r in range(CREATE_ROUNDS)]
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, __file__, json.dumps(targets), f"agent-{i:03d}", "create", "0",
                               str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(1, 13)]
    time.sleep(0.5)
    for round_ in range(CREATE_ROUNDS):
        Path(f"{go}-{round_}").touch()
        time.sleep(0.15)
    results = [p.communicate(timeout=120) for p in procs]
    assert [(p.returncode, err.strip().splitlines()[-1:]) for p, (_, err) in zip(procs, results)] == [(0, [])] * 12
    for target in targets:
        q = Query(target)
        if q.sqlite:
            assert q("PRAGMA user_version") == [(len(MIGRATIONS),)]
            assert q("PRAGMA journal_mode") == [("wal",)]
        else:
            assert q("SELECT version FROM autopilot_schema") == [(len(pgstore.MIGRATIONS),)]
        assert q("SELECT count(*), count(DISTINCT title) FROM issues") == [(12, 12)]
        q.close()


# -- PostgreSQL restarted in the middle of a many-process run -----------------------

RESTART_ISSUES = 1_200
RESTART_WORKERS = 6
RESTARTS = 2


def steady_worker(url: str, name: str, go: str) -> dict:
    """Claim and complete until nothing is left, through server restarts; log what it saw."""
    lines = []
    store = open_store(url, backoff_seconds=0.0, reconnect_seconds=120, on_reconnect=lines.append)
    completed, lost = [], 0
    _wait_for(Path(go))
    while True:
        claim = store.claim(name, lease_seconds=300)
        if claim is None:
            counts = store.counts()
            if counts["ready"] + counts["failed"] + counts["claimed"] == 0:
                break
            time.sleep(0.005)
            continue
        time.sleep(0.002)  # a little work: a restart lands between claim and complete too
        try:
            store.complete(claim, {"branch": f"{name}/{claim.number}"})
            completed.append(claim.number)
        except LeaseLost:
            lost += 1
    store.close()
    return {"name": name, "completed": completed, "lost": lost, "lines": lines}


@pytest.mark.slow
def test_a_postgresql_restart_mid_run_loses_no_issue_and_does_none_twice(tmp_path):
    problem = pgcluster.unavailable()
    if problem:
        pytest.skip(f"PostgreSQL: {problem}")
    with pgcluster.Cluster() as cluster:  # its own server: the session's is not restarted under others
        url = cluster.create_database()
        with open_store(url) as store:
            store.add_many([{"title": f"issue {i}"} for i in range(RESTART_ISSUES)])
        go = tmp_path / "go"
        procs = [subprocess.Popen([sys.executable, __file__, url, f"agent-{i + 1:03d}", "steady", "0", str(go)],
                                  stdout=subprocess.PIPE, text=True) for i in range(RESTART_WORKERS)]
        time.sleep(0.5)
        go.touch()
        restarted = []
        with open_store(url, reconnect_seconds=120) as watcher:
            for k in range(RESTARTS):  # restart at about 1/3 and 2/3 of the backlog
                while watcher.counts()["done"] < RESTART_ISSUES * (k + 1) // (RESTARTS + 1):
                    time.sleep(0.05)
                restarted.append(watcher.counts()["done"])
                cluster.restart()
        outputs = [p.communicate(timeout=300)[0] for p in procs]
        assert [p.returncode for p in procs] == [0] * RESTART_WORKERS
        reports = [json.loads(out) for out in outputs]
        q = Query(url)
        # nothing lost: all done; nothing twice: one claim (token 1) and one completion per issue
        assert q("SELECT status, count(*), min(token), max(token) FROM issues GROUP BY status") == [
            ("done", RESTART_ISSUES, 1, 1)]
        assert q("SELECT kind, count(*) FROM events GROUP BY kind ORDER BY kind") == [
            ("added", RESTART_ISSUES), ("claimed", RESTART_ISSUES), ("done", RESTART_ISSUES)]
        q.close()
    completed = sorted(n for r in reports for n in r["completed"])
    assert completed == list(range(1, RESTART_ISSUES + 1))
    assert sum(r["lost"] for r in reports) == 0
    # the workers noticed, each logging one line per outage at most
    lines = [line for r in reports for line in r["lines"]]
    assert lines and all(len(r["lines"]) <= RESTARTS for r in reports), lines
    assert all("unreachable" in line and "reconnecting" in line for line in lines)
    assert restarted[0] < restarted[1] < RESTART_ISSUES, restarted
    print(f"\nrestart: {len(lines)} reconnect lines from {RESTART_WORKERS} workers; restarted at {restarted} done")


if __name__ == "__main__":
    db, name, mode, seed, go_file = sys.argv[1:]
    if mode == "create":
        report = _open_and_add(db, name, go_file)
    elif mode == "steady":
        report = steady_worker(db, name, go_file)
    else:
        report = worker(db, name, mode == "slow", int(seed), go_file)
    json.dump(report, sys.stdout)
