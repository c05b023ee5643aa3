"""The database must never be lost: a damaged or foreign file is ONE line, and is never written.

Each way of damaging ``.autopilot/autopilot.db`` (garbage, truncated, zero-length where
snapshots exist, a WAL of another database) against each entry point that opens the
store: the issues.* tasks, agents.*, the GUI (its task and its API), the console program
run as ``python3 -m``, and the in-container runtime at boot. Every one must exit with
DatabaseDamaged's code, print one line naming the file and the fix, show no traceback,
and leave every byte of the state directory as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import parallel_autopilot
from parallel_autopilot import issues
from parallel_autopilot.issues import snapshots
from parallel_autopilot.issues import sqlite as sqlitestore
from parallel_autopilot.issues import IssueStore
from parallel_autopilot.errors import DatabaseDamaged

ROOT = Path(parallel_autopilot.__file__).resolve().parent.parent
PROGRAM = shutil.which("parallel-autopilot")
CODE = DatabaseDamaged.exit_code
BOOT = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
        "runpy.run_module('parallel_autopilot.runtime', run_name='__main__', alter_sys=True)")


def _garbage(db: Path, tmp: Path) -> None:
    db.write_bytes(os.urandom(db.stat().st_size))


def _truncated(db: Path, tmp: Path) -> None:
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])


def _zero_length(db: Path, tmp: Path) -> None:
    db.write_bytes(b"")


def _foreign_wal(db: Path, tmp: Path) -> None:
    other = IssueStore(tmp / "other" / "autopilot.db")
    other.add("an issue of another queue")
    shutil.copyfile(f"{other.path}-wal", f"{db}-wal")  # while it is open: its WAL holds its pages
    other.close()


DAMAGE = {"garbage": _garbage, "truncated": _truncated, "zero-length": _zero_length,
          "foreign-wal": _foreign_wal}


def _state(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(params=sorted(DAMAGE))
def damaged_repo(request, git_repo, tmp_path):
    """A repository whose queue (20 issues, one snapshot) was then damaged one way."""
    db = git_repo / ".autopilot" / "autopilot.db"
    store = IssueStore(db)
    store.add_many([{"title": f"issue {i} " + "x" * 300} for i in range(20)])
    snapshots.take(store)
    store.close()
    assert not Path(f"{db}-wal").exists()  # closed cleanly: the whole database is in the file
    DAMAGE[request.param](db, tmp_path)
    before = _state(db.parent)
    yield git_repo, db
    assert _state(db.parent) == before, "the damaged database (or its directory) was written to"


def _one_line(proc: subprocess.CompletedProcess, db: Path) -> str:
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    assert proc.returncode == CODE, output
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert str(db) in lines[0] and ("issues.restore" in lines[0] or "aside" in lines[0]), lines[0]
    return lines[0]


def _program(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROGRAM, *args], cwd=repo, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(PROGRAM is None, reason="the console program is not installed (pip install -e .)")
@pytest.mark.parametrize("args", [
    ("issues.list",), ("issues.add", "--title", "new work"), ("issues.import", "backlog.yaml"),
    ("issues.show", "1"), ("issues.retry", "1"), ("issues.backup",),
], ids=lambda a: a[0])
def test_issue_tasks_refuse_a_damaged_database_in_one_line(damaged_repo, args):
    repo, db = damaged_repo
    (repo / "backlog.yaml").write_text("- title: from a file\n")
    line = _one_line(_program(repo, *args), db)
    assert line.startswith(f"error: {db} ")


def test_the_console_program_as_a_module_refuses_in_one_line(damaged_repo):
    repo, db = damaged_repo
    proc = subprocess.run([sys.executable, "-m", "parallel_autopilot", "issues.list"], cwd=repo,
                          capture_output=True, text=True, timeout=120)
    _one_line(proc, db)


@pytest.mark.skipif(PROGRAM is None, reason="the console program is not installed (pip install -e .)")
def test_the_gui_refuses_to_start_on_a_damaged_database(damaged_repo):
    repo, db = damaged_repo
    _one_line(_program(repo, "gui", "--port", "0"), db)


def test_the_runtime_refuses_at_boot_with_one_line(damaged_repo, tmp_path):
    repo, db = damaged_repo
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "AUTOPILOT_AGENT_ID": "agent-001", "AUTOPILOT_DB": str(db), "AUTOPILOT_WORKSPACE": str(repo),
           "AUTOPILOT_LOGS": str(tmp_path / "logs"), "AUTOPILOT_AGENT_KIND": "script",
           "AUTOPILOT_HEARTBEAT_FILE": str(tmp_path / "run" / "heartbeat"),
           "AUTOPILOT_CREDENTIALS": str(tmp_path / "credentials")}
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", BOOT, str(ROOT)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == CODE and "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    fatal = [line for line in proc.stdout.splitlines() if "cannot run" in line]
    assert len(fatal) == 1 and str(db) in fatal[0] and ("issues.restore" in fatal[0] or "aside" in fatal[0])


@pytest.mark.docker
@pytest.mark.skipif(PROGRAM is None, reason="the console program is not installed (pip install -e .)")
@pytest.mark.parametrize("args", [("agents.status",), ("agents.start", "--n", "1", "--no-wait")],
                         ids=lambda a: a[0])
def test_agent_tasks_refuse_a_damaged_database_in_one_line(damaged_repo, args):
    repo, db = damaged_repo
    _one_line(_program(repo, *args), db)


@pytest.mark.docker
def test_the_gui_api_names_the_damage_instead_of_failing(damaged_repo):
    from support.gui import TestClient, make_settings
    from parallel_autopilot.gui.app import create_app

    repo, db = damaged_repo
    with TestClient(create_app(make_settings(repo)), base_url="http://127.0.0.1") as client:
        snapshot = client.get("/api/snapshot").json()
        issues = client.get("/api/issues")
    assert any(str(db) in e and "left untouched" in e for e in snapshot["errors"]), snapshot["errors"]
    assert issues.status_code == 503 and str(db) in issues.json()["error"]


# -- snapshots and restore ----------------------------------------------------------

def test_restore_brings_back_every_issue_and_event_up_to_the_latest_snapshot(git_repo):
    db = git_repo / ".autopilot" / "autopilot.db"
    store = IssueStore(db)
    store.add_many([{"title": f"before {i}"} for i in range(5)])
    claim = store.claim("agent-001")
    store.complete(claim, {"branch": "autopilot/issue-1", "commit": "a" * 40, "duration": 1.0})
    store.block(3)
    snapshots.take(store, now=1_000.0)  # an older one, which restore must not pick
    store.add("between")
    latest = snapshots.take(store)
    issues, events = store.list(), store.events()
    store.add("after the snapshot")
    store.retry(3)
    store.close()
    _garbage(db, git_repo)
    damaged_bytes = db.read_bytes()

    proc = _program(git_repo, "issues.restore", "--json")
    assert proc.returncode == 0, proc.stderr
    back = IssueStore(db)
    assert back.list() == issues and back.events() == events
    assert Path(proc.stdout and __import__("json").loads(proc.stdout)["restored"]) == latest
    kept = [p for p in db.parent.iterdir() if p.name.startswith("autopilot.db.before-restore-")]
    assert [p.read_bytes() for p in kept] == [damaged_bytes]  # kept aside, never deleted


def test_restore_is_refused_while_agents_run(git_repo):
    from support.fleet_fakes import IMAGE_ID, FakeContainer, FakeDocker

    from parallel_autopilot import config, fleet
    from parallel_autopilot.tasks import issues as issue_tasks
    import invoke

    db = git_repo / ".autopilot" / "autopilot.db"
    store = IssueStore(db)
    store.add("keep me")
    snapshots.take(store)
    store.add("newer than the snapshot")
    store.close()
    # agent-001's container runs on a fake daemon (beside the real tests), in the invocation's Fleet
    docker = FakeDocker()
    the_fleet = fleet.Fleet.open(config.load(repo=str(git_repo)), docker=docker)
    running = FakeContainer(the_fleet.project, "agent-001", IMAGE_ID, time.time())
    docker.containers_by_name[running.name] = running
    with pytest.raises(invoke.Exit) as exc:
        issue_tasks.restore.body(invoke.Context(config=invoke.Config(overrides={"fleet": the_fleet})))
    assert exc.value.code == 4 and "agents.stop" in str(exc.value.message)
    assert len(IssueStore(db).list()) == 2


def test_snapshots_rotate_and_one_process_takes_a_due_one(tmp_path):
    store = IssueStore(tmp_path / "autopilot.db")
    store.add("x")
    for i in range(5):
        snapshots.take(store, keep=3, now=1_000.0 + i)
    assert [p.name for p in snapshots.list_snapshots(store.path)] == [
        "autopilot-19700101-001642-000.db", "autopilot-19700101-001643-000.db", "autopilot-19700101-001644-000.db"]
    assert snapshots.take_if_due(store, every=600, keep=3) is not None  # the newest is from 1970
    assert snapshots.take_if_due(store, every=600, keep=3) is None  # a fresh one exists


def test_a_zero_length_file_without_snapshots_is_a_new_queue(tmp_path):
    db = tmp_path / "autopilot.db"
    db.write_bytes(b"")  # what sqlite3.connect leaves when a process dies before its first write
    assert IssueStore(db).add("first").number == 1


def test_another_programs_sqlite_file_is_refused_and_not_written(tmp_path):
    import sqlite3

    db = tmp_path / "autopilot.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    with pytest.raises(DatabaseDamaged, match="not a parallel-autopilot database"):
        IssueStore(db)
    assert db.read_bytes() == before


def test_a_store_open_during_a_restore_follows_the_restored_file(tmp_path):
    """A long-running process (the GUI) must not keep reading, or writing, the file moved aside."""
    db = tmp_path / "autopilot.db"
    gui = IssueStore(db)
    gui.add("in the snapshot")
    snapshot = snapshots.take(gui)
    gui.add("after the snapshot")
    snapshots.restore(db, snapshot)
    assert [i.title for i in gui.list()] == ["in the snapshot"]
    gui.add("written after the restore")
    assert [i.title for i in IssueStore(db).list()] == ["in the snapshot", "written after the restore"]


def test_a_second_store_on_an_open_database_never_opens_the_file_itself(tmp_path, monkeypatch):
    # closing any descriptor of the file would drop the POSIX locks of the live connection
    path = tmp_path / "state" / "autopilot.db"
    first = IssueStore(path)
    first.add("kept")
    opened = []
    real_inspect = issues.inspect_file
    monkeypatch.setattr(sqlitestore, "inspect_file", lambda p: opened.append(p) or real_inspect(p))
    with first.transaction():  # holds SQLite's locks while the second store is made
        second = IssueStore(path)
    assert opened == []
    assert [i.title for i in second.list()] == ["kept"]
    first.close()
    second.close()
    IssueStore(path).close()  # no live connection left: inspected again
    assert opened == [path]
