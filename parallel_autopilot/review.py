"""Reviewing one issue's result: what the GUI's issue page shows, and what a reviewer decides.

The page of an issue (:func:`issue_page`): its fields, its timeline (the audit trail), each
attempt's log, the check's output, tokens and cost, and the diff of its commit against the
base it started from (:func:`issue_diff`), read from git through :mod:`parallel_autopilot.git`
(the commit is fetched from the agent's clone as the merge queue does, without writing a ref).
Everything here is agent-written text handed out as data: the edges show it escaped.

A reviewer's decisions are the store's verbs with an actor (``gui``, or ``cli:<user>``),
so the audit trail says who did it: ``send_back`` (the note is the next prompt's feedback),
``dismiss`` (rejected), and a merge, which is asked of the merge queue (:func:`request_merge`:
the queue still runs the check and still moves the base only to green).

    page = issue_page(settings, store, 7)       # {"issue", "timeline", "attempts", "diff", ...}
    report = request_merge(settings, store, 7, actor="gui")
"""

from __future__ import annotations

import getpass
import re
from pathlib import Path
from typing import Any, Callable

from .config import Settings
from .errors import Conflict, GitError, InvalidInput
from .git import Git, clones
from .issues import Issue, IssueStore

#: A file whose unified diff is longer than this many lines is sent folded (the page opens it on demand).
FOLD_LINES = 200
#: Beyond this many lines of diff in all, further files are named with their counts, without their patch.
MAX_DIFF_LINES = 5000
#: The end of each attempt's log that the page shows.
ATTEMPT_LOG_BYTES = 32768
#: Fields a newer backlog may add to an issue (dependencies, paths, budgets): shown when present.
EXTRA_FIELDS = ("depends_on", "paths", "budget", "budget_usd", "budget_tokens")

Progress = Callable[[str], None]


def cli_actor() -> str:
    """Who acts from a terminal: ``cli:<login name>`` (what the audit trail records)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (a container's uid)
        return "cli"


GUI_ACTOR = "gui"


def issue_number(value: Any) -> int:
    """A positive issue number (``42``, ``"42"`` or ``"#42"``), or InvalidInput: the CLI's one rule."""
    text = str(value).strip().lstrip("#")
    if isinstance(value, bool) or not (text.isascii() and text.isdigit()) or int(text) < 1 or len(text) > 18:
        raise InvalidInput(f"issue number {str(value)[:40]!r} is not a positive number: give e.g. 42 or #42")
    return int(text)


# -- the page ---------------------------------------------------------------------------

def issue_page(settings: Settings, store: IssueStore, number: int, *, diff: bool = True) -> dict:
    """Everything the issue page shows: ``issue``, ``extra``, ``timeline``, ``attempts``, ``check``, ``diff``."""
    issue = store.get(number)
    data = issue.to_dict()
    extra = {k: data[k] for k in EXTRA_FIELDS if data.get(k) not in (None, "", [], {})}
    waits = getattr(store, "waits", None)  # why it cannot start now (the backlog's dependencies, paths)
    if callable(waits) and issue.status in ("ready", "failed"):
        why = waits().get(issue.number)
        if why:
            extra["waiting"] = why
    return {
        "issue": data,
        "extra": extra,
        "timeline": [{"at": e.at, "kind": e.kind, "who": e.worker, "token": e.token, "detail": e.detail}
                     for e in store.events(issue.number)],
        "attempts": attempt_logs(settings, issue.number),
        "check": {"status": issue.check_status, "duration": issue.check_duration, "output": issue.check_output},
        "usage": issue.usage,
        "diff": issue_diff(settings, store, issue) if diff else None,
    }


_ATTEMPT = re.compile(r"issue-(\d+)-attempt-(\d+)\.log")


def attempt_logs(settings: Settings, number: int) -> list[dict]:
    """Each attempt's log on this host (its end), by attempt then agent."""
    found = []
    root = settings.logs_path / "agents"
    for path in sorted(root.glob(f"agent-*/issue-{int(number)}-attempt-*.log")):
        match = _ATTEMPT.fullmatch(path.name)
        if not match or int(match.group(1)) != number or path.is_symlink():
            continue
        text, size = _read_end(path, ATTEMPT_LOG_BYTES)
        found.append({"agent": path.parent.name, "attempt": int(match.group(2)), "size": size,
                      "truncated": size > ATTEMPT_LOG_BYTES, "log": text})
    return sorted(found, key=lambda a: (a["attempt"], a["agent"]))


def _read_end(path: Path, limit: int) -> tuple[str, int]:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", "replace"), size
    except OSError:
        return "", 0


def issue_diff(settings: Settings, store: IssueStore, issue: Issue, *, git: Git | None = None,
               fold_lines: int = FOLD_LINES, max_lines: int = MAX_DIFF_LINES) -> dict:
    """The diff of ``issue``'s commit against the base it started from, per file.

    ``from``: where the agent started, the merge-base of its commit with the base (for a merged
    issue, with the base as it was before the merge). Each file: ``path``, ``added``, ``deleted``,
    ``binary`` (named, no patch), ``patch`` (unified), ``folded`` (long: shown closed),
    ``omitted`` (past ``max_lines`` in all: counted, not sent). ``error``: why there is no diff.
    """
    from .merge.queue import fetch_issue

    git = git or Git(settings.repo)
    base = clones.base_branch(settings, git)
    out: dict[str, Any] = {"base": base, "from": None, "to": issue.commit, "files": [], "error": None,
                           "added": 0, "deleted": 0}
    if not issue.commit:
        out["error"] = "no commit recorded (the issue has no result yet)"
        return out
    try:
        missing = fetch_issue(settings, git, issue, write_refs=False)
        if missing is not None:
            out["error"] = f"commit {issue.commit[:12]} is not here (looked in {missing})"
            return out
        against = f"{issue.merge_commit}^1" if issue.merge_commit and git.has_commit(issue.merge_commit) \
            else f"refs/heads/{base}"
        start = git.merge_base(issue.commit, against)
        if start is None:
            out["error"] = f"commit {issue.commit[:12]} shares no history with {base}"
            return out
        out["from"] = start
        shown = 0
        for added, deleted, path in git.diff_numstat(start, issue.commit):
            entry = {"path": path, "added": added, "deleted": deleted, "binary": added is None,
                     "patch": None, "folded": False, "omitted": False}
            out["added"] += added or 0
            out["deleted"] += deleted or 0
            if not entry["binary"]:
                if shown >= max_lines:
                    entry["omitted"] = True
                else:
                    patch = git.diff_patch(start, issue.commit, path)
                    lines = patch.count("\n")
                    shown += lines
                    entry["patch"] = patch
                    entry["folded"] = lines > fold_lines
            out["files"].append(entry)
    except GitError as err:
        out["error"] = str(err)
    return out


# -- a reviewer's decisions ----------------------------------------------------------------

def request_merge(settings: Settings, store: IssueStore, number: int, *, actor: str, dry_run: bool = False,
                  progress: Progress = lambda _: None, runner: Any = None) -> dict:
    """Hand one done issue to the merge queue (which runs the check and moves the base only to green).

    The request is in the audit trail (``merge-requested`` by ``actor``) before the queue runs;
    the queue's own events (merged, rejected) follow. Returns the queue's report as a dict.
    """
    from .merge.queue import MergeQueue

    issue = store.get(number)
    if issue.status != "done":
        raise Conflict(f"issue #{number} is {issue.status}: only a done issue can be merged "
                       "(send it back or retry it first)")
    store.record(number, "merge-requested" if not dry_run else "merge-dry-run", actor)
    report = MergeQueue(settings, store, progress=progress, runner=runner).run([number], dry_run=dry_run)
    return report.to_dict()


def record_merge_request(store: IssueStore, actor: str, numbers: list[int] | None = None,
                         dry_run: bool = False) -> list[int]:
    """Put "``actor`` asked the merge queue for these done issues" in the audit trail; their numbers."""
    wanted = None if numbers is None else set(numbers)
    asked = [i.number for i in store.list("done") if wanted is None or i.number in wanted]
    for number in asked:
        store.record(number, "merge-requested" if not dry_run else "merge-dry-run", actor)
    return asked


def run_merge_queue(settings: Settings, store: IssueStore, *, actor: str, dry_run: bool = False,
                    progress: Progress = lambda _: None, runner: Any = None) -> dict:
    """Run the merge queue once over every done issue, recorded as asked for by ``actor``."""
    from .merge.queue import MergeQueue

    record_merge_request(store, actor, dry_run=dry_run)
    return MergeQueue(settings, store, progress=progress, runner=runner).run(dry_run=dry_run).to_dict()


__all__ = ["issue_page", "issue_diff", "attempt_logs", "request_merge", "run_merge_queue", "record_merge_request",
           "cli_actor",
           "GUI_ACTOR", "issue_number", "FOLD_LINES", "MAX_DIFF_LINES"]
