"""Both backends, side by side: the same random calls give the same answers, field for field.

The state machine (test_issues_statemachine.py) checks each backend against a model of
the rules; this checks them against each other, so a difference the model does not
describe (an event's detail, an error's message, a timestamp) shows too.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.clock import FakeClock
from parallel_autopilot.errors import AutopilotError
from parallel_autopilot.issues import PRIORITIES, open_store

WORKERS = ["agent-001", "agent-002"]
ADD = st.tuples(st.just("add"), st.sampled_from(PRIORITIES), st.integers(1, 3))
CLAIM = st.tuples(st.just("claim"), st.sampled_from(WORKERS), st.sampled_from([1.0, 5.0]),
                  st.sampled_from([None, 2.0]))
FENCED = st.tuples(st.sampled_from(["renew", "complete", "fail", "release", "over_budget"]), st.integers(0, 7))
LOGINS = ["0123456789ab", "ba9876543210"]
# the verbs that make interesting states come more often than the rest
OPS = st.lists(st.one_of(
    ADD, ADD, CLAIM, CLAIM, FENCED, FENCED, FENCED,
    st.tuples(st.just("heartbeat"), st.sampled_from(WORKERS)),
    st.tuples(st.sampled_from(["release_agent"]), st.sampled_from(WORKERS)),
    st.tuples(st.just("stale"), st.sampled_from([1.0, 3.0])),
    st.tuples(st.sampled_from(["retry", "block"]), st.integers(1, 6)),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 1.5, 4.0, 40.0])),
    # budgets and one quota per login (issue 21)
    st.tuples(st.just("budget"), st.sampled_from([None, 1000, 5000])),
    st.tuples(st.just("spend"), st.sampled_from([0, 600, 2500])),
    st.tuples(st.just("park"), st.sampled_from(LOGINS), st.sampled_from([1.0, 30.0])),
    st.tuples(st.just("claim_as"), st.sampled_from(WORKERS), st.sampled_from(LOGINS)),
), min_size=8, max_size=40)


def _play(store, clock, ops):
    """Apply ``ops``; every answer (value or error class and message), then the whole state."""
    claims, answers = [], []
    for op in ops:
        kind = op[0]
        try:
            if kind == "add":
                answer = store.add(f"issue {len(answers)}", priority=op[1], max_attempts=op[2])
            elif kind == "claim":
                answer = store.claim(op[1], lease_seconds=op[2], stale_after=op[3])
                if answer is not None:
                    claims.append(answer)
            elif kind in ("renew", "complete", "fail", "release", "over_budget"):
                if not claims:
                    continue
                claim = claims[op[1] % len(claims)]
                args = {"renew": (claim, 5.0), "complete": (claim, {"branch": "b", "usage": {"t": 1}}),
                        "fail": (claim, "boom"), "release": (claim,),
                        "over_budget": (claim, {"branch": "b", "usage": {"input_tokens": 9}}, "over")}[kind]
                answer = getattr(store, kind)(*args)
            elif kind == "budget":
                answer = store.set_fleet_budget(tokens=op[1])
            elif kind == "spend":
                answer = store.spend(op[1])
            elif kind == "park":
                answer = store.park_login(op[1], clock() + op[2], agent="agent-001", message="429")
            elif kind == "claim_as":
                answer = store.claim(op[1], lease_seconds=5.0, login=op[2])
                if answer is not None:
                    claims.append(answer)
            elif kind == "heartbeat":
                answer = store.agent_heartbeat(op[1], "working", incarnation="i")
            elif kind == "release_agent":
                answer = store.release_agent(op[1])
            elif kind == "stale":
                answer = store.release_stale_agents(op[1])
            elif kind in ("retry", "block"):
                answer = getattr(store, kind)(op[1])
            else:
                answer = clock.advance(op[1])
        except AutopilotError as err:
            answer = (type(err).__name__, str(err))
        answers.append(answer)
    budget = store.fleet_budget()
    budget = budget and {k: v for k, v in budget.items() if k != "since"}
    return answers, store.list(), store.events(), store.agents(), store.counts(), store.parks(), budget


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(ops=OPS)
def test_both_backends_answer_alike(tmp_path_factory, pg_url, ops):
    lite_clock, pg_clock = FakeClock(), FakeClock()
    with open_store(tmp_path_factory.mktemp("parity"), clock=lite_clock, backoff_seconds=2.0) as lite, \
            open_store(pg_url, clock=pg_clock, backoff_seconds=2.0) as pg:
        # one database for every example (creating one costs more than the example): emptied
        pg._retrying(lambda conn: conn.run("TRUNCATE issues, events, agents, parks, budgets RESTART IDENTITY"))
        assert _play(lite, lite_clock, ops) == _play(pg, pg_clock, ops)
