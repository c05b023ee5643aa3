"""Budgets and one quota per login in the queue (issue 21): each rule once in store.py, on both backends.

- an issue carries its budget; ``over_budget`` is a fenced settling verb that keeps
  what the attempt spent and its branch, and is not retried;
- the fleet run's budget: once what the attempts spent reaches it, no claim;
- a parked login: its agents claim nothing until the reset, the others go on; the
  park is the queue's, so every store on the same queue (every host) sees it;
- the fingerprint of a login is keyed by the queue's own secret.
"""

from __future__ import annotations

import pytest

from parallel_autopilot.errors import BudgetSpent, InvalidInput, LeaseLost, LoginParked
from parallel_autopilot.issues import open_store
from parallel_autopilot.issues.gateway import Gateway, GatewayClient
from parallel_autopilot.issues.logins import fingerprint


def test_an_issue_keeps_its_budget_and_refuses_a_bad_one(store):
    issue = store.add("loop", budget_tokens=5000, budget_usd=0.5)
    assert (issue.budget_tokens, issue.budget_usd) == (5000, 0.5)
    assert store.get(issue.number).budget_tokens == 5000
    assert store.add("no budget").budget_tokens is None
    for bad in ({"budget_tokens": 0}, {"budget_tokens": "lots"}, {"budget_usd": -1}):
        with pytest.raises(InvalidInput, match="budget"):
            store.add_many([{"title": "x", **bad}])


def test_over_budget_is_fenced_keeps_what_was_spent_and_is_not_claimed_again(store, clock):
    issue = store.add("loop", budget_tokens=5000)
    claim = store.claim("agent-001", 60)
    spent = {"input_tokens": 6000, "output_tokens": 60, "cached_input_tokens": 0}
    done = store.over_budget(claim, {"branch": "autopilot/issue-1", "commit": "c0ffee", "duration": 3.0,
                                     "usage": spent}, "over budget: 6060 of 5000 tokens")
    assert (done.status, done.branch, done.commit, done.usage) == ("over_budget", "autopilot/issue-1", "c0ffee",
                                                                    spent)
    assert done.error == "over budget: 6060 of 5000 tokens"
    assert store.events(issue.number)[-1].kind == "over_budget"
    clock.advance(3600)
    assert store.claim("agent-002", 60) is None  # not retried: it would spend again
    with pytest.raises(LeaseLost):
        store.over_budget(claim, {})  # a settled claim is settled
    assert store.retry(issue.number).status == "ready"  # the operator may give it more


def test_the_fleet_budget_stops_claiming_once_spent_and_a_new_one_starts_afresh(store):
    store.add("one")
    store.add("two")
    assert store.fleet_budget() is None
    store.set_fleet_budget(tokens=10_000)
    store.spend(4000)
    claim = store.claim("agent-001", 60)
    assert claim is not None
    store.spend(6500, 0.02)
    assert store.fleet_budget() == {"budget_tokens": 10_000, "budget_usd": None, "spent_tokens": 10_500,
                                    "spent_usd": 0.02, "since": store.fleet_budget()["since"], "spent": True}
    with pytest.raises(BudgetSpent, match="10500 of 10000 tokens"):
        store.claim("agent-002", 60)
    store.complete(claim, {"branch": "b"})  # work in flight still settles
    store.set_fleet_budget(usd=1.0)  # a new run: what was spent before does not count
    assert store.claim("agent-002", 60).number == 2
    store.set_fleet_budget()  # no limit at all
    assert store.fleet_budget() is None
    with pytest.raises(InvalidInput):
        store.spend(-5)


def test_the_budget_is_the_issues_what_every_attempt_spent_adds_up_by_its_holder_only(store):
    store.add("retried", budget_tokens=10_000)
    first = store.claim("agent-001", 60)
    store.spend(3000, 0.01, claim=first)
    store.fail(first, "red")
    assert (store.get(1).spent_tokens, store.get(1).spent_usd) == (3000, 0.01)
    store.retry(1)
    second = store.claim("agent-002", 60)
    assert second.issue.spent_tokens == 3000  # the next attempt knows what is left of the budget
    store.spend(500, claim=first)  # a stale claim's spending counts for the fleet, not for the issue
    store.spend(2500, claim=second)
    assert store.get(1).spent_tokens == 5500
    assert [e.kind for e in store.events(1)].count("claimed") == 2 and "spend" not in str(store.events(1))


def test_a_parked_login_stops_its_agents_claims_until_the_reset_and_no_other_login(store, clock):
    for n in range(3):
        store.add(f"issue {n}")
    key = store.login_key()
    first, second = fingerprint(key, "sk-first"), fingerprint(key, "sk-second")
    assert store.park_login(first, clock() + 120, agent="agent-001", message="429 try again in 120s") == clock() + 120
    assert store.park_login(first, clock() + 30) == clock() + 120  # an earlier reset does not shorten it
    with pytest.raises(LoginParked) as refused:
        store.claim("agent-002", 60, login=first)
    assert (refused.value.until, refused.value.login) == (clock() + 120, first)
    assert "parked until" in str(refused.value) and "sk-first" not in str(refused.value)
    assert store.claim("agent-004", 60, login=second) is not None  # another login goes on (not parked yet)
    assert store.agent_heartbeat("agent-003", "working", login=first) == clock() + 120  # told at its heartbeat
    assert {a.id: a.login for a in store.agents()} == {"agent-003": first}
    assert store.parks() == {first: clock() + 120}
    assert store.park_login(second, clock() + 1e9) == clock() + 7 * 86400  # never for ever
    assert store.park_login(second, clock() + 10) == clock() + 7 * 86400
    clock.advance(121)
    assert store.login_parked(first) is None
    assert store.claim("agent-002", 60, login=first) is not None


def test_the_login_key_is_the_queues_own_and_the_same_for_every_store_on_it(queue_target, clock):
    with open_store(queue_target, clock=clock, host="ws1") as one, open_store(queue_target, clock=clock,
                                                                             host="ws2") as two:
        key = one.login_key()
        assert len(key) == 32 and two.login_key() == key
        # a park made through one host's store holds on the other's (a shared queue spans hosts)
        login = fingerprint(key, "sk-shared")
        one.park_login(login, clock() + 60)
        two.add("x")
        with pytest.raises(LoginParked):
            two.claim("agent-001", 60, login=login)
    assert fingerprint(key, "sk-shared") != fingerprint(b"another queue's key" * 2, "sk-shared")
    assert fingerprint(key, "sk-shared\n") == fingerprint(key, "sk-shared")


def test_the_gateway_parks_the_login_it_knows_for_the_socket_not_the_one_asked(tmp_path, clock):
    store = open_store(str(tmp_path / "state"), clock=clock, host="ws1")
    key = store.login_key()
    mine, theirs = fingerprint(key, "sk-mine"), fingerprint(key, "sk-theirs")
    gateway = Gateway(store, log=lambda _: None, logins={"agent-001": mine})
    paths = gateway.listen(tmp_path / "gateway", ["agent-001", "agent-002"])
    one, two = (GatewayClient(p, retry_seconds=2) for p in paths)
    try:
        store.add("x")
        until = clock() + 90
        assert one.park_login(theirs, until, message="429") == until  # asks for another login: parks its own
        assert store.parks() == {mine: until}
        with pytest.raises(LoginParked) as refused:
            one.claim("agent-001", 60, login=theirs)
        assert refused.value.until == until and refused.value.login == mine
        assert one.agent_heartbeat("agent-001", "working") == until
        store.set_fleet_budget(tokens=100)
        two.spend(150)
        with pytest.raises(BudgetSpent):
            two.claim("agent-002", 60)
        store.set_fleet_budget()
        claim = two.claim("agent-002", 60)
        two.spend(10, claim=claim)
        one.spend(7, claim=claim)  # through another agent's socket: not its claim
        assert store.get(claim.number).spent_tokens == 10
        assert two.over_budget(claim, {"branch": "b", "usage": {"input_tokens": 9}}, "over").status == "over_budget"
        with pytest.raises(InvalidInput):
            two.park_login("not hex!", until)
    finally:
        one.close()
        two.close()
        gateway.close()
        store.close()
