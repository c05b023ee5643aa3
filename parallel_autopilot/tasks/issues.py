"""``issues.*``: add, import, list, show, retry and block issues in the shared queue."""

from __future__ import annotations

from pathlib import Path

from .. import fleet, issuefile
from ..errors import InvalidInput
from ..issues import IssueStore
from .edge import Namespace, emit_json, settings, table, task


def open_store(c) -> IssueStore:
    """The IssueStore of this invocation's settings (the same one the orchestrator uses)."""
    return fleet.open_store(settings(c))


@task(help={
    "title": "one-line title (required)",
    "body": "longer description given to the agent",
    "priority": "urgent, high, medium (default) or low",
    "script": "shell script an agent of kind 'script' runs in its worktree",
    "max_attempts": "attempts before the issue is dead (default: autopilot.max_attempts)",
    "check": "this issue's check command (default: autopilot.check), e.g. 'python -m pytest -q tests/test_x.py'",
    "json": "print the new issue as JSON",
})
def add(c, title, body="", priority="medium", script=None, max_attempts=None, check=None, json=False):
    """Add one issue to the queue."""
    attempts = _number(max_attempts, "max-attempts") if max_attempts is not None else None
    issue = open_store(c).add(title, body=body, priority=priority, script=script, max_attempts=attempts,
                              check=check)
    if json:
        emit_json(issue.to_dict())
    else:
        print(f"added #{issue.number} [{issue.priority}] {issue.title}")


@task(name="import", help={"file": "a YAML or JSON list of issues (title, body, priority, script, check, max_attempts, number)",
                           "json": "print the imported issues as JSON"})
def import_(c, file, json=False):
    """Import issues from a file: all of them, or none if any is malformed."""
    items = issuefile.load(Path(file))
    added = open_store(c).add_many(items)
    if json:
        emit_json([i.to_dict() for i in added])
    else:
        print(f"imported {len(added)} issue(s): #{added[0].number}..#{added[-1].number}" if added
              else "imported 0 issues (the file holds an empty list)")


@task(name="list", help={"status": "only this status: ready, claimed, done (checked, waiting for the merge "
                                   "queue), merged, rejected, empty (changed nothing), failed, dead or blocked",
                         "json": "machine-readable output"})
def list_(c, status=None, json=False):
    """List issues with status, priority, attempts, owner, check result and merge commit."""
    store = open_store(c)
    issues = store.list(status)
    if json:
        emit_json([i.to_dict() for i in issues])
        return
    print(table(
        [(f"#{i.number}", i.status, i.priority, f"{i.attempts}/{i.max_attempts}", i.owner or "",
          i.branch or "", _check(i), (i.merge_commit or "")[:10], i.title[:60]) for i in issues],
        ["issue", "status", "priority", "attempts", "agent", "branch", "check", "merged as", "title"],
    ))
    counts = store.counts()
    print(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no issues")


@task(help={"number": "the issue number", "json": "machine-readable output"})
def show(c, number, json=False):
    """Show one issue in full, with its event history."""
    store = open_store(c)
    issue = store.get(_number(number))
    events = store.events(issue.number)
    if json:
        emit_json({**issue.to_dict(), "events": [e.to_dict() for e in events]})
        return
    for key, value in issue.to_dict().items():
        if value not in (None, ""):
            print(f"{key:>13}: {value}")
    print("       events:")
    for e in events:
        print(f"   {e.at:.3f} {e.kind:<16} {e.worker or '':<10} token={e.token} {e.detail or ''}")


@task(help={"number": "the issue number"})
def retry(c, number):
    """Put a failed, dead, blocked, done, empty or rejected issue back in the queue with fresh attempts."""
    issue = open_store(c).retry(_number(number))
    print(f"#{issue.number} is {issue.status} again")


@task(help={"number": "the issue number"})
def block(c, number):
    """Keep an issue out of the queue until `issues.retry`."""
    issue = open_store(c).block(_number(number))
    print(f"#{issue.number} is {issue.status}")


def _number(value, what: str = "issue number") -> int:
    """A positive integer from the command line (``#42`` too), or InvalidInput."""
    text = str(value).strip().lstrip("#")
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise InvalidInput(f"{what} {value!r} is not a positive number: give e.g. 42"
                           + (" or #42" if what == "issue number" else ""))
    return int(text)


def _check(issue) -> str:
    if not issue.check_status:
        return ""
    return issue.check_status + (f" {issue.check_duration:.1f}s" if issue.check_duration is not None else "")


@task(help={"number": "merge only this issue (default: every done issue)",
            "dry_run": "build and check every candidate, say what WOULD merge, move no ref",
            "batch": "test this many issues stacked at once, bisect on red (default: autopilot.merge_batch)",
            "json": "print the report as JSON"})
def merge(c, number=None, dry_run=False, batch=None, json=False):
    """Run the merge queue: done issues onto the base, checked, only green commits; see the README.

    Exit codes: 0 all merged (or would merge), 13 nothing to do, 14 some rejected
    (red or conflicting; the others merged), 4 refused (another merge queue runs).
    """
    from .. import mergequeue

    size = _number(batch, "batch") if batch is not None else None
    report = mergequeue.merge(settings(c), open_store(c), [_number(number)] if number else None,
                              dry_run=dry_run, batch=size, progress=(lambda _: None) if json else print)
    emit_json(report.to_dict()) if json else print(report.summary())
    if report.exit_code:
        from invoke import Exit

        raise Exit(code=report.exit_code)


ns = Namespace("issues")
for t in (add, import_, list_, show, retry, block, merge):
    ns.add_task(t)
