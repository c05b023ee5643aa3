"""issues.migrate: a SQLite backlog copied into PostgreSQL once; a PostgreSQL backlog backed up into SQLite.

Against the session's real PostgreSQL server (conftest.pg_cluster).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from support.clock import T0
from parallel_autopilot.issues import transfer as queuecopy
from parallel_autopilot.errors import Conflict, LeaseLost
from parallel_autopilot.issues import IssueStore, open_store


def _backlog(store) -> dict:
    """Issues in every reachable state, with results, usage, agents and a live claim."""
    done = store.add("done one", priority="high", script="make it", check="make check", now=T0)
    store.add("failed one", max_attempts=2, now=T0 + 1)
    store.add("dead one", max_attempts=1, now=T0 + 2)
    blocked = store.add("blocked one", body="multi\nline\tbody \\ with backslash", now=T0 + 3,
                        depends_on=[done.number])
    store.add("held one", priority="low", now=T0 + 4, paths=["src/held/*.py"])
    store.block(blocked.number, now=T0 + 5)
    store.agent_heartbeat("agent-001", "working", issue=done.number, token=1, incarnation="i1",
                          pid=42, now=T0 + 6)
    store.agent_heartbeat("agent-002", "idle", now=T0 + 6)
    claim = store.claim("agent-001", now=T0 + 10)
    store.complete(claim, {"branch": "agent/001", "commit": "abc123", "duration": 2.5, "check_status": "passed",
                           "check_duration": 0.25, "check_output": "ok\n", "usage": {"input_tokens": 7}},
                   now=T0 + 11)
    store.fail(store.claim("agent-002", now=T0 + 12), "boom", now=T0 + 13)
    store.fail(store.claim("agent-002", now=T0 + 14), "dead now", now=T0 + 15)
    held = store.claim("agent-001", now=T0 + 16)
    return {"held": held}


def _same(a, b) -> None:
    assert a.list() == b.list()
    assert a.events() == b.events()
    assert a.agents() == b.agents()
    assert a.counts() == b.counts()


def test_migrate_copies_every_column_event_and_agent_and_the_queue_goes_on(tmp_path, pg_url):
    sqlite = IssueStore(tmp_path / "autopilot.db", host="ws1")
    held = _backlog(sqlite)["held"]
    pg = open_store(pg_url, host="ws9")

    copied = queuecopy.sqlite_to_pg(sqlite, pg)

    assert copied == {"issues": 5, "events": len(sqlite.events()), "agents": 2, "depends": 1, "paths": 1}
    assert [i.depends_on for i in pg.list()] == [[], [], [], [1], []]
    assert pg.get(5).paths == ["src/held/*.py"]
    _same(sqlite, pg)
    # the claims and agents stay the host's that made them, not the copying store's
    assert {i.host for i in pg.list()} == {"ws1", None} and {a.host for a in pg.agents()} == {"ws1"}
    assert {i.status for i in pg.list()} == {"done", "failed", "dead", "blocked", "claimed"}
    # the copied lease is the same lease: its holder (on ws1) finishes it on PostgreSQL; the
    # copying host ws9 cannot, even with the token (a claim is its own host's)
    with pytest.raises(LeaseLost):
        pg.complete(held.__class__(**{**held.__dict__}), {"branch": "b"}, now=T0 + 20)
    with open_store(pg_url, host="ws1") as ws1:
        done = ws1.complete(held.__class__(**{**held.__dict__}), {"branch": "b"}, now=T0 + 20)
    assert (done.status, done.token) == ("done", held.token)
    # numbers and event ids go on after the copied ones
    assert pg.add("after the move").number == 6
    assert pg.events()[-1].id > sqlite.events()[-1].id
    sqlite.close()
    pg.close()


def test_migrate_refuses_a_non_empty_target_and_changes_nothing(tmp_path, pg_url):
    sqlite = IssueStore(tmp_path / "autopilot.db")
    sqlite.add("one")
    pg = open_store(pg_url)
    pg.add("already here")
    before = (pg.list(), pg.events())
    with pytest.raises(Conflict, match=r"is not empty \(1 issues"):
        queuecopy.sqlite_to_pg(sqlite, pg)
    assert (pg.list(), pg.events()) == before


def test_migrate_of_a_large_backlog_reports_progress_and_is_all_or_nothing(tmp_path, pg_url):
    sqlite = IssueStore(tmp_path / "autopilot.db")
    sqlite.add_many([{"title": f"issue {i}"} for i in range(450)])
    pg = open_store(pg_url)

    def interrupted(table, done, total):
        if done == 300:
            raise KeyboardInterrupt  # the operator's Ctrl-C in the middle of the copy

    with pytest.raises(KeyboardInterrupt):
        queuecopy.sqlite_to_pg(sqlite, pg, interrupted, chunk=100)
    assert pg.counts() == open_store(tmp_path / "empty").counts() and pg.events() == []  # nothing half-done

    seen = []
    queuecopy.sqlite_to_pg(sqlite, pg, lambda table, done, total: seen.append((table, done, total)), chunk=100)
    assert [s for s in seen if s[0] == "issues"] == [("issues", n, 450) for n in (100, 200, 300, 400, 450)]
    assert len(pg.list()) == 450


def test_backup_of_a_postgresql_queue_is_a_sqlite_queue_with_the_same_backlog(tmp_path, pg_url):
    pg = open_store(pg_url, host="ws1")
    _backlog(pg)
    pg.backup(tmp_path / "backup.db")
    with IssueStore(tmp_path / "backup.db", host="ws9") as copy:
        _same(pg, copy)
        assert {i.host for i in copy.list()} == {"ws1", None} and {a.host for a in copy.agents()} == {"ws1"}
    with pytest.raises(Conflict, match="exists"):
        pg.backup(tmp_path / "backup.db")


PROGRAM = shutil.which("parallel-autopilot")


def _run(repo, *args, env=None):
    return subprocess.run([PROGRAM, *args], cwd=repo, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.skipif(PROGRAM is None, reason="the console program is not installed (pip install -e .)")
def test_issues_migrate_task_copies_once_then_refuses_in_one_line_and_never_prints_a_password(git_repo, pg_url):
    for title in ("first", "second"):
        assert _run(git_repo, "issues.add", "--title", title).returncode == 0
    # trust authentication ignores the password: it is here only to be kept out of the output
    secret_url = pg_url.replace("postgres@", "postgres:s3cr3t@")

    proc = _run(git_repo, "issues.migrate", "--to", secret_url, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["issues"], report["events"], report["agents"]) == (2, 2, 0)
    assert "s3cr3t" not in proc.stdout + proc.stderr and report["to"] == pg_url
    with open_store(pg_url) as pg:
        assert [i.title for i in pg.list()] == ["first", "second"]

    again = _run(git_repo, "issues.migrate", "--to", secret_url)
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 4 and len(lines) == 1 and "not empty" in lines[0], again.stderr
    assert "Traceback" not in again.stderr and "s3cr3t" not in again.stderr + again.stdout

    bad = _run(git_repo, "issues.migrate", "--to", "mysql://root:s3cr3t@db/x")
    assert bad.returncode == 2 and "postgresql://" in bad.stderr and "s3cr3t" not in bad.stderr


@pytest.mark.skipif(PROGRAM is None, reason="the console program is not installed (pip install -e .)")
def test_issues_migrate_shows_progress_of_a_large_backlog_on_stderr(git_repo, pg_url):
    with IssueStore(git_repo / ".autopilot" / "autopilot.db") as lite:
        lite.add_many([{"title": f"issue {i}"} for i in range(queuecopy.CHUNK + 1)])
    proc = _run(git_repo, "issues.migrate", "--to", pg_url, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["issues"] == queuecopy.CHUNK + 1  # stdout stays JSON
    total = queuecopy.CHUNK + 1
    assert proc.stderr.splitlines() == [f"issues: {queuecopy.CHUNK}/{total}", f"issues: {total}/{total}",
                                        f"events: {queuecopy.CHUNK}/{total}", f"events: {total}/{total}"]
