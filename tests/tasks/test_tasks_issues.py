"""``issues.*`` through the real console program, run in a temporary git repository.

Expected failures must print ONE line, exit non-zero and show no traceback.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from parallel_autopilot.issues import IssueStore

PROGRAM = shutil.which("parallel-autopilot")
pytestmark = pytest.mark.skipif(PROGRAM is None, reason="the console program is not installed (pip install -e .)")


def run(repo, *args):
    """Run ``parallel-autopilot ARGS`` in ``repo``; return the CompletedProcess."""
    return subprocess.run([PROGRAM, *args], cwd=repo, capture_output=True, text=True, timeout=60)


def ok(repo, *args):
    proc = run(repo, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def refused(repo, *args, code=None):
    """Run a command that must fail: one line on stderr, no traceback; return that line."""
    proc = run(repo, *args)
    assert proc.returncode != 0, proc.stdout
    if code is not None:
        assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def db(repo):
    return IssueStore(repo / ".autopilot" / "autopilot.db")


def test_add_list_and_show(git_repo):
    assert ok(git_repo, "issues.add", "--title", "Fix the parser", "--priority", "high",
              "--script", "make fix") == "added #1 [high] Fix the parser\n"
    added = json.loads(ok(git_repo, "issues.add", "--title", "Docs", "--body", "Write them",
                          "--max-attempts", "5", "--json"))
    assert (added["number"], added["max_attempts"], added["body"]) == (2, 5, "Write them")

    listed = json.loads(ok(git_repo, "issues.list", "--json"))
    assert [(i["number"], i["title"], i["priority"], i["status"], i["script"]) for i in listed] == [
        (1, "Fix the parser", "high", "ready", "make fix"), (2, "Docs", "medium", "ready", None)]
    assert json.loads(ok(git_repo, "issues.list", "--status", "done", "--json")) == []
    table = ok(git_repo, "issues.list")
    assert "Fix the parser" in table and table.rstrip().endswith("2 ready")

    shown = json.loads(ok(git_repo, "issues.show", "1", "--json"))
    assert shown["title"] == "Fix the parser" and [e["kind"] for e in shown["events"]] == ["added"]
    text = ok(git_repo, "issues.show", "#2")
    assert "title: Docs" in text and "added" in text
    # the database lives in the repository's state directory
    assert [i.title for i in db(git_repo).list()] == ["Fix the parser", "Docs"]


@pytest.mark.parametrize("args, code, words", [
    (("issues.list", "--status", "bogus"), 2, "unknown status 'bogus'"),
    (("issues.show", "99"), 3, "no issue #99"),
    (("issues.show", "abc"), 2, "not a positive number"),
    (("issues.retry", "99"), 3, "no issue #99"),
    (("issues.block", "99"), 3, "no issue #99"),
    (("issues.add", "--title", "x", "--priority", "asap"), 2, "priority 'asap'"),
    (("issues.add", "--title", "x", "--max-attempts", "abc"), 2, "max-attempts 'abc'"),
    (("issues.add", "--title", "   "), 2, "'title' is required"),
])
def test_bad_input_is_one_line_and_a_nonzero_exit(git_repo, args, code, words):
    assert words in refused(git_repo, *args, code=code)
    assert not db(git_repo).list()


def test_outside_a_git_repository_is_one_line(tmp_path):
    assert "not inside a git repository" in refused(tmp_path, "issues.list")


def test_import_a_good_file_then_a_malformed_one(git_repo):
    good = git_repo / "issues.yaml"
    good.write_text("- title: one\n  priority: urgent\n- title: two\n- title: three\n  max_attempts: 1\n")
    assert ok(git_repo, "issues.import", str(good)) == "imported 3 issue(s): #1..#3\n"
    as_json = git_repo / "more.json"
    as_json.write_text('[\n\t{"title": "four"},\n\t{"title": "five", "priority": "low"}\n]\n')
    imported = json.loads(ok(git_repo, "issues.import", str(as_json), "--json"))
    assert [(i["number"], i["title"]) for i in imported] == [(4, "four"), (5, "five")]

    bad = git_repo / "bad.yaml"  # the bad item is the LAST: nothing before it may land
    bad.write_text("- title: six\n- title: seven\n- title: eight\n  priority: soon\n")
    line = refused(git_repo, "issues.import", str(bad), code=2)
    assert line.startswith(f"error: {bad}:4: ") and "nothing imported" in line
    broken = git_repo / "broken.json"
    broken.write_text('[{"title": "nine"},\n {"title": "ten"\n')
    assert f"{broken}:" in refused(git_repo, "issues.import", str(broken), code=2)
    assert "no such file" in refused(git_repo, "issues.import", str(git_repo / "missing.yaml"))

    assert [i.title for i in db(git_repo).list()] == ["one", "two", "three", "four", "five"]


def test_import_into_an_empty_queue_refuses_a_bad_last_item(git_repo):
    bad = git_repo / "bad.yaml"
    bad.write_text("- title: a\n- title: b\n- title: c\n  colour: blue\n")
    assert f"{bad}:4:" in refused(git_repo, "issues.import", str(bad))
    assert sum(db(git_repo).counts().values()) == 0


def test_retry_and_block(git_repo):
    ok(git_repo, "issues.add", "--title", "flaky", "--max-attempts", "1")
    store = db(git_repo)
    store.fail(store.claim("agent-001"), "tests failed")
    assert store.get(1).status == "dead"

    assert ok(git_repo, "issues.retry", "1") == "#1 is ready again\n"
    issue = store.get(1)
    assert (issue.status, issue.attempts, issue.error) == ("ready", 0, None)
    assert ok(git_repo, "issues.block", "#1") == "#1 is blocked\n"
    assert store.claim("agent-001") is None
    assert ok(git_repo, "issues.retry", "1") == "#1 is ready again\n"

    store.claim("agent-002")
    assert "claimed by agent-002" in refused(git_repo, "issues.block", "1", code=4)
    assert "claimed by agent-002" in refused(git_repo, "issues.retry", "1", code=4)
    kinds = [e["kind"] for e in json.loads(ok(git_repo, "issues.show", "1", "--json"))["events"]]
    assert kinds == ["added", "claimed", "dead", "retry", "block", "retry", "claimed"]


def test_review_verbs_and_the_report_from_the_cli_are_audited_as_the_cli_user(git_repo):
    import getpass

    ok(git_repo, "issues.add", "--title", "one")
    ok(git_repo, "issues.add", "--title", "two")
    store = db(git_repo)
    assert ok(git_repo, "issues.priority", "1", "urgent") == "#1 is urgent\n"
    assert "priority 'soon' is not one of" in refused(git_repo, "issues.priority", "1", "soon")
    for number in (1, 2):
        store.complete(store.claim("agent-001"), {"branch": f"autopilot/issue-{number}", "commit": "c" * 40})
    assert "needs a note" in refused(git_repo, "issues.send-back", "1", "--note", " ")
    assert ok(git_repo, "issues.send-back", "1", "--note", "add a test") == "#1 is ready again, with your note\n"
    assert store.get(1).feedback == "add a test"
    assert ok(git_repo, "issues.reject", "2", "--note", "not wanted") == "#2 is rejected\n"
    me = f"cli:{getpass.getuser()}"
    assert [(e.kind, e.worker) for e in store.events(1)] == [
        ("added", me), ("priority", me), ("claimed", "agent-001"), ("done", "agent-001"), ("sent-back", me)]
    assert [(e.kind, e.worker) for e in store.events(2)][-1] == ("rejected", me)
    data = json.loads(ok(git_repo, "issues.report", "--format", "json"))
    assert [r["number"] for r in data["rejected"]] == [2] and data["still_open"] == [1]
    assert "rejected: 1" in ok(git_repo, "issues.report", "--since", "1h")
    ok(git_repo, "issues.report", "--format", "html", "--output", "night.html")
    assert "<svg" in (git_repo / "night.html").read_text()
    assert "is not a time" in refused(git_repo, "issues.report", "--since", "yesterday")
    # the merge queue, asked from the CLI: who asked is in the trail before what the queue did
    claim = store.claim("agent-001")  # #1, sent back, again
    three = claim.number
    store.complete(claim, {"branch": f"autopilot/issue-{three}", "commit": "e" * 40})
    assert run(git_repo, "issues.merge").returncode == 21  # its commit is nowhere: rejected
    assert [(e.kind, e.worker) for e in store.events(three)][-2:] == [("merge-requested", me),
                                                                      ("rejected", "merge-queue")]


def test_dependencies_and_paths_through_the_program(git_repo):
    """Issue 21: --after and --paths, shown by issues.list and issues.show; a bad one is one line."""
    ok(git_repo, "issues.add", "--title", "Model")
    ok(git_repo, "issues.add", "--title", "Other")
    added = json.loads(ok(git_repo, "issues.add", "--title", "Endpoint", "--after", "1,2",
                          "--paths", "src/api/*.py, docs/api.md", "--json"))
    assert (added["depends_on"], added["paths"]) == ([1, 2], ["src/api/*.py", "docs/api.md"])
    listed = {i["number"]: i for i in json.loads(ok(git_repo, "issues.list", "--json"))}
    assert listed[3]["waiting"] == "waiting for #1 (ready); waiting for #2 (ready)" and listed[1]["waiting"] is None
    table = ok(git_repo, "issues.list")
    assert "#1,#2" in table and "#3 waiting for #1 (ready)" in table
    shown = ok(git_repo, "issues.show", "3")
    assert "depends_on: #1, #2" in shown and "paths: src/api/*.py, docs/api.md" in shown
    assert "waiting: waiting for #1 (ready)" in shown

    line = refused(git_repo, "issues.add", "--title", "Orphan", "--after", "99")
    assert "depends on #99, which does not exist" in line and "nothing added" in line
    assert len(db(git_repo).list()) == 3


def test_import_refuses_a_cycle_in_one_line_with_nothing_imported(git_repo):
    path = git_repo / "cycle.yaml"
    path.write_text("- title: A\n  key: a\n  depends_on: [c]\n"
                    "- title: B\n  key: b\n  depends_on: [a]\n"
                    "- title: C\n  key: c\n  depends_on: [b]\n")
    line = refused(git_repo, "issues.import", str(path))
    assert "cycle" in line and "nothing imported" in line and "cycle.yaml:" in line
    assert db(git_repo).list() == []
    path.write_text("- title: A\n  key: a\n- title: B\n  depends_on: [a, 7]\n")
    line = refused(git_repo, "issues.import", str(path))
    assert "depends on #7, which does not exist" in line
    assert db(git_repo).list() == []
