"""Issue 21's queue rules, each case on both backends (the ``store`` fixture): dependencies
that wait for the merge, paths kept apart while in flight, and the aging order."""

from __future__ import annotations

import threading

import pytest

from support.clock import T0
from parallel_autopilot.errors import InvalidInput
from parallel_autopilot.issues import open_store
from parallel_autopilot.issues.fields import literal_prefix, overlap


def _done(store, worker="agent-001", commit=None):
    """Claim the best issue and complete it with a commit; the issue."""
    claim = store.claim(worker)
    assert claim is not None
    return store.complete(claim, {"branch": f"agent/{claim.number}", "commit": commit or f"c{claim.number}"})


def _merge(store, number):
    issue = store.get(number)
    return store.mark_merged(number, issue.commit, f"m{number}")


# -- dependencies ------------------------------------------------------------------


def test_a_dependent_is_claimed_only_once_its_predecessor_is_merged(store, clock):
    a = store.add("model")
    b = store.add("endpoint", depends_on=[a.number], priority="urgent")  # priority does not jump the wait
    assert b.depends_on == [a.number] and store.get(b.number).to_dict()["depends_on"] == [a.number]

    claim = store.claim("agent-001")
    assert claim.number == a.number
    assert store.claim("agent-002") is None  # a is claimed: b waits
    store.complete(claim, {"branch": "agent/1", "commit": "c1"})
    assert store.claim("agent-002") is None  # done is not merged: b still waits
    assert "issues.merge" in store.waits()[b.number]
    _merge(store, a.number)
    got = store.claim("agent-002")  # the merge made it claimable at once
    assert got is not None and got.number == b.number


def test_a_chain_and_a_diamond_start_in_order(store, clock):
    added = store.add_many([
        {"title": "A", "key": "a"},
        {"title": "B", "key": "b", "depends_on": ["a"]},
        {"title": "C", "key": "c", "depends_on": ["b"]},
        {"title": "top", "key": "top"},
        {"title": "left", "key": "left", "depends_on": ["top"]},
        {"title": "right", "key": "right", "depends_on": ["top"]},
        {"title": "bottom", "depends_on": ["left", "right"]},
    ])
    n = {i.title: i.number for i in added}
    assert store.get(n["bottom"]).depends_on == [n["left"], n["right"]]
    order = []
    while True:
        ready = []
        while (claim := store.claim(f"agent-{len(ready)}")) is not None:
            ready.append(claim)
        if not ready:
            break
        order.append(sorted(c.issue.title for c in ready))
        for claim in ready:
            store.complete(claim, {"branch": "b", "commit": f"c{claim.number}"})
            _merge(store, claim.number)
    assert order == [["A", "top"], ["B", "left", "right"], ["C", "bottom"]]
    assert store.counts()["merged"] == 7


def test_an_empty_predecessor_counts_as_landed(store, clock):
    a = store.add("nothing to change")
    b = store.add("after it", depends_on=[a.number])
    store.empty(store.claim("agent-001"), {"branch": "b"})
    assert store.claim("agent-001").number == b.number


@pytest.mark.parametrize("verdict", ["rejected", "dead", "blocked"])
def test_a_stuck_predecessor_leaves_its_dependents_blocked_with_the_reason(store, clock, verdict):
    a = store.add("first", max_attempts=1)
    b = store.add("second", depends_on=[a.number])
    c = store.add("third", depends_on=[b.number])
    if verdict == "blocked":
        store.block(a.number)
    else:
        claim = store.claim("agent-001")
        if verdict == "dead":
            store.fail(claim, "boom")
        else:
            store.complete(claim, {"branch": "b", "commit": "c1"})
            store.reject(a.number, "c1", "red on main")
    assert store.get(a.number).status == verdict
    assert store.claim("agent-001") is None
    waits = store.waits()
    assert waits[b.number].startswith(f"blocked by #{a.number} ({verdict})")
    assert waits[c.number] == f"waiting for #{b.number} (ready)"
    # retried and merged, the predecessor lets them go
    store.retry(a.number)
    _done(store)
    _merge(store, a.number)
    assert store.claim("agent-001").number == b.number


def test_add_refuses_an_unknown_predecessor_and_adds_nothing(store, clock):
    store.add("one")
    before = (store.list(), store.events())
    with pytest.raises(InvalidInput, match=r"depends on #9, which does not exist.*nothing added"):
        store.add_many([{"title": "fine"}, {"title": "bad", "depends_on": [1, 9]}])
    assert (store.list(), store.events()) == before


def test_add_refuses_a_cycle_in_one_line_and_adds_nothing(store, clock):
    before = (store.list(), store.events())
    with pytest.raises(InvalidInput) as err:
        store.add_many([{"title": "x", "key": "x", "depends_on": ["z"]},
                        {"title": "y", "key": "y", "depends_on": ["x"]},
                        {"title": "z", "key": "z", "depends_on": ["y"]}])
    message = str(err.value)
    assert "cycle" in message and "nothing added" in message and "\n" not in message
    assert "x -> " in message or "y -> " in message or "z -> " in message
    for bad in ([{"title": "me", "key": "me", "depends_on": ["me"]}],
                [{"title": "nokey", "depends_on": ["ghost"]}],
                [{"title": "a", "number": 40, "depends_on": [41]}, {"title": "b", "number": 41, "depends_on": [40]}]):
        with pytest.raises(InvalidInput, match="nothing added"):
            store.add_many(bad)
    assert (store.list(), store.events()) == before


# -- paths ---------------------------------------------------------------------------

OVERLAPS = [
    ("src/parser/*.py", "src/parser/lexer.py", True),
    ("src/parser/*.py", "src/parser", True),
    ("src/*.py", "src/parser/lexer.py", True),  # fnmatch's * crosses '/'
    ("src/parser/*.py", "src/printer/*.py", False),
    ("docs/a.md", "docs/b.md", False),
    ("docs/a.md", "docs/a.md", True),
    ("*", "anything/at/all", True),
    ("src/p?rser.py", "src/printer.py", True),  # conservative: literal prefixes 'src/p' and 'src/printer.py'
    ("tests/test_[ab].py", "tests/test_c.py", True),  # conservative
    ("lib/x.py", "src/x.py", False),
]


@pytest.mark.parametrize("a,b,expected", OVERLAPS)
def test_the_overlap_rule_is_the_claims(store, clock, a, b, expected):
    """The Python rule and the claim's SQL agree, and the rule never misses a real overlap."""
    assert overlap(a, b) is expected and overlap(b, a) is expected
    first = store.add("first", paths=[a])
    second = store.add("second", paths=[b])
    assert store.claim("agent-001").number == first.number
    got = store.claim("agent-002")
    assert (got is None) is expected
    if got is not None:
        assert got.number == second.number


def test_literal_prefix_is_a_prefix_of_every_match():
    import fnmatch

    for glob, names in {"src/*/x.py": ["src/a/x.py", "src/x.py/x.py"], "a?b": ["axb"], "[xy]z": ["xz"],
                        "plain.txt": ["plain.txt"]}.items():
        for name in names:
            assert fnmatch.fnmatch(name, glob) and name.startswith(literal_prefix(glob))


def test_overlapping_issues_never_run_at_once_and_wait_for_the_merge(store, clock):
    a = store.add("parser A", paths=["src/parser/*.py"])
    b = store.add("parser B", paths=["./src/parser/lexer.py"])
    c = store.add("printer", paths=["src/printer/*.py"])
    d = store.add("no paths")
    assert store.get(b.number).paths == ["src/parser/lexer.py"]
    first = store.claim("agent-001")
    assert first.number == a.number
    # b overlaps a (claimed): the next ones go past it
    assert [store.claim("agent-002").number, store.claim("agent-003").number] == [c.number, d.number]
    assert store.claim("agent-004") is None
    assert store.waits()[b.number] == f"waiting: #{a.number} (claimed) touches src/parser/*.py"
    store.complete(first, {"branch": "a", "commit": "ca"})
    assert store.claim("agent-004") is None  # done, not merged: still in flight
    _merge(store, a.number)
    assert store.claim("agent-004").number == b.number


def test_a_failed_attempt_frees_its_paths(store, clock):
    a = store.add("A", paths=["src/x.py"])
    b = store.add("B", paths=["src/x.py"])
    store.fail(store.claim("agent-001"), "boom")  # a: failed, due after its backoff
    assert store.claim("agent-002").number == b.number


def test_conflicting_files_recorded_by_the_merge_queue_hold_the_retry_back(store, clock):
    a = store.add("A")
    b = store.add("B", paths=["src/other.py"])
    c = store.add("C")
    for claim in (store.claim("agent-001"), store.claim("agent-002")):
        store.complete(claim, {"branch": "x", "commit": f"c{claim.number}"})
    # the merge queue: A conflicted in src/core.py and is re-queued
    store.add_paths(a.number, ["src/core.py", "src/other.py"])
    store.reject(a.number, f"c{a.number}", "conflicts in src/core.py", requeue=True)
    assert store.get(a.number).paths == ["src/core.py", "src/other.py"]
    # B (done, not merged) touches src/other.py: A's retry waits; C goes first
    assert store.claim("agent-003").number == c.number
    assert store.claim("agent-004") is None
    _merge(store, b.number)
    assert store.claim("agent-004").number == a.number


def test_concurrent_claimers_never_take_two_overlapping_issues(queue_target, clock):
    stores = [open_store(queue_target, clock=clock) for _ in range(4)]
    try:
        for round_ in range(15):
            for k in range(4):
                stores[0].add(f"r{round_} k{k}", paths=[f"round{round_}/*"])
            barrier = threading.Barrier(4)
            got = []

            def claim(s, i):
                barrier.wait()
                got.append(s.claim(f"agent-{i}"))

            threads = [threading.Thread(target=claim, args=(s, i)) for i, s in enumerate(stores)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            claimed = [c for c in got if c is not None]
            assert len(claimed) == 1, [c.number for c in claimed]
            stores[0].release(claimed[0])
            stores[0].block(claimed[0].number)
            for issue in stores[0].list("ready"):
                stores[0].block(issue.number)
    finally:
        for s in stores:
            s.close()


# -- aging ---------------------------------------------------------------------------


def test_within_a_priority_the_oldest_goes_first_even_under_a_stream(store, clock):
    old = store.add("old", priority="medium")
    for _ in range(5):
        clock.advance(10)
        store.add("newer", priority="medium")
        claim = store.claim("agent-001")
        if claim.number == old.number:
            break
        store.complete(claim, {"branch": "b"})
    assert claim.number == old.number and clock.now == T0 + 10


def _stream(store, clock, tick: float, ticks: int, low_number: int) -> float | None:
    """Each tick: one new urgent issue arrives, one agent takes the best. When the low one was claimed."""
    for _ in range(ticks):
        clock.advance(tick)
        store.add("urgent newcomer", priority="urgent")
        claim = store.claim("agent-001")
        store.complete(claim, {"branch": "b", "commit": f"c{claim.number}"})
        if claim.number == low_number:
            return claim.issue.claimed_at
    return None


def test_an_old_low_issue_is_claimed_within_the_documented_bound(queue_target, clock):
    """store.AGING: an issue of rank r goes ahead of everything added r × aging_seconds after it."""
    aging, tick = 600.0, 60.0
    with open_store(queue_target, clock=clock, aging_seconds=aging) as store:
        low = store.add("old and low", priority="low")  # rank 3
        claimed_at = _stream(store, clock, tick, 60, low.number)
        assert claimed_at is not None
        assert claimed_at - low.created_at <= 3 * aging + tick
        assert claimed_at - low.created_at > 3 * aging - tick  # not before the rule says, either


def test_without_aging_a_stream_of_urgent_issues_starves_a_low_one(queue_target, clock):
    """The bound above is aging's doing: with a much longer aging the same stream starves it."""
    with open_store(queue_target, clock=clock, aging_seconds=1e9) as store:
        low = store.add("old and low", priority="low")
        assert _stream(store, clock, 60.0, 60, low.number) is None


def test_the_claim_order_is_rank_times_aging_plus_age(queue_target, clock):
    with open_store(queue_target, clock=clock, aging_seconds=100.0) as store:
        low = store.add("low at 0", priority="low", now=T0)  # key 300
        high = store.add("high at 150", priority="high", now=T0 + 150)  # key 250
        urgent = store.add("urgent at 290", priority="urgent", now=T0 + 290)  # key 290
        urgent_late = store.add("urgent at 301", priority="urgent", now=T0 + 301)  # key 301
        clock.advance(400)
        order = [store.claim("agent-001").number for _ in range(4)]
        assert order == [high.number, urgent.number, low.number, urgent_late.number]


def test_aging_must_be_positive(tmp_path):
    with pytest.raises(InvalidInput, match="aging_seconds"):
        open_store(tmp_path / "s", aging_seconds=0)


def test_the_aging_setting_reaches_the_stores_that_claim(git_repo):
    """autopilot.aging_seconds: the host's store, and the environment of the containers (the gateway's claim)."""
    from pathlib import Path

    import yaml

    import parallel_autopilot
    from parallel_autopilot import config, fleet
    from parallel_autopilot.containers import provision

    settings = config.load({}, repo=str(git_repo), aging_seconds=120)
    assert fleet.store_for(settings).aging_seconds == 120.0
    assert provision.compose_env(settings, strict=False)["AUTOPILOT_AGING_SECONDS"] == "120"
    compose = Path(parallel_autopilot.__file__).parent.parent / "docker" / "autopilot" / "docker-compose.yml"
    gateway = yaml.safe_load(compose.read_text())["services"]["gateway"]
    assert "AUTOPILOT_AGING_SECONDS" in gateway["environment"]
