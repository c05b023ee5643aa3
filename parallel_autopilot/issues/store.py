"""The issue queue's one skeleton: every verb, its rules, its messages and its SQL, written once.

(Open a queue with :func:`parallel_autopilot.issues.open_store`: it picks the
SQLite store (:mod:`.sqlite`) or the PostgreSQL one (:mod:`.postgres`); both are a
:class:`Store`.)

Standard library only: the same module runs on the host and in every agent
container.

The verbs, each next to its SQL::

    store = open_store(".autopilot")          # or a postgresql:// URL
    store.add("Fix the parser", priority="high", script="make fix-parser")
    claim = store.claim("agent-001")          # None when nothing is eligible
    claim = store.renew(claim)                # heartbeat: every lease/3
    store.complete(claim, {"branch": ..., "commit": ..., "duration": ...})
    store.fail(claim, "tests failed", feedback=...)  # retried after a backoff
    store.empty(claim, result)                # succeeded but changed nothing
    store.mark_merged(n, commit, merge_commit)  # the merge queue: done -> merged
    store.reject(n, commit, report, requeue)  # the merge queue: done -> rejected (or ready)
    store.release(claim)                      # graceful: not an attempt
    store.release_agent("agent-001")          # crash recovery: counts as one (this host's agent-001)
    store.add("Endpoint", depends_on=[3], paths=["src/api/*.py"])  # waits for #3's merge; kept apart
    store.add_paths(n, ["src/core.py"])       # the merge queue: the files a rejected issue conflicted in
    store.waits()                             # {number: why it cannot start now}

Defaults: a lease of 900 s (the design's 15 minutes), 3 attempts, a backoff of
30 s doubling per attempt, aging of 3600 s per priority step (:data:`AGING`).

The backlog's order (issue 21), one rule each, in SQL written once here
(:func:`startable`, :func:`claim_order`) that both backends' claims embed: an
issue starts only when every predecessor has landed (:data:`LANDED`) and no
other issue in flight touches an overlapping path (:data:`PATHS_OVERLAP`); the
best is the lowest ``rank * aging_seconds + created_at``.

Fencing. ``claim`` increments the issue's never-decreasing ``token``. ``renew``
acts only while ``token`` matches and the lease has not expired; ``complete``,
``fail`` and ``release`` only while ``token`` matches and the issue is still
claimed (an expired lease that nobody re-claimed can still be finished: its
holder is the only one with that token). A stale call changes nothing, appends
a ``refused-<verb>`` event and raises :class:`LeaseLost`.

Time is a parameter: every verb takes ``now`` (seconds since the epoch),
defaulting to the store's clock (PostgreSQL without a clock: the server's).
Times are stored as epoch seconds in floating point, so a comparison is a
comparison of numbers, never of differently formatted text.

Writes. A claim and each fenced verb is ONE ``UPDATE ... RETURNING`` statement;
the ``issues_transition`` trigger appends the audit event in that same
statement, so the write lock is held once and briefly. Reads that lead to writes
(imports, operator verbs, the stale-agent sweep) run in one transaction.

Hosts. An agent's identity is (host, id): agent ids repeat on every workstation
of a shared (PostgreSQL) queue. ``store.host`` is the machine whose agents the
store speaks for; a claim records it in ``issues.host``, the agents table is keyed
by (host, id), and release/stale detection only ever matches an agent's own host.

One statement, two dialects. The SQL here is written once where both engines
accept it (``CAST(:x AS bigint)`` and ``CAST(:x AS float8)`` are SQLite's INTEGER
and REAL by type affinity); two spellings differ and the backend gives them:
:attr:`Store.NOW`, the clock in a statement, and :attr:`Store.FOR_UPDATE`, the
row lock of a read inside a transaction. The claim is each backend's own
statement (SQLite walks its index in arms; PostgreSQL picks ``FOR UPDATE SKIP
LOCKED`` in one round trip), beside its ``_claim``.

A backend is a connector (as procrastinate's): it connects, migrates and runs
statements, nothing else. What it implements:

- ``_write(sql, params, verify=None)``: ONE write statement in its own
  transaction; its first returned row, or None. ``verify(run)`` says, after a
  lost reply, whether the write took effect (its row, or None: it did not), so
  that it is never sent twice blindly (PostgreSQL; SQLite loses no replies);
- ``_read(sql, params=())``: the rows of one statement;
- ``_atomic(work, once=False)``: ``work(run)`` in ONE transaction, where
  ``run(sql, params)`` returns a statement's rows; ``once``: a transaction whose
  COMMIT may have been lost is not repeated;
- ``_claim(worker, lease_seconds, now, stale_after)``: the claimed row, or None;
- ``close``, ``quick_check`` and ``backup``.

Rows are mappings of column to value (``sqlite3.Row`` or ``dict``).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..errors import BudgetSpent, Conflict, InvalidInput, IssueNotFound, LeaseLost, LoginParked
from . import forksafe
from .fields import PRIORITIES, check_order, literal_prefix, normalise_paths, validate_fields, validate_result
from .records import DEFAULT_AGING_SECONDS, DEFAULT_LEASE_SECONDS, STATUSES, AgentRow, Claim, Event, Issue, agent_key, issue_from_row
from .schema import one_of

Row = Mapping[str, Any]
#: ``run(sql, params)``: a statement's rows, inside a transaction or a verification.
Run = Callable[[str, Mapping[str, Any]], list]

#: Longest error, feedback and merge report kept on an issue (an agent's whole log is no error).
TEXT_LIMIT = 4000
#: Longest failure note in the audit trail (the event says what happened; the issue keeps the rest).
FAILURE_NOTE_LIMIT = 500
#: Longest merge report in a rejection's audit note.
REPORT_NOTE_LIMIT = 400

#: The longest a login is parked for one rate limit / quota (a week: weekly plan limits).
MAX_PARK_SECONDS = 7 * 86400

#: What ``retry`` and ``block`` may act on: an issue an agent holds is never taken from under it.
#: Issue 21. A predecessor has landed (its dependents may start) when merged, or empty
#: (it changed nothing: there is nothing to wait for).
LANDED = ("merged", "empty")
#: A predecessor that will not land without an operator: its dependents are "blocked by" it.
STUCK = ("dead", "rejected", "blocked")
#: In flight: another issue whose paths overlap is not claimed meanwhile.
IN_FLIGHT = ("claimed", "done")
#: Two paths overlap when one's literal prefix (before its first ``*?[``) starts with the
#: other's: every file both globs match starts with both prefixes, so the rule never
#: misses a real overlap (it may see one where no file matches both: conservative).
#: ``mine`` and ``theirs`` are rows of the ``paths`` table.
PATHS_OVERLAP = ("(substr(theirs.prefix, 1, length(mine.prefix)) = mine.prefix"
                 " OR substr(mine.prefix, 1, length(theirs.prefix)) = theirs.prefix)")
#: Aging. The claim takes the issue with the lowest rank × aging_seconds + created_at
#: (rank 0 urgent .. 3 low), then the lowest number: within a priority, oldest first;
#: across priorities, an issue of rank r added at t goes ahead of every issue added
#: after t + r × aging_seconds, whatever its priority. So a steady stream of new issues
#: holds an old one back at most rank × aging_seconds (3 × the default: 3 hours for a
#: low issue); after that only the issues added before that moment are still ahead of it.
AGING = "rank * aging_seconds + created_at"

def startable(i: str) -> str:
    """SQL, written once for both claims: issue ``i`` may start now - every predecessor
    has landed (:data:`LANDED`), and no OTHER issue in flight (:data:`IN_FLIGHT`)
    touches a path that overlaps one of ``i``'s (:data:`PATHS_OVERLAP`). The first test of
    the paths (has ``i`` any?) keeps PostgreSQL's planner from scanning the issues in flight
    for every claim of an issue without paths."""
    return f"""NOT EXISTS (SELECT 1 FROM depends dep JOIN issues pre ON pre.number = dep.predecessor
                           WHERE dep.issue = {i}.number AND pre.status NOT IN {one_of(LANDED)})
           AND (NOT EXISTS (SELECT 1 FROM paths own WHERE own.issue = {i}.number)
                OR NOT EXISTS (SELECT 1 FROM paths mine
                               JOIN paths theirs ON theirs.issue <> mine.issue AND {PATHS_OVERLAP}
                               JOIN issues busy ON busy.number = theirs.issue AND busy.status IN {one_of(IN_FLIGHT)}
                               WHERE mine.issue = {i}.number))"""


def claim_order(i: str) -> str:
    """SQL, written once for both claims: the claim's order (:data:`AGING`), ``:aging`` bound."""
    return f"{i}.rank * CAST(:aging AS float8) + {i}.created_at, {i}.number"


RETRYABLE = ("failed", "dead", "blocked", "done", "ready", "empty", "rejected", "over_budget")
BLOCKABLE = ("ready", "failed", "blocked")
#: A review's verbs (issue 22): what a priority change, a send-back and a reviewer's rejection act on.
PRIORITY_CHANGEABLE = ("ready", "failed", "blocked", "done", "empty", "rejected", "dead")
SENDABLE_BACK = ("done", "empty", "rejected", "failed", "dead", "blocked")
DISMISSABLE = ("done", "empty", "failed", "dead", "blocked", "ready")

#: Every open store of this process, of both backends: after fork() each sets the
#: parent's connection aside (forksafe) - the child must neither use nor close it
#: (SQLite's close path would run on the parent's locks and WAL,
#: https://www.sqlite.org/howtocorrupt.html#_carrying_an_open_database_connection_across_a_fork_,
#: rails/solid_queue#324 corrupted databases that way; a PostgreSQL close would end the
#: PARENT's session).
STORES: "weakref.WeakSet[Store]" = weakref.WeakSet()
forksafe.reset_in_children(STORES)


def spent_words(budget: Mapping[str, Any]) -> str:
    """``12000 of 10000 tokens, $0.50 of $2.00``: what a budget's run spent, of what."""
    parts = []
    if budget.get("budget_tokens") is not None:
        parts.append(f"{budget['spent_tokens']} of {budget['budget_tokens']} tokens")
    if budget.get("budget_usd") is not None:
        parts.append(f"${budget['spent_usd']:.2f} of ${budget['budget_usd']:.2f}")
    return ", ".join(parts)


def _utc_words(ts: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(ts))


def _review_note(note: Any, verb: str) -> str:
    """A reviewer's note: non-empty text (it is the next prompt's feedback)."""
    if not isinstance(note, str) or not note.strip():
        raise InvalidInput(f"{verb} needs a note: say what the next attempt should do differently")
    return note.strip()


def _usage(result: Mapping[str, Any]) -> str | None:
    """A result's model usage as stored: JSON text (summed over attempts by the reader)."""
    return json.dumps(result["usage"]) if result.get("usage") is not None else None


class Store:
    """The shared issue queue: every verb, written once over a backend's connector.

    Not opened directly: :class:`~parallel_autopilot.issues.IssueStore` (SQLite) and
    :class:`~parallel_autopilot.issues.postgres.PgIssueStore` (PostgreSQL) are the
    stores. Thread-safe (one connection behind a lock); fork-safe (a child process
    opens its own connection and never touches the parent's).
    """

    #: Whether many hosts' agents claim from this queue (PostgreSQL) or one host's (SQLite).
    shared = False
    #: The clock in a statement: SQLite always binds ``:now``; PostgreSQL falls back to the server's.
    NOW = ":now"
    #: After a SELECT inside a transaction whose rows it goes on to change: PostgreSQL locks
    #: them (``FOR UPDATE``); SQLite's ``BEGIN IMMEDIATE`` holds the whole database already.
    FOR_UPDATE = ""
    #: Run first in :meth:`add_many`'s transaction: what keeps two adders from numbering alike
    #: (None: the transaction does, as SQLite's does).
    NUMBERING_LOCK: str | None = None
    #: The schema's history this store upgrades a database to (the backend's MIGRATIONS,
    #: or what its constructor was given: an older copy of parallel-autopilot has fewer).
    migrations: Sequence[str | Sequence[str]]
    #: The events a fenced verb leaves when it takes effect: each token leaves 'claimed'
    #: once, so one of them with the token says the verb happened (a lost reply, a retry).
    SETTLES: Mapping[str, tuple[str, ...]] = {
        "complete": ("done",), "fail": ("failed", "dead"), "empty": ("empty",), "release": ("released",),
        "over_budget": ("over_budget",)}

    def __init__(self, *, host: str | None, clock: Callable[[], float] | None, max_attempts: int,
                 backoff_seconds: float, where: str, aging_seconds: float | None = None):
        self.host = host or socket.gethostname()
        self.aging_seconds = float(DEFAULT_AGING_SECONDS if aging_seconds is None else aging_seconds)
        if not self.aging_seconds > 0:
            raise InvalidInput(f"aging_seconds must be positive, got {aging_seconds!r}")
        self.clock = clock
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self._where = where  # the database, as every message names it
        self._lock = threading.RLock()
        self._conn: Any = None
        self._pid = -1
        STORES.add(self)

    # -- the connector (each backend's) ---------------------------------------

    def _write(self, sql: str, params: Mapping[str, Any], verify: Callable[[Run], Row | None] | None = None
               ) -> Row | None:
        raise NotImplementedError

    def _read(self, sql: str, params: Mapping[str, Any] | Sequence[Any] = ()) -> list:
        raise NotImplementedError

    def _atomic(self, work: Callable[[Run], Any], once: bool = False) -> Any:
        raise NotImplementedError

    def _claim(self, worker: str, lease_seconds: float, now: float | None,
               stale_after: float | None) -> Row | None:
        raise NotImplementedError

    def close(self) -> None:
        """Close this process's connection (an inherited one is left alone)."""
        raise NotImplementedError

    def quick_check(self) -> None:
        """DatabaseDamaged (SQLite) or QueueUnavailable (PostgreSQL) unless the database is sound."""
        raise NotImplementedError

    def backup(self, target: str | os.PathLike) -> None:
        """Copy the whole queue, consistently and while it is in use, into a new SQLite database at ``target``."""
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _discard_inherited(self) -> None:
        """After fork(): set the parent's connection aside, never used nor closed here."""
        if self._conn is not None and self._pid != os.getpid():
            forksafe.INHERITED.append(self._conn)
            self._conn = None

    def _now(self, now: float | None) -> float | None:
        """An explicit time, the store's clock's, or None: the database's clock (PostgreSQL)."""
        if now is not None:
            return float(now)
        return None if self.clock is None else float(self.clock())

    # -- migrations (both backends number them; each keeps its version its own way) --

    def _check_version(self, version: int) -> None:
        if version > len(self.migrations):
            # an older copy (say, an agent image built earlier) must not write a newer schema
            raise Conflict(
                f"{self._where} has schema version {version}, newer than this parallel-autopilot "
                f"knows ({len(self.migrations)}): upgrade parallel-autopilot (and rebuild the agent image)"
            )

    def _upgrade(self, version: int, run: Callable[[str, Mapping[str, Any]], Any],
                 mark: Callable[[int], Any]) -> None:
        """Apply every migration after ``version`` (inside the caller's transaction)."""
        self._check_version(version)
        for number, script in enumerate(self.migrations[version:], start=version + 1):
            statements = script.split(";") if isinstance(script, str) else script
            for statement in statements:
                if statement.strip():
                    run(statement, {"host": self.host})  # :host in a backfill
            mark(number)

    # -- adding -------------------------------------------------------------

    def add(self, title: str, body: str = "", priority: str = "medium", script: str | None = None,
            max_attempts: int | None = None, number: int | None = None, now: float | None = None,
            check: str | None = None, depends_on: Sequence[int] = (), paths: Sequence[str] = (),
            budget_tokens: int | None = None, budget_usd: float | None = None) -> Issue:
        """Add one ready issue and return it (``depends_on``: numbers it waits for; ``paths``: globs it
        touches; ``budget_tokens``/``budget_usd``: where an attempt is stopped)."""
        fields = {"title": title, "body": body, "priority": priority, "script": script,
                  "max_attempts": max_attempts, "number": number, "check": check,
                  "depends_on": list(depends_on), "paths": list(paths)}
        fields.update({k: v for k, v in (("budget_tokens", budget_tokens), ("budget_usd", budget_usd))
                       if v is not None})
        return self.add_many([fields], now=now)[0]

    def add_many(self, items: Iterable[Mapping[str, Any]], now: float | None = None,
                 actor: str | None = None) -> list[Issue]:
        """Add issues in ONE transaction: all are added, or (on any error) none. ``actor``: who (the audit trail).

        An item's ``depends_on`` names existing issues by number, and issues of the
        same batch by their ``key`` (or their explicit number); a cycle or an issue
        that does not exist is refused (InvalidInput), and nothing is added.
        """
        now = self._now(now)
        checked = [validate_fields(item, f"issue {i + 1}") for i, item in enumerate(items)]
        try:
            order = check_order(checked)
        except InvalidInput as err:
            raise InvalidInput(f"{err}; nothing added") from None

        def add(run: Run) -> list[Issue]:
            if self.NUMBERING_LOCK:
                run(self.NUMBERING_LOCK, {})
            added = []
            for fields in checked:
                if fields["number"] is not None and run("SELECT 1 FROM issues WHERE number = CAST(:n AS bigint)",
                                                        {"n": fields["number"]}):
                    raise Conflict(f"issue #{fields['number']} already exists: leave 'number' out to get a new one")
                # a new issue's number: one above the highest, as SQLite's rowid gives it
                row = run(f"""
                    INSERT INTO issues (number, title, body, priority, rank, script, check_cmd,
                                        max_attempts, due_at, created_at, updated_at, paths,
                                        budget_tokens, budget_usd)
                    VALUES (COALESCE(CAST(:number AS bigint), (SELECT COALESCE(MAX(number), 0) + 1 FROM issues)),
                            :title, :body, :priority, CAST(:rank AS integer), :script, :check_cmd,
                            CAST(:max_attempts AS integer), {self.NOW}, {self.NOW}, {self.NOW}, :paths,
                            CAST(:budget_tokens AS bigint), CAST(:budget_usd AS float8))
                    RETURNING *""",
                    {"number": fields["number"], "title": fields["title"], "body": fields["body"],
                     "priority": fields["priority"], "rank": PRIORITIES.index(fields["priority"]),
                     "script": fields["script"], "check_cmd": fields["check"],
                     "max_attempts": fields["max_attempts"] or self.max_attempts, "now": now,
                     "paths": json.dumps(fields["paths"]) if fields["paths"] else None,
                     "budget_tokens": fields["budget_tokens"], "budget_usd": fields["budget_usd"]})[0]
                run("INSERT INTO events (at, issue, kind, worker)"
                    " VALUES (CAST(:at AS float8), CAST(:issue AS bigint), 'added', :actor)",
                    {"at": row["created_at"], "issue": row["number"], "actor": actor})
                self._insert_paths(run, row["number"], fields["paths"])
                added.append(row)
            for i, (row, edges) in enumerate(zip(added, order)):
                if not edges:
                    continue
                before = []
                for kind, ref in edges:
                    if kind == "batch":
                        before.append(added[ref]["number"])
                    elif not run("SELECT 1 FROM issues WHERE number = CAST(:n AS bigint)", {"n": ref}):
                        raise InvalidInput(f"issue {i + 1} ({row['title'][:60]!r}): depends on #{ref}, which does "
                                           "not exist: see `issues.list`; nothing added")
                    else:
                        before.append(ref)
                for predecessor in before:
                    run("INSERT INTO depends (issue, predecessor) VALUES (CAST(:i AS bigint), CAST(:p AS bigint))",
                        {"i": row["number"], "p": predecessor})
                # the JSON column says the same for showing; transition NULL: no event
                added[i] = run("UPDATE issues SET depends_on = :d, transition = NULL"
                               " WHERE number = CAST(:n AS bigint) RETURNING *",
                               {"d": json.dumps(before), "n": row["number"]})[0]
            return [self._issue(row) for row in added]

        # a lost COMMIT is not repeated: the issues may be in already (their numbers are new each time)
        return self._atomic(add, once=True)

    @staticmethod
    def _insert_paths(run: Run, number: int, paths: Iterable[str]) -> None:
        for path in paths:
            run("INSERT INTO paths (issue, path, prefix) VALUES (CAST(:n AS bigint), :path, :prefix)"
                " ON CONFLICT DO NOTHING", {"n": number, "path": path, "prefix": literal_prefix(path)})

    def add_paths(self, number: int, paths: Iterable[str], now: float | None = None) -> Issue:
        """Record more paths ``number`` touches (the merge queue: the files it conflicted in),
        so its retry waits while an issue on them is in flight."""
        paths = normalise_paths([p for p in paths if isinstance(p, str) and p.strip()])

        def act(run: Run) -> Row:
            rows = run(f"SELECT paths FROM issues WHERE number = CAST(:n AS bigint){self.FOR_UPDATE}", {"n": int(number)})
            if not rows:
                raise IssueNotFound(f"no issue #{number}: see `issues.list`")
            merged = normalise_paths(json.loads(rows[0]["paths"] or "[]") + paths)
            self._insert_paths(run, int(number), merged)
            return run("UPDATE issues SET paths = :p, transition = NULL WHERE number = CAST(:n AS bigint) RETURNING *",
                       {"p": json.dumps(merged) if merged else None, "n": int(number)})[0]

        return self._issue(self._atomic(act))

    # -- issue 21: what keeps an issue waiting (written once; both claims embed it) ---

    def waits(self) -> dict[int, str]:
        """Why each ready or failed issue that cannot start now waits, in one line (number -> reason).

        ``blocked by #3 (rejected)``: a predecessor that will not land without an
        operator (dead, rejected, blocked: retry it); ``waiting for #3 (done) to be
        merged``: done, the merge queue lands it (run `issues.merge`, or
        `agents.start --merge`); ``waiting for #3 (claimed)``; ``waiting: #5 (claimed)
        touches src/parser/*.py``.
        """
        reasons: dict[int, list[str]] = {}
        for r in self._read(f"""
                SELECT dep.issue, pre.number, pre.status FROM depends dep
                JOIN issues i ON i.number = dep.issue AND i.status IN ('ready', 'failed')
                JOIN issues pre ON pre.number = dep.predecessor AND pre.status NOT IN {one_of(LANDED)}
                ORDER BY dep.issue, pre.number"""):
            status = r["status"]
            if status in STUCK:
                text = f"blocked by #{r['number']} ({status}): retry it (issues.retry {r['number']})"
            elif status == "done":
                text = (f"waiting for #{r['number']} (done) to be merged: run `issues.merge` "
                        "(or start the agents with --merge)")
            else:
                text = f"waiting for #{r['number']} ({status})"
            reasons.setdefault(int(r["issue"]), []).append(text)
        for r in self._read(f"""
                SELECT mine.issue, busy.number, busy.status, theirs.path FROM paths mine
                JOIN issues i ON i.number = mine.issue AND i.status IN ('ready', 'failed')
                JOIN paths theirs ON theirs.issue <> mine.issue AND {PATHS_OVERLAP}
                JOIN issues busy ON busy.number = theirs.issue AND busy.status IN {one_of(IN_FLIGHT)}
                ORDER BY mine.issue, busy.number, theirs.path"""):
            text = f"waiting: #{r['number']} ({r['status']}) touches {r['path']}"
            mine = reasons.setdefault(int(r["issue"]), [])
            if not any(t.startswith(f"waiting: #{r['number']} ") for t in mine):
                mine.append(text)
        return {n: "; ".join(texts) for n, texts in reasons.items()}

    # -- the lease verbs ----------------------------------------------------

    def claim(self, worker: str, lease_seconds: float = DEFAULT_LEASE_SECONDS,
              now: float | None = None, stale_after: float | None = None, login: str | None = None) -> Claim | None:
        """Lease the best eligible issue to ``worker``, or return None.

        Eligible: ready (or failed) and due, or abandoned - claimed with an
        expired lease, or (with ``stale_after``) held by an agent whose
        heartbeat has been silent that many seconds; and attempts below the
        limit; every predecessor landed and no overlapping issue in flight
        (``_startable``). Best: the lowest rank × aging_seconds + created_at
        (:data:`AGING`: priority, then oldest, an old issue gaining on newer ones of
        higher priority), then the lowest number. An
        abandoned issue whose attempts are used up is marked dead in the same
        call. The previous holder is fenced out by the new token. (The statement
        is each backend's own: ``_claim``.)

        Nothing is claimed while the fleet run's budget is spent (BudgetSpent) or
        while ``login``, the worker's model login, is parked (LoginParked, with until when).
        """
        self._check_claimable(login, now)
        row = self._claim(worker, float(lease_seconds), self._now(now), stale_after)
        if row is None:
            return None
        issue = self._issue(row)
        return Claim(issue=issue, token=issue.token, worker=worker, lease_until=issue.lease_until)

    def _check_claimable(self, login: str | None, now: float | None) -> None:
        """BudgetSpent or LoginParked when an agent (of ``login``) must not claim now."""
        budget = self.fleet_budget()
        if budget is not None and budget["spent"]:
            raise BudgetSpent(f"the fleet budget is spent: {spent_words(budget)}; no issue is claimed "
                              "until a new budget (agents.start --budget-tokens/--budget-usd) or none")
        if login:
            until = self.login_parked(login, now)
            if until is not None:
                raise LoginParked(f"login {login} is parked until its quota resets at {_utc_words(until)}",
                                  until=until, login=login)

    def renew(self, claim: Claim, lease_seconds: float = DEFAULT_LEASE_SECONDS,
              now: float | None = None) -> Claim:
        """Extend a live lease (the heartbeat); raise LeaseLost if it is not live."""
        # a renew sent twice is harmless: it extends the same live lease again, or is refused
        row = self._fenced(claim, "renew", now, f"""
            UPDATE issues SET lease_until = {self.NOW} + CAST(:lease AS float8), heartbeat_at = {self.NOW},
                   updated_at = {self.NOW}, transition = NULL
            WHERE number = CAST(:number AS bigint) AND token = CAST(:token AS bigint) AND status = 'claimed'
              AND owner = :worker AND host = :host
              AND lease_until > {self.NOW}
            RETURNING *""", {"lease": float(lease_seconds)}, kinds=())
        issue = self._issue(row)
        return Claim(issue=issue, token=claim.token, worker=claim.worker, lease_until=issue.lease_until)

    def complete(self, claim: Claim, result: Mapping[str, Any] | None = None,
                 now: float | None = None) -> Issue:
        """Mark the claimed issue done with its result (branch, commit, duration, check, usage)."""
        result = validate_result(result)
        return self._issue(self._fenced(claim, "complete", now, f"""
            UPDATE issues SET status = 'done', lease_until = NULL, branch = :branch, commit_sha = :commit,
                   duration = CAST(:duration AS float8), error = NULL, updated_at = {self.NOW},
                   completed_at = {self.NOW}, check_status = :check_status,
                   check_duration = CAST(:check_duration AS float8), check_output = :check_output,
                   usage = :usage, feedback = NULL, transition = 'done', actor = :worker, note = :detail
            WHERE number = CAST(:number AS bigint) AND token = CAST(:token AS bigint) AND status = 'claimed'
              AND owner = :worker AND host = :host
            RETURNING *""",
            {"branch": result.get("branch"), "commit": result.get("commit"),
             "duration": result.get("duration"), "check_status": result.get("check_status"),
             "check_duration": result.get("check_duration"), "check_output": result.get("check_output"),
             "usage": _usage(result), "detail": json.dumps(result) if result else None}, kinds=self.SETTLES["complete"]))

    def fail(self, claim: Claim, error: str, now: float | None = None, feedback: str | None = None,
             check: Mapping[str, Any] | None = None) -> Issue:
        """Record a failed attempt: retried after a backoff, or dead at the limit.

        ``feedback`` (e.g. the failing check's last lines) is handed to the next
        attempt's prompt; ``check`` records the check's result (check_status,
        check_duration, check_output) when it was the check that failed.
        """
        backoff = self.backoff_seconds * 2 ** (max(claim.issue.attempts, 1) - 1)
        check = validate_result(check)
        return self._issue(self._fenced(claim, "fail", now, f"""
            UPDATE issues SET
                   status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'failed' END,
                   due_at = {self.NOW} + CAST(:backoff AS float8), lease_until = NULL, error = :error,
                   updated_at = {self.NOW}, feedback = :feedback,
                   check_status = COALESCE(:check_status, check_status),
                   check_duration = COALESCE(CAST(:check_duration AS float8), check_duration),
                   check_output = COALESCE(:check_output, check_output),
                   transition = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'failed' END,
                   actor = :worker, note = :detail
            WHERE number = CAST(:number AS bigint) AND token = CAST(:token AS bigint) AND status = 'claimed'
              AND owner = :worker AND host = :host
            RETURNING *""",
            {"backoff": float(backoff), "error": str(error)[:TEXT_LIMIT],
             "detail": str(error)[:FAILURE_NOTE_LIMIT],
             "feedback": str(feedback)[:TEXT_LIMIT] if feedback else None,
             "check_status": check.get("check_status"), "check_duration": check.get("check_duration"),
             "check_output": check.get("check_output")},
            kinds=self.SETTLES["fail"]))

    def empty(self, claim: Claim, result: Mapping[str, Any] | None = None, now: float | None = None) -> Issue:
        """The attempt succeeded but changed nothing: status ``empty`` (not done, not retried).

        An empty change is its own outcome: nothing to merge, and retrying the
        same instructions would most likely change nothing again (``issues.retry``
        puts it back).
        """
        result = validate_result(result)
        return self._issue(self._fenced(claim, "empty", now, f"""
            UPDATE issues SET status = 'empty', lease_until = NULL, branch = :branch, commit_sha = NULL,
                   duration = CAST(:duration AS float8), error = 'the attempt changed nothing',
                   updated_at = {self.NOW}, completed_at = {self.NOW}, check_status = :check_status,
                   check_duration = CAST(:check_duration AS float8), check_output = :check_output,
                   usage = :usage, transition = 'empty', actor = :worker, note = 'no change'
            WHERE number = CAST(:number AS bigint) AND token = CAST(:token AS bigint) AND status = 'claimed'
              AND owner = :worker AND host = :host
            RETURNING *""",
            {"branch": result.get("branch"), "duration": result.get("duration"),
             "check_status": result.get("check_status"), "check_duration": result.get("check_duration"),
             "check_output": result.get("check_output"), "usage": _usage(result)},
            kinds=self.SETTLES["empty"]))

    def over_budget(self, claim: Claim, result: Mapping[str, Any] | None = None, error: str | None = None,
                    now: float | None = None) -> Issue:
        """The attempt passed its budget and was stopped: status ``over_budget`` (not retried).

        Its work is committed on its branch like a finished attempt's (``result``:
        branch, commit, duration, usage: what it spent); ``issues.retry`` puts it back.
        """
        result = validate_result(result)
        error = str(error or "over budget")[:TEXT_LIMIT]
        return self._issue(self._fenced(claim, "over_budget", now, f"""
            UPDATE issues SET status = 'over_budget', lease_until = NULL, branch = :branch, commit_sha = :commit,
                   duration = CAST(:duration AS float8), error = :error, updated_at = {self.NOW},
                   completed_at = {self.NOW}, usage = :usage, transition = 'over_budget', actor = :worker,
                   note = :note
            WHERE number = CAST(:number AS bigint) AND token = CAST(:token AS bigint) AND status = 'claimed'
              AND owner = :worker AND host = :host
            RETURNING *""",
            {"branch": result.get("branch"), "commit": result.get("commit"), "duration": result.get("duration"),
             "usage": _usage(result), "error": error, "note": error[:FAILURE_NOTE_LIMIT]},
            kinds=self.SETTLES["over_budget"]))

    def release(self, claim: Claim, now: float | None = None) -> Issue:
        """Give the issue back at once (graceful shutdown); the attempt is refunded."""
        return self._issue(self._fenced(claim, "release", now, f"""
            UPDATE issues SET status = 'ready', owner = NULL, lease_until = NULL,
                   attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END,
                   due_at = {self.NOW}, updated_at = {self.NOW},
                   transition = 'released', actor = :worker, note = NULL
            WHERE number = CAST(:number AS bigint) AND token = CAST(:token AS bigint) AND status = 'claimed'
              AND owner = :worker AND host = :host
            RETURNING *""", {}, kinds=self.SETTLES["release"]))

    def _fenced(self, claim: Claim, verb: str, now: float | None, sql: str, params: dict,
                kinds: tuple[str, ...]) -> Row:
        """One fenced UPDATE; its row, or (refused) the refusal recorded and LeaseLost raised.

        ``kinds``: the events the verb leaves when it takes effect. Each token can leave
        'claimed' once, so after a lost reply an event of one of them with this token
        means it happened, and it is not sent a second time (no kinds: a verb that is
        harmless to repeat).
        """
        now = self._now(now)
        params = {**params, "now": now, "number": claim.number, "token": claim.token, "worker": claim.worker,
                  "host": self.host}
        row = self._write(sql, params, (lambda run: self._took_effect(run, claim, kinds)) if kinds else None)
        if row is None:
            self._refuse(claim, verb, now)
            raise LeaseLost(
                f"lease lost on issue #{claim.number} (token {claim.token}, {claim.worker}): "
                f"{verb} refused; the issue belongs to a newer claim or was changed"
            )
        return row

    def _took_effect(self, run: Run, claim: Claim, kinds: tuple[str, ...]) -> Row | None:
        """The issue's row if ``claim``'s holder already did one of ``kinds`` with its token, else None."""
        found = run(f"SELECT 1 FROM events WHERE issue = CAST(:n AS bigint) AND token = CAST(:t AS bigint)"
                    f" AND worker = :w AND kind IN {one_of(kinds)}",
                    {"n": claim.number, "t": claim.token, "w": claim.worker})
        if not found:
            return None
        rows = run("SELECT * FROM issues WHERE number = CAST(:n AS bigint) AND host = :h",
                   {"n": claim.number, "h": self.host})
        return rows[0] if rows else None

    def settled(self, claim: Claim, verb: str) -> Issue | None:
        """The issue if ``verb`` (complete, fail, empty, release) already took effect for ``claim``.

        A caller whose reply was lost (the gateway's agents) asks this before sending
        the verb again, so a fenced write is never repeated blindly.
        """
        row = self._atomic(lambda run: self._took_effect(run, claim, self.SETTLES[verb]))
        return None if row is None else self._issue(row)

    def held(self, worker: str, now: float | None = None) -> Claim | None:
        """The live claim this host's ``worker`` holds, if any (its lowest number)."""
        rows = self._read(f"SELECT * FROM issues WHERE status = 'claimed' AND owner = :w AND host = :h"
                          f" AND lease_until > {self.NOW} ORDER BY number LIMIT 1",
                          {"w": worker, "h": self.host, "now": self._now(now)})
        if not rows:
            return None
        issue = self._issue(rows[0])
        return Claim(issue=issue, token=issue.token, worker=worker, lease_until=issue.lease_until)

    def _refuse(self, claim: Claim, verb: str, now: float | None) -> None:
        """Record a refused fenced call (the issue is unchanged), with what holds the issue now."""
        self._write(f"""
            INSERT INTO events (at, issue, kind, worker, token, detail)
            SELECT {self.NOW}, CAST(:number AS bigint), :kind, :worker, CAST(:token AS bigint),
                   COALESCE((SELECT 'stale token ' || CAST(:token AS bigint) || '; issue is ' || status
                                    || ', token ' || token || ' held by ' || COALESCE(owner, 'None')
                             FROM issues WHERE number = CAST(:number AS bigint)), 'issue does not exist')""",
                    {"now": now, "number": claim.number, "kind": f"refused-{verb}", "worker": claim.worker,
                     "token": claim.token})

    # -- the merge queue's verbs (host side; the merge queue is their only caller) ------

    def mark_merged(self, number: int, commit: str, merge_commit: str, now: float | None = None) -> Issue:
        """``done`` -> ``merged`` with the base commit that contains it.

        Guarded by the commit: an issue retried (or re-done) meanwhile is left alone.
        """
        def merged_already(run: Run) -> Row | None:  # the reply was lost: merged, with this merge commit?
            rows = run("SELECT * FROM issues WHERE number = CAST(:n AS bigint) AND status = 'merged'"
                       " AND merge_commit = :m", {"n": int(number), "m": merge_commit})
            return rows[0] if rows else None

        row = self._write(f"""
            UPDATE issues SET status = 'merged', merge_commit = :merge, merged_at = {self.NOW},
                   updated_at = {self.NOW}, error = NULL, feedback = NULL,
                   transition = 'merged', actor = 'merge-queue', note = :merge
            WHERE number = CAST(:number AS bigint) AND status = 'done' AND commit_sha = :commit
            RETURNING *""", {"number": int(number), "commit": commit, "merge": merge_commit, "now": self._now(now)},
            merged_already)
        if row is None:
            raise Conflict(f"issue #{number} is no longer done at {commit[:12]}: not marked merged")
        return self._issue(row)

    def reject(self, number: int, commit: str | None, report: str, requeue: bool = False,
               now: float | None = None) -> Issue:
        """``done`` -> ``rejected`` (red or conflicting on the base), the report in error and feedback.

        With ``requeue`` and attempts left, the issue goes back to ``ready`` at
        once as a new attempt whose prompt carries the report (the audit trail
        still says ``rejected``).
        """
        again = "CAST(:requeue AS boolean) AND attempts < max_attempts"
        row = self._write(f"""
            UPDATE issues SET status = CASE WHEN {again} THEN 'ready' ELSE 'rejected' END,
                   owner = CASE WHEN {again} THEN NULL ELSE owner END,
                   due_at = {self.NOW}, error = :report, feedback = :report, updated_at = {self.NOW},
                   transition = 'rejected', actor = 'merge-queue',
                   note = CASE WHEN {again} THEN 're-queued: ' ELSE '' END || :excerpt
            WHERE number = CAST(:number AS bigint) AND status = 'done'
              AND (commit_sha = :commit OR (commit_sha IS NULL AND CAST(:commit AS text) IS NULL))
            RETURNING *""",
            {"number": int(number), "commit": commit, "report": str(report)[:TEXT_LIMIT],
             "excerpt": str(report)[:REPORT_NOTE_LIMIT], "requeue": bool(requeue), "now": self._now(now)})
        if row is None:
            raise Conflict(f"issue #{number} is no longer done at {(commit or 'no commit')[:12]}: not rejected")
        return self._issue(row)

    # -- operator verbs -----------------------------------------------------

    def retry(self, number: int, now: float | None = None, actor: str = "operator") -> Issue:
        """Put a failed, dead, blocked, done, empty or rejected issue back to ready with fresh attempts."""
        return self._operator(number, "retry", now, RETRYABLE,
                              f"status = 'ready', attempts = 0, due_at = {self.NOW}, error = NULL", actor=actor)

    def block(self, number: int, now: float | None = None, actor: str = "operator") -> Issue:
        """Take a ready or failed issue out of the queue until retried."""
        return self._operator(number, "block", now, BLOCKABLE, "status = 'blocked'", actor=actor)

    def set_priority(self, number: int, priority: str, now: float | None = None, actor: str = "operator") -> Issue:
        """Change an issue's priority (not while an agent holds it: the claim's order is decided)."""
        if priority not in PRIORITIES:
            raise InvalidInput(f"priority {priority!r} is not one of {', '.join(PRIORITIES)}")
        return self._operator(number, "priority", now, PRIORITY_CHANGEABLE,
                              "priority = :priority, rank = CAST(:rank AS integer)", actor=actor, note=priority,
                              params={"priority": priority, "rank": PRIORITIES.index(priority)})

    def send_back(self, number: int, note: str, now: float | None = None, actor: str = "operator") -> Issue:
        """A reviewer's "not yet": back to ready, ``note`` in the next attempt's prompt (as a rejection's report).

        The attempts are kept; one more is granted when they are used up, since a person asked for it.
        """
        note = _review_note(note, "send back")
        return self._operator(number, "sent-back", now, SENDABLE_BACK,
                              f"""status = 'ready', owner = NULL, due_at = {self.NOW}, error = NULL,
                                  feedback = :feedback,
                                  max_attempts = CASE WHEN attempts >= max_attempts THEN attempts + 1
                                                      ELSE max_attempts END""",
                              actor=actor, note=note[:FAILURE_NOTE_LIMIT], params={"feedback": note[:TEXT_LIMIT]})

    def dismiss(self, number: int, note: str = "", now: float | None = None, actor: str = "operator") -> Issue:
        """A reviewer's rejection: ``rejected`` for good (``retry`` brings it back), ``note`` as its error."""
        note = str(note or "").strip() or f"rejected by {actor}"
        return self._operator(number, "rejected", now, DISMISSABLE, "status = 'rejected', error = :why",
                              actor=actor, note=note[:FAILURE_NOTE_LIMIT], params={"why": note[:TEXT_LIMIT]})

    def record(self, number: int | None, kind: str, actor: str, detail: str | None = None,
               now: float | None = None) -> Event:
        """Append one audit event that changes no row: a merge asked for (of an existing issue), or an
        action on the whole queue (``number`` None: the merge queue started or stopped)."""
        if number is not None:
            self.get(number)  # IssueNotFound for a bad id
        now = self._now(now)
        row = self._write(f"""INSERT INTO events (at, issue, kind, worker, detail)
                              VALUES ({self.NOW}, CAST(:n AS bigint), :kind, :actor, :detail) RETURNING *""",
                          {"now": now, "n": None if number is None else int(number), "kind": str(kind),
                           "actor": str(actor),
                           "detail": None if detail is None else str(detail)[:FAILURE_NOTE_LIMIT]})
        return Event(**dict(row))

    def _operator(self, number: int, verb: str, now: float | None, allowed: tuple, assignment: str,
                  actor: str = "operator", note: str | None = None, params: Mapping[str, Any] | None = None
                  ) -> Issue:
        now = self._now(now)

        def act(run: Run) -> Row:
            rows = run(f"SELECT status, owner FROM issues WHERE number = CAST(:n AS bigint){self.FOR_UPDATE}",
                       {"n": int(number)})
            if not rows:
                raise IssueNotFound(f"no issue #{number}: see `issues.list`")
            status, owner = rows[0]["status"], rows[0]["owner"]
            if status not in allowed:
                raise Conflict(f"issue #{number} is {status}" + (f" by {owner}" if status == "claimed" else "")
                               + f": cannot {verb.replace('-', ' ')} it now (it must be "
                               + ", ".join(allowed) + ")")
            return run(f"""UPDATE issues SET {assignment}, updated_at = {self.NOW},
                                  transition = :verb, actor = :actor, note = :note
                           WHERE number = CAST(:n AS bigint) RETURNING *""",
                       {**(params or {}), "now": now, "n": int(number), "verb": verb, "actor": str(actor),
                        "note": note})[0]

        # repeated after a lost COMMIT it is still right: the issue is in the state the verb makes
        return self._issue(self._atomic(act))

    # -- the agents registry ------------------------------------------------
    # Who works where: one row per agent, keyed by (host, id) - agent ids repeat on every
    # host of a shared queue. Its own section, not its own module: freeing a silent
    # agent's claims is one transaction over this table AND the issues, on this store's
    # connection.

    def agent_heartbeat(self, agent_id: str, state: str, issue: int | None = None,
                        token: int | None = None, incarnation: str | None = None,
                        pid: int | None = None, now: float | None = None,
                        waiting_until: float | None = None, login: str | None = None) -> float | None:
        """Record what this host's agent ``agent_id`` is doing now (upsert of its (host, id) row).

        Returns until when its ``login`` is parked (None: it is not): an agent at work
        learns from its next heartbeat that another agent of its login hit the quota.
        """
        # a new incarnation (the agent restarted) starts its uptime again
        self._write(f"""
            INSERT INTO agents AS a (host, id, state, issue, token, heartbeat_at, started_at, incarnation, pid,
                                     waiting_until, login)
            VALUES (:host, :id, :state, CAST(:issue AS bigint), CAST(:token AS bigint), {self.NOW}, {self.NOW},
                    :inc, CAST(:pid AS integer), CAST(:waiting AS float8), :login)
            ON CONFLICT (host, id) DO UPDATE SET state = excluded.state, issue = excluded.issue,
                   token = excluded.token, heartbeat_at = excluded.heartbeat_at,
                   waiting_until = excluded.waiting_until, pid = COALESCE(excluded.pid, a.pid),
                   login = COALESCE(excluded.login, a.login),
                   started_at = CASE WHEN a.incarnation = excluded.incarnation
                                          OR (a.incarnation IS NULL AND excluded.incarnation IS NULL)
                                     THEN a.started_at ELSE excluded.started_at END,
                   incarnation = excluded.incarnation""",
            {"host": self.host, "id": agent_id, "state": state, "issue": issue, "token": token,
             "now": self._now(now), "inc": incarnation, "pid": pid, "waiting": waiting_until, "login": login})
        return self.login_parked(login, now) if login else None

    # -- one quota per login (issue 21) -----------------------------------------
    # A rate limit or an exhausted quota belongs to the login (the credential), not to the
    # agent that met it: every agent of that login parks until the reset. The login is its
    # keyed fingerprint (issues/logins.py), never the secret. The parks live in the queue,
    # so a shared PostgreSQL queue parks the login on every host.

    def park_login(self, login: str, until: float, agent: str | None = None, message: str | None = None,
                   now: float | None = None) -> float:
        """Park ``login`` until ``until`` (a later park of it wins); until when it is parked now.

        At most :data:`MAX_PARK_SECONDS` ahead: an agent (hostile, or misreading a message)
        cannot park its login for ever.
        """
        if not login or not isinstance(login, str):
            raise InvalidInput("a login fingerprint is required to park it")
        row = self._write(f"""
            INSERT INTO parks AS p (login, until_at, parked_at, host, agent, message)
            VALUES (:login, CASE WHEN CAST(:until AS float8) > {self.NOW} + {MAX_PARK_SECONDS}
                                 THEN {self.NOW} + {MAX_PARK_SECONDS} ELSE CAST(:until AS float8) END,
                    {self.NOW}, :host, :agent, :message)
            ON CONFLICT (login) DO UPDATE SET
                   until_at = CASE WHEN p.until_at > excluded.until_at THEN p.until_at ELSE excluded.until_at END,
                   parked_at = excluded.parked_at, host = excluded.host, agent = excluded.agent,
                   message = excluded.message
            RETURNING until_at""",
            {"login": login, "until": float(until), "now": self._now(now), "host": self.host, "agent": agent,
             "message": (message or "")[:FAILURE_NOTE_LIMIT]})
        return float(row["until_at"])

    def login_parked(self, login: str, now: float | None = None) -> float | None:
        """Until when ``login`` is parked, or None."""
        rows = self._read(f"SELECT until_at FROM parks WHERE login = :login AND until_at > {self.NOW}",
                          {"login": login, "now": self._now(now)})
        return float(rows[0]["until_at"]) if rows else None

    def parks(self, now: float | None = None) -> dict[str, float]:
        """Every login parked now: fingerprint -> until when."""
        rows = self._read(f"SELECT login, until_at FROM parks WHERE until_at > {self.NOW} ORDER BY login",
                          {"now": self._now(now)})
        return {r["login"]: float(r["until_at"]) for r in rows}

    def login_key(self) -> bytes:
        """This queue's key for the logins' fingerprints (made once, at first use; never given to agents)."""
        fresh = os.urandom(32).hex()

        def get(run: Run) -> str:
            run("INSERT INTO secrets (name, value) VALUES ('login-key', :v) ON CONFLICT (name) DO NOTHING",
                {"v": fresh})
            return run("SELECT value FROM secrets WHERE name = 'login-key'", {})[0]["value"]

        return bytes.fromhex(self._atomic(get))

    # -- the fleet run's budget (issue 21) ----------------------------------------

    def set_fleet_budget(self, tokens: int | None = None, usd: float | None = None,
                         now: float | None = None) -> None:
        """Start a fleet run's budget (what was spent before does not count); no limits: no budget."""
        if tokens is None and usd is None:
            self._write("DELETE FROM budgets WHERE name = 'fleet'", {})
            return
        self._write(f"""
            INSERT INTO budgets AS b (name, budget_tokens, budget_usd, spent_tokens, spent_usd, since)
            VALUES ('fleet', CAST(:tokens AS bigint), CAST(:usd AS float8), 0, 0, {self.NOW})
            ON CONFLICT (name) DO UPDATE SET budget_tokens = excluded.budget_tokens,
                   budget_usd = excluded.budget_usd, spent_tokens = 0, spent_usd = 0, since = excluded.since""",
            {"tokens": tokens, "usd": usd, "now": self._now(now)})

    def spend(self, tokens: int, usd: float | None = None, claim: Claim | None = None) -> None:
        """Add what one attempt spent to the fleet run's budget (if there is one) and, with the
        ``claim`` it was spent on, to that issue's ``spent_tokens``/``spent_usd`` (its holder only)."""
        tokens = int(tokens or 0)
        usd = float(usd or 0.0)
        if tokens < 0 or usd < 0:
            raise InvalidInput("spent tokens and cost cannot be negative")
        params = {"tokens": tokens, "usd": usd}

        def add(run: Run) -> None:
            run("""UPDATE budgets SET spent_tokens = spent_tokens + CAST(:tokens AS bigint),
                          spent_usd = spent_usd + CAST(:usd AS float8)
                   WHERE name = 'fleet'""", params)
            if claim is not None:  # no transition: spending is no event of the issue's
                run("""UPDATE issues SET spent_tokens = spent_tokens + CAST(:tokens AS bigint),
                              spent_usd = spent_usd + CAST(:usd AS float8), transition = NULL
                       WHERE number = CAST(:number AS bigint) AND token = CAST(:token AS bigint)
                         AND owner = :worker AND host = :host""",
                    {**params, "number": claim.number, "token": claim.token, "worker": claim.worker,
                     "host": self.host})

        self._atomic(add, once=True)  # a lost COMMIT is not repeated: spending counted twice overstates

    def fleet_budget(self) -> dict | None:
        """The fleet run's budget and spending (``spent``: True once either limit is reached), or None."""
        rows = self._read("SELECT * FROM budgets WHERE name = 'fleet'")
        if not rows:
            return None
        row = dict(rows[0])
        spent = ((row["budget_tokens"] is not None and row["spent_tokens"] >= row["budget_tokens"])
                 or (row["budget_usd"] is not None and row["spent_usd"] >= row["budget_usd"]))
        return {"budget_tokens": row["budget_tokens"], "budget_usd": row["budget_usd"],
                "spent_tokens": int(row["spent_tokens"]), "spent_usd": float(row["spent_usd"]),
                "since": float(row["since"]), "spent": bool(spent)}

    def agents(self, host: str | None = None) -> list[AgentRow]:
        """Every agent that ever reported (of every host, or only ``host``'s), by id then host."""
        if host is None:
            rows = self._read("SELECT * FROM agents ORDER BY id, host")
        else:
            rows = self._read("SELECT * FROM agents WHERE host = :h ORDER BY id", {"h": host})
        return [AgentRow(**dict(r)) for r in rows]

    def release_agent(self, agent_id: str, now: float | None = None, reason: str = "agent gone") -> list[int]:
        """Free at once every claim held by this host's ``agent_id`` (crash recovery).

        Only claims made on ``store.host``: another host's agent of the same id
        is another agent. Unlike :meth:`release`, the interrupted attempt
        counts: an issue that keeps killing its agent ends dead instead of
        looping forever.
        """
        now = self._now(now)
        return self._atomic(lambda run: self._release_agent(run, now, self.host, agent_id, reason))

    def _release_agent(self, run: Run, now: float | None, host: str, agent_id: str, reason: str) -> list[int]:
        # one issue at a time, by number: the audit trail reads the same on both backends
        numbers = [r["number"] for r in run(
            f"SELECT number FROM issues WHERE status = 'claimed' AND owner = :agent AND host = :host"
            f" ORDER BY number{self.FOR_UPDATE}", {"agent": agent_id, "host": host})]
        for number in numbers:
            run(f"""UPDATE issues SET
                           status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'ready' END,
                           error = CASE WHEN attempts >= max_attempts THEN :reason ELSE error END,
                           owner = CASE WHEN attempts >= max_attempts THEN owner END,
                           lease_until = NULL, due_at = {self.NOW}, updated_at = {self.NOW},
                           transition = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'released-agent' END,
                           actor = :agent, note = :note
                    WHERE number = CAST(:number AS bigint) AND status = 'claimed' AND owner = :agent
                      AND host = :host""",
                {"now": now, "number": number, "agent": agent_id, "host": host,
                 "reason": f"{reason} on the last attempt", "note": reason})
        return numbers

    def release_stale_agents(self, stale_after: float, now: float | None = None) -> dict[str, list[int]]:
        """Free the claims of agents whose heartbeat is older than ``stale_after`` seconds.

        Any live agent calls this while idle, so a container that died without
        a word (``docker kill``, a lost host) gives its issue back within
        seconds, long before its lease expires. A falsely presumed-dead agent
        loses nothing but time: its next renew raises LeaseLost.
        Claims of workers with no agent row (plain host processes) are left alone.
        Every host's agents count (a dead host's claims come back); the keys name
        the agent: ``"agent-001"`` for this store's host, ``"agent-001@ws2"`` for another's.
        """
        now = self._now(now)

        def sweep(run: Run) -> dict[str, list[int]]:
            freed = {}
            # staleness is read in the same write transaction as the release (the agents'
            # rows locked where rows lock): an agent that heartbeats meanwhile keeps its claim
            owners = run(f"""SELECT a.host, a.id FROM agents a
                             WHERE a.heartbeat_at < {self.NOW} - CAST(:stale AS float8)
                               AND EXISTS (SELECT 1 FROM issues i WHERE i.status = 'claimed'
                                                                   AND i.owner = a.id AND i.host = a.host)
                             ORDER BY a.host, a.id{self.FOR_UPDATE}""", {"now": now, "stale": float(stale_after)})
            for owner in owners:
                numbers = self._release_agent(run, now, owner["host"], owner["id"], "agent heartbeat stale")
                if numbers:
                    freed[agent_key(owner["id"], owner["host"], self.host)] = numbers
            return freed

        return self._atomic(sweep)

    # -- reading ------------------------------------------------------------

    _issue = staticmethod(issue_from_row)

    def get(self, number: int) -> Issue:
        """The issue with that number; IssueNotFound if there is none."""
        rows = self._read("SELECT * FROM issues WHERE number = CAST(:n AS bigint)", {"n": int(number)})
        if not rows:
            raise IssueNotFound(f"no issue #{number}: see `issues.list`")
        return self._issue(rows[0])

    def list(self, status: str | Iterable[str] | None = None) -> list[Issue]:
        """Issues by number, optionally only those with the given status(es)."""
        if status is None:
            return [self._issue(r) for r in self._read("SELECT * FROM issues ORDER BY number")]
        wanted = [status] if isinstance(status, str) else list(status)
        bad = [s for s in wanted if s not in STATUSES]
        if bad:
            raise InvalidInput(f"unknown status {bad[0]!r}: use one of {', '.join(STATUSES)}")
        marks = ", ".join(f":s{i}" for i in range(len(wanted)))
        return [self._issue(r) for r in self._read(
            f"SELECT * FROM issues WHERE status IN ({marks}) ORDER BY rank, created_at, number",
            {f"s{i}": s for i, s in enumerate(wanted)})]

    def counts(self) -> dict[str, int]:
        """Number of issues in each status (every status present, zeros included)."""
        counts = dict.fromkeys(STATUSES, 0)
        for row in self._read("SELECT status, COUNT(*) AS n FROM issues GROUP BY status"):
            counts[row["status"]] = int(row["n"])
        return counts

    def events(self, number: int | None = None, limit: int | None = None) -> list[Event]:
        """The audit trail, oldest first; of one issue when ``number`` is given."""
        where = "WHERE issue = CAST(:n AS bigint)" if number is not None else ""
        params = {"n": number} if number is not None else {}
        if limit is None:
            sql = f"SELECT * FROM events {where} ORDER BY id"
        else:
            sql = f"SELECT * FROM (SELECT * FROM events {where} ORDER BY id DESC LIMIT {int(limit)}) e ORDER BY id"
        return [Event(**dict(r)) for r in self._read(sql, params)]

