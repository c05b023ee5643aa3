"""``issues.*``: add, import, list, show, retry, block and migrate issues in the shared queue."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .. import fleet, issues, review
from ..config import Settings, redact_url
from ..errors import Conflict, DockerUnavailable, InvalidInput
from ..issues import IssueStore, issuefile, snapshots
from .edge import Namespace, echo, emit_json, fleet_of, print_table, settings, task

INTERACTIVE_RECONNECT_SECONDS = 15.0


def interactive_store(s: Settings) -> IssueStore:
    """``fleet.store_for(s)`` (the orchestrator's store: PostgreSQL when ``autopilot.queue`` is a
    URL, else SQLite) for a person who waits: a server that is away is said within seconds."""
    return fleet.store_for(s, reconnect_seconds=INTERACTIVE_RECONNECT_SECONDS if s.queue else None)


def store_of(c) -> IssueStore:
    """The store of this invocation: its settings' :func:`interactive_store`."""
    return interactive_store(settings(c))


@task(help={
    "title": "one-line title (required)",
    "body": "longer description given to the agent",
    "priority": "urgent, high, medium (default) or low",
    "script": "shell script an agent of kind 'script' runs in its worktree",
    "max_attempts": "attempts before the issue is dead (default: autopilot.max_attempts)",
    "check": "this issue's check command (default: autopilot.check), e.g. 'python -m pytest -q tests/test_x.py'",
    "after": "issue numbers it waits for, comma-separated (e.g. 3,7): it starts once each is merged",
    "paths": "globs of the files it touches, comma-separated (e.g. 'src/parser/*.py'): it does not run "
             "while an issue on overlapping paths is in flight",
    "budget_tokens": "stop an attempt past this many tokens: status over_budget (default: autopilot.budget_tokens)",
    "budget_usd": "stop an attempt past this cost in US dollars, where the CLI reports one (default: autopilot.budget_usd)",
    "json": "print the new issue as JSON",
})
def add(c, title, body="", priority="medium", script=None, max_attempts=None, check=None, paths=None,
        after=None, budget_tokens=None, budget_usd=None, json=False):  # paths before after: short flags -a, -f
    """Add one issue to the queue."""
    attempts = _number(max_attempts, "max-attempts") if max_attempts is not None else None
    before = [_number(n.strip(), "after") for n in str(after).split(",") if n.strip()] if after else []
    globs = [p.strip() for p in str(paths).split(",") if p.strip()] if paths else []
    tokens = _number(budget_tokens, "budget-tokens") if budget_tokens is not None else None
    try:
        usd = float(budget_usd) if budget_usd is not None else None
    except ValueError:
        raise InvalidInput(f"budget-usd {budget_usd!r} is not a number: give e.g. 2.50") from None
    fields = {"title": title, "body": body, "priority": priority, "script": script, "max_attempts": attempts,
              "check": check, "depends_on": before, "paths": globs}
    fields.update({k: v for k, v in (("budget_tokens", tokens), ("budget_usd", usd)) if v is not None})
    issue = store_of(c).add_many([fields], actor=review.cli_actor())[0]
    if json:
        emit_json(issue.to_dict())
    else:
        echo(f"added #{issue.number} [{issue.priority}] {issue.title}")


@task(name="import", help={"file": "a YAML or JSON list of issues (title, body, priority, script, check, max_attempts, "
                                   "number, key, depends_on, paths)",
                           "json": "print the imported issues as JSON"})
def import_(c, file, json=False):
    """Import issues from a file: all of them, or none if any is malformed."""
    items = issuefile.load(Path(file))
    added = store_of(c).add_many(items, actor=review.cli_actor())
    if json:
        emit_json([i.to_dict() for i in added])
    else:
        echo(f"imported {len(added)} issue(s): #{added[0].number}..#{added[-1].number}" if added
             else "imported 0 issues (the file holds an empty list)")


@task(name="list", help={"status": "only this status: ready, claimed, done (checked, waiting for the merge "
                                   "queue), merged, rejected, empty (changed nothing), failed, dead or blocked",
                         "json": "machine-readable output"})
def list_(c, status=None, json=False):
    """List issues with status, priority, attempts, owner, check result and merge commit."""
    store = store_of(c)
    issues = store.list(status)
    waits = store.waits()
    if json:
        emit_json([{**i.to_dict(), "waiting": waits.get(i.number)} for i in issues])
        return
    print_table(
        [(f"#{i.number}", i.status, i.priority, f"{i.attempts}/{i.max_attempts}", i.owner or "",
          i.branch or "", _check(i), (i.merge_commit or "")[:10], tokens(i.usage),
          ",".join(f"#{n}" for n in i.depends_on), i.title[:60]) for i in issues],
        ["issue", "status", "priority", "attempts", "agent", "branch", "check", "merged as", "tokens in/out",
         "after", "title"],
    )
    for i in issues:
        if i.number in waits:
            echo(f"#{i.number} {waits[i.number]}")
    counts = store.counts()
    echo(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no issues")


def tokens(usage: dict | None, long: bool = False) -> str:
    """A model usage dict in words: ``2400/68`` (table) or ``2400 in, 68 out, $0.0137`` (show)."""
    if not usage:
        return ""
    if not long:
        return f"{usage.get('input_tokens', 0)}/{usage.get('output_tokens', 0)}"
    cost = usage.get("cost_usd")
    return (f"{usage.get('input_tokens', 0)} tokens in, {usage.get('output_tokens', 0)} out"
            + (f", ${cost:.4f}" if cost else ""))


@task(help={"number": "the issue number", "json": "machine-readable output"})
def show(c, number, json=False):
    """Show one issue in full, with its event history."""
    store = store_of(c)
    issue = store.get(_number(number))
    events = store.events(issue.number)
    waiting = store.waits().get(issue.number)
    if json:
        emit_json({**issue.to_dict(), "waiting": waiting, "events": [e.to_dict() for e in events]})
        return
    now = time.time()
    for key, value in {**issue.to_dict(), "waiting": waiting}.items():
        if key == "usage" and value:
            value = tokens(value, long=True)
        if key == "depends_on" and value:
            value = ", ".join(f"#{n}" for n in value)
        if key == "paths" and value:
            value = ", ".join(value)
        if value not in (None, "", []):
            echo(f"{key:>14}: {_shown(key, value, now)}")
    echo("        events:")
    for e in events:
        echo(f"   {local_time(e.at)} {e.kind:<16} {e.worker or '':<10} token={e.token} {e.detail or ''}".rstrip())


#: Issue fields that are epoch seconds, and those that are durations (--json keeps the numbers).
TIME_FIELDS = ("due_at", "lease_until", "heartbeat_at", "claimed_at", "created_at", "updated_at",
               "completed_at", "merged_at")
DURATION_FIELDS = ("duration", "check_duration")


def local_time(epoch: float) -> str:
    """``2026-12-01 19:02:03`` in the local time zone."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def duration(seconds: float) -> str:
    """``0.4s``, ``12.3s``, ``4m05s``, ``2h03m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m" if whole >= 3600 else f"{whole // 60}m{whole % 60:02d}s"


def _shown(key: str, value, now: float) -> str:
    if key in TIME_FIELDS and isinstance(value, (int, float)):
        delta = value - now
        when = f"in {duration(delta)}" if delta > 0.5 else ("now" if delta > -0.5 else f"{duration(-delta)} ago")
        return f"{local_time(value)} ({when})"
    if key in DURATION_FIELDS and isinstance(value, (int, float)):
        return duration(value)
    return str(value)


@task(help={"number": "the issue number"})
def retry(c, number):
    """Put a failed, dead, blocked, done, empty or rejected issue back in the queue with fresh attempts."""
    issue = store_of(c).retry(_number(number), actor=review.cli_actor())
    echo(f"#{issue.number} is {issue.status} again")


@task(help={"number": "the issue number"})
def block(c, number):
    """Keep an issue out of the queue until `issues.retry`."""
    issue = store_of(c).block(_number(number), actor=review.cli_actor())
    echo(f"#{issue.number} is {issue.status}")


@task(help={"number": "the issue number", "priority": "urgent, high, medium or low"})
def priority(c, number, priority):
    """Change an issue's priority (not while an agent holds it)."""
    issue = store_of(c).set_priority(_number(number), priority, actor=review.cli_actor())
    echo(f"#{issue.number} is {issue.priority}")


@task(name="send-back", help={"number": "the issue number",
                              "note": "what the next attempt should do differently (it is in its prompt)"})
def send_back(c, number, note):
    """Send a result back to the queue with a note for its next attempt's prompt."""
    issue = store_of(c).send_back(_number(number), note, actor=review.cli_actor())
    echo(f"#{issue.number} is {issue.status} again, with your note")


@task(help={"number": "the issue number", "note": "why (kept as its error)"})
def reject(c, number, note=""):
    """Reject a result for good (`issues.retry` brings it back)."""
    issue = store_of(c).dismiss(_number(number), note, actor=review.cli_actor())
    echo(f"#{issue.number} is {issue.status}")


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

    Exit codes: 0 all merged (or would merge), 20 nothing to do, 21 some rejected
    (red or conflicting; the others merged), 4 refused (another merge queue runs).
    """
    from ..merge import queue as mergequeue

    size = _number(batch, "batch") if batch is not None else None
    store = store_of(c)
    numbers = [_number(number)] if number else None
    review.record_merge_request(store, review.cli_actor(), numbers, dry_run=dry_run)  # who asked: the trail
    report = mergequeue.merge(settings(c), store, numbers,
                              dry_run=dry_run, batch=size, progress=(lambda _: None) if json else echo)
    emit_json(report.to_dict()) if json else echo(report.summary())
    if report.exit_code:
        from invoke import Exit

        raise Exit(code=report.exit_code)


@task(help={"keep": f"snapshots kept, oldest dropped first (default {snapshots.KEEP})",
            "json": "print the snapshot as JSON"})
def backup(c, keep=None, json=False):
    """Snapshot the database now (safe while agents run), after PRAGMA quick_check."""
    store = store_of(c)
    store.quick_check()
    path = snapshots.take(store, keep=_number(keep, "keep") if keep is not None else snapshots.KEEP)
    counts = snapshots.check(path)
    if json:
        emit_json({"snapshot": str(path), **counts})
    else:
        echo(f"snapshot {path} ({counts['issues']} issues, {counts['events']} events)")


@task(help={"snapshot": "file name in <state_dir>/snapshots or a path (default: the latest)",
            "json": "print the result as JSON"})
def restore(c, snapshot=None, json=False):
    """Bring back a snapshot of the database (refused while agents run; the current file is kept aside)."""
    the_fleet = fleet_of(c)
    s = the_fleet.settings
    path = snapshots.resolve(s.db_path, snapshot)
    try:
        running = the_fleet.running_agent_ids()
    except DockerUnavailable:
        running = []  # no daemon: no agent of this machine can be running
    if running:
        raise Conflict(f"agents are running ({', '.join(running)}): stop them first with "
                       "`parallel-autopilot agents.stop`, then restore")
    fleet.close_store(s)
    result = snapshots.restore(s.db_path, path)
    if json:
        emit_json(result)
        return
    aside = f"; the previous file is kept as {result['kept_aside'][0]}" if result["kept_aside"] else ""
    echo(f"restored {s.db_path} from {path.name} ({result['issues']} issues, {result['events']} events){aside}")


@task(help={"to": "the PostgreSQL queue to fill: postgresql://user@host/db (must be empty)",
            "json": "print what was copied as JSON"})
def migrate(c, to, json=False):
    """Copy this repository's SQLite backlog (issues, events, agents) into an empty PostgreSQL queue, once."""
    from ..issues import transfer

    if not issues.is_url(to):
        raise InvalidInput(f"--to {redact_url(str(to))!r} is not a postgresql:// URL: give postgresql://user@host/db")
    s = settings(c)
    if not s.db_path.exists():
        raise InvalidInput(f"no SQLite backlog at {s.db_path}: run this in the repository whose queue to copy")
    source = IssueStore(s.db_path)
    target = issues.open_store(to)
    shown: dict[str, int] = {}

    def progress(table_name: str, done: int, total: int) -> None:
        # large backlogs: a line per chunk, on stderr so --json stays parseable
        if total > transfer.CHUNK and shown.get(table_name) != done:
            shown[table_name] = done
            echo(f"{table_name}: {done}/{total}", file=sys.stderr, flush=True)

    try:
        copied = transfer.sqlite_to_pg(source, target, progress)
    finally:
        source.close()
        target.close()
    report = {"from": str(s.db_path), "to": target.url, **copied}
    if json:
        emit_json(report)
    else:
        echo(f"copied {copied['issues']} issue(s), {copied['events']} event(s), {copied['agents']} agent(s) "
             f"from {s.db_path} to {target.url}; set autopilot.queue to it to use it")


@task(help={"since": "from when: 12h, 30m, 2d (ago) or 2026-12-03T08:00 (default: the first event)",
            "format": "md (default), html (with a plot) or json",
            "output": "write it to this file instead of printing it"})
def report(c, since=None, format="md", output=None):  # noqa: A002 - the flag is --format
    """The morning report: merged, rejected and why, dead, open; tokens, cost, agents' time, failure causes."""
    from .. import report as reports

    now = time.time()
    s = settings(c)
    data = reports.build(store_of(c), since=reports.parse_since(since, now), now=now, logs_path=s.logs_path)
    text = reports.render(data, str(format))
    if output:
        Path(output).write_text(text, encoding="utf-8")
        echo(f"wrote {output}")
    elif format == "json":
        emit_json(data)  # JSON escapes agent-written text itself
    else:
        echo(text.rstrip("\n"))


ns = Namespace("issues")
for t in (add, import_, list_, show, retry, block, priority, send_back, reject, merge, report, backup, restore,
          migrate):
    ns.add_task(t)
