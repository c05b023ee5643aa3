"""Recovery on a BUSY queue, in real containers, with the DEFAULT 15-minute lease (issue 11).

Every agent is working and more issues are ready when one agent's container is
SIGKILLed (`docker kill`). Its issue must come back within seconds - taken over
by the next claim once its heartbeat has been silent for the stale window -
and ahead of the newer ready issues, not after the whole lease.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from parallel_autopilot import config, fleet
from parallel_autopilot.issues import DEFAULT_LEASE_SECONDS
from test_fleet_docker import drained, sample, wait_for  # noqa: F401 - sample is a fixture

pytestmark = [pytest.mark.docker, pytest.mark.slow]

#: What the runtime uses unless AUTOPILOT_STALE_SECONDS says otherwise.
STALE_SECONDS = 6.0


def test_sigkilled_agents_issue_is_taken_over_within_seconds_while_every_agent_is_busy(sample):
    repo, make = sample
    settings = make(lease_seconds=DEFAULT_LEASE_SECONDS)
    assert settings.lease_seconds == config.DEFAULTS["lease_seconds"] == 900
    store = fleet.store_for(settings)
    store.add_many([{"title": f"busy {i}", "script": f"sleep 2; echo {i} > file-{i}.txt"} for i in range(1, 13)])
    fleet.Fleet.open(settings).start(3, progress=lambda _: None)

    # every agent busy, 9 more issues ready
    working = wait_for(lambda: (lambda a: a if len(a) == 3 else None)(
        [x for x in fleet.Fleet.open(settings).list() if x.issue is not None]), 60, 0.1, "three working agents")
    victim = working[1]
    issue = store.get(victim.issue)
    assert store.counts()["ready"] >= 6
    subprocess.run(["docker", "kill", victim.container], check=True, capture_output=True)  # SIGKILL
    killed_at = time.time()

    again = wait_for(lambda: (lambda i: i if i.token > issue.token else None)(store.get(issue.number)),
                     60, 0.1, f"#{issue.number} to be claimed again")
    claimed_again = next(e.at for e in reversed(store.events(issue.number)) if e.kind == "claimed")
    assert again.owner != victim.id
    assert claimed_again - killed_at < 10.0  # the issue's acceptance figure: seconds, not the 900 s lease
    kinds = [e.kind for e in store.events(issue.number)]
    assert "abandoned" in kinds and "expired" not in kinds

    # ahead of newer issues: once the victim counted as silent, the next claim anyone made was this one
    silent_since = next(r.heartbeat_at for r in store.agents() if r.id == victim.id) + STALE_SECONDS
    between = [e for e in store.events() if e.kind == "claimed" and silent_since < e.at < claimed_again]
    assert between == []

    # the fleet sees the killed container for what it is
    dead = next(a for a in fleet.Fleet.open(settings).list() if a.id == victim.id)
    assert (dead.state, dead.problem, dead.issue) == ("exited", "killed (exit 137)", None)

    wait_for(lambda: drained(store), 120, what="the queue to drain")
    done = sorted(e.issue for e in store.events() if e.kind == "done")
    assert done == list(range(1, 13))  # every issue exactly once, the taken-over one included
    assert store.get(issue.number).attempts == 2

    # agents.start --n 3 brings the fleet back to three
    back = fleet.Fleet.open(settings).start(3, progress=lambda _: None)
    assert [(a.id, a.state, a.problem) for a in back] == [
        (f"agent-00{i}", "running", None) for i in (1, 2, 3)]
