"""The ``backlog`` benchmark scenario's parts that need no Docker: the backlog it files and how
it counts conflict rejections and wasted agent-seconds from the audit trail."""

from __future__ import annotations

from parallel_autopilot.bench import SCENARIOS, backlog
from parallel_autopilot.issues import IssueStore
from support.clock import FakeClock


def test_the_backlog_is_24_issues_with_hints_only_when_on(tmp_path):
    assert "backlog" in SCENARIOS
    on, off = backlog.backlog(True), backlog.backlog(False)
    assert len(on) == len(off) == 24
    assert not any("depends_on" in i or "paths" in i for i in off)
    store = IssueStore(tmp_path / "a.db")
    added = store.add_many(on)
    by_title = {i.title: i for i in added}
    assert by_title["chain 4"].depends_on == [by_title["chain 3"].number]
    assert sorted(by_title["diamond bottom"].depends_on) == sorted(
        [by_title["diamond left"].number, by_title["diamond right"].number])
    assert by_title["pair 0 a"].paths == by_title["pair 0 b"].paths == ["pair_0.txt"]


def test_waste_counts_failed_and_rejected_attempts_and_conflicts(tmp_path):
    clock = FakeClock()
    store = IssueStore(tmp_path / "a.db", clock=clock, backoff_seconds=0)
    one, two, three = (store.add(t).number for t in ("fails once", "conflicts once", "clean"))
    claim = store.claim("a")  # one: fails after 5 s
    clock.advance(5)
    store.fail(claim, "exit 3")
    claim = store.claim("a")  # one again: done after 2 s (kept)
    clock.advance(2)
    store.complete(claim, {"branch": "b", "commit": "c1"})
    claim = store.claim("a")  # two: done after 3 s, then rejected for a conflict (re-queued)
    clock.advance(3)
    store.complete(claim, {"branch": "b", "commit": "c2"})
    store.reject(two, "c2", "merging it into main conflicts in: pair_0.txt", requeue=True)
    claim = store.claim("a")  # two again: done after 4 s (kept)
    clock.advance(4)
    store.complete(claim, {"branch": "b", "commit": "c2b"})
    claim = store.claim("a")  # three: done after 1 s, kept
    clock.advance(1)
    store.complete(claim, {"branch": "b", "commit": "c3"})
    assert backlog.waste(store, [one, two, three]) == (1, 8.0, 5)
