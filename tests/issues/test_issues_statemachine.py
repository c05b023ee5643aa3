"""Model-based test of the issue store: random add/claim/renew/complete/fail/release,
crash recovery, operator verbs and clock moves, with short leases and backoffs.

Each rule predicts its outcome from the store's state just before it (which
issue a claim must pick, whether a fenced call must be accepted) and checks
it; the invariants hold after every step:

- no two handed-out claims share an (issue, token), and at most one holder of
  an issue has a live lease (token current, status claimed, lease_until > now);
- a done issue is never claimed again (unless an operator retried it);
- attempts never exceed max_attempts; tokens never decrease;
- statuses are valid and consistent with the lease fields; counts add up.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from support.clock import FakeClock
from parallel_autopilot.errors import Conflict, LeaseLost
from parallel_autopilot.issues import PRIORITIES, STATUSES, is_url, open_store

BACKOFF = 2.0
WORKERS = st.sampled_from(["agent-001", "agent-002", "agent-003"])
LEASES = st.sampled_from([1.0, 3.0, 10.0])
STEPS = st.sampled_from([0.5, 1.0, 2.0, 3.0, 4.0, 10.0, 25.0])


class QueueMachine(RuleBasedStateMachine):
    """One example: a fresh SQLite database, or the PostgreSQL database at ``url`` emptied."""

    url: str | None = None

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="queue-machine-")
        self.clock = FakeClock()
        target = self.url or Path(self.dir) / "autopilot.db"
        self.store = open_store(target, clock=self.clock, backoff_seconds=BACKOFF)
        if is_url(target):
            self.store._retrying(lambda conn: conn.run("TRUNCATE issues, events, agents RESTART IDENTITY"))
        self.claims = []  # every claim handed out; a renewal replaces its claim
        self.added = 0
        self.tokens = {}  # issue -> highest token seen
        self.done = set()  # issues completed and not retried since

    def teardown(self):
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers -------------------------------------------------------------

    def snapshot(self):
        return {i.number: i for i in self.store.list()}

    def pick_claim(self, data):
        index = data.draw(st.integers(0, len(self.claims) - 1), label="claim")
        return index, self.claims[index]

    def fenced(self, claim, verb, call, must_be_live=False):
        """Run a fenced verb; return its result, or None after checking a refusal changed nothing."""
        before = self.store.get(claim.number)
        ok = before.token == claim.token and before.status == "claimed"
        if must_be_live:
            ok = ok and before.lease_until > self.clock.now
        if ok:
            return before, call()
        seen = len(self.store.events())
        with pytest.raises(LeaseLost):
            call()
        assert self.store.get(claim.number) == before
        assert [(e.kind, e.token) for e in self.store.events()[seen:]] == [(f"refused-{verb}", claim.token)]
        return before, None

    # -- rules ---------------------------------------------------------------

    @rule(priority=st.sampled_from(PRIORITIES), max_attempts=st.integers(1, 3))
    def add(self, priority, max_attempts):
        issue = self.store.add(f"issue {self.added + 1}", priority=priority, max_attempts=max_attempts)
        self.added += 1
        assert (issue.status, issue.attempts, issue.token) == ("ready", 0, 0)

    @rule(worker=WORKERS, lease=LEASES)
    def claim(self, worker, lease):
        now, before = self.clock.now, self.snapshot()
        eligible = [i for i in before.values() if i.attempts < i.max_attempts and (
            (i.status in ("ready", "failed") and i.due_at <= now)
            or (i.status == "claimed" and i.lease_until <= now))]
        best = min(eligible, key=lambda i: (PRIORITIES.index(i.priority), i.created_at, i.number), default=None)

        claim = self.store.claim(worker, lease_seconds=lease)

        for i in before.values():  # an expired lease on the last attempt is dead now
            if i.status == "claimed" and i.lease_until <= now and i.attempts >= i.max_attempts:
                assert self.store.get(i.number).status == "dead"
        if best is None:
            assert claim is None
            return
        assert claim is not None and claim.number == best.number
        assert claim.number not in self.done, "a done issue was claimed again"
        assert (claim.token, claim.issue.attempts) == (best.token + 1, best.attempts + 1)
        assert (claim.worker, claim.issue.owner, claim.lease_until) == (worker, worker, now + lease)
        assert (claim.number, claim.token) not in {(c.number, c.token) for c in self.claims}
        self.claims.append(claim)

    @precondition(lambda self: self.claims)
    @rule(data=st.data(), lease=LEASES)
    def renew(self, data, lease):
        index, claim = self.pick_claim(data)
        _, renewed = self.fenced(claim, "renew", lambda: self.store.renew(claim, lease_seconds=lease),
                                 must_be_live=True)
        if renewed is not None:
            assert (renewed.token, renewed.lease_until) == (claim.token, self.clock.now + lease)
            self.claims[index] = renewed

    @precondition(lambda self: self.claims)
    @rule(data=st.data())
    def complete(self, data):
        _, claim = self.pick_claim(data)
        before, issue = self.fenced(claim, "complete", lambda: self.store.complete(claim, {"branch": "b"}))
        if issue is not None:
            assert (issue.status, issue.attempts, issue.branch, issue.lease_until) == (
                "done", before.attempts, "b", None)
            self.done.add(issue.number)

    @precondition(lambda self: self.claims)
    @rule(data=st.data())
    def fail(self, data):
        _, claim = self.pick_claim(data)
        before, issue = self.fenced(claim, "fail", lambda: self.store.fail(claim, "boom"))
        if issue is not None:
            last = before.attempts >= before.max_attempts
            assert (issue.status, issue.error, issue.attempts) == (
                "dead" if last else "failed", "boom", before.attempts)
            assert issue.due_at == self.clock.now + BACKOFF * 2 ** (claim.issue.attempts - 1)

    @precondition(lambda self: self.claims)
    @rule(data=st.data())
    def release(self, data):
        _, claim = self.pick_claim(data)
        before, issue = self.fenced(claim, "release", lambda: self.store.release(claim))
        if issue is not None:
            assert (issue.status, issue.attempts, issue.owner) == ("ready", before.attempts - 1, None)

    @rule(worker=WORKERS)
    def release_agent(self, worker):
        before = self.snapshot()
        held = sorted(n for n, i in before.items() if i.status == "claimed" and i.owner == worker)
        assert self.store.release_agent(worker) == held
        for n in held:
            issue = self.store.get(n)
            last = before[n].attempts >= before[n].max_attempts
            assert (issue.status, issue.attempts) == ("dead" if last else "ready", before[n].attempts)

    @precondition(lambda self: self.added)
    @rule(data=st.data())
    def retry(self, data):
        number = data.draw(st.integers(1, self.added), label="issue")
        before = self.store.get(number)
        if before.status == "claimed":
            with pytest.raises(Conflict):
                self.store.retry(number)
            assert self.store.get(number) == before
            return
        issue = self.store.retry(number)
        assert (issue.status, issue.attempts, issue.token) == ("ready", 0, before.token)
        self.done.discard(number)

    @precondition(lambda self: self.added)
    @rule(data=st.data())
    def block(self, data):
        number = data.draw(st.integers(1, self.added), label="issue")
        before = self.store.get(number)
        if before.status not in ("ready", "failed", "blocked"):
            with pytest.raises(Conflict):
                self.store.block(number)
            assert self.store.get(number) == before
            return
        assert self.store.block(number).status == "blocked"

    @rule(seconds=STEPS)
    def advance_clock(self, seconds):
        self.clock.advance(seconds)

    # -- invariants ----------------------------------------------------------

    @invariant()
    def at_most_one_live_lease_per_issue(self):
        now, issues = self.clock.now, self.snapshot()
        live = {}
        for c in self.claims:
            i = issues[c.number]
            if c.token == i.token and i.status == "claimed" and i.lease_until > now:
                live.setdefault(c.number, []).append(c)
        assert all(len(holders) == 1 for holders in live.values()), live
        assert len({(c.number, c.token) for c in self.claims}) == len(self.claims)

    @invariant()
    def issues_are_consistent(self):
        issues = self.snapshot()
        assert len(issues) == self.added
        for n, i in issues.items():
            assert i.status in STATUSES
            assert 0 <= i.attempts <= i.max_attempts
            assert i.token >= self.tokens.get(n, 0), "a token went down"
            self.tokens[n] = i.token
            if i.status == "claimed":
                assert i.owner is not None and i.lease_until is not None
            else:
                assert i.lease_until is None
        assert all(issues[n].status == "done" for n in self.done), "a done issue changed"
        counts = self.store.counts()
        assert sum(counts.values()) == self.added
        assert counts == {s: sum(i.status == s for i in issues.values()) for s in STATUSES}


SETTINGS = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_queue_state_machine(queue_target):
    """The same machine against each backend (one PostgreSQL database, emptied per example)."""
    url = queue_target if is_url(queue_target) else None
    machine = type("Machine", (QueueMachine,), {"url": url})
    # a PostgreSQL step is a few socket round trips: fewer examples keep it to the SQLite run's time
    run_state_machine_as_test(machine, settings=settings(SETTINGS, max_examples=60) if url else SETTINGS)
