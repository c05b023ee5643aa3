"""Scenario ``stop``: ``Fleet.stop`` of N agents, each in the middle of an issue.

Each round starts N agents and gives each a long issue (a script sleeping far
longer than the round); once all N are claimed, ``Fleet.stop`` runs. Measured:
seconds until it returns with every container gone, and until the last of the
N claims is released (a watcher reads the queue every 50 ms meanwhile); the
claims still held afterwards must be zero.

Baseline, same round: N bare containers of the same image (``sleep`` under
``--init``), stopped together with ``<grace>`` seconds of grace (what one
``docker stop -t <grace>`` of N does) and removed: what Docker alone needs to
stop and remove N containers.
"""

from __future__ import annotations

import threading
from typing import Any

from ..containers import daemon
from . import stats
from .sandbox import Sandbox, docker_step, wait_for

TITLE = "stop: agents.stop of N agents mid-work"
#: the runner records it skipped where the fleet cannot run (sandbox.fleet_problem)
NEEDS_FLEET = True
LONG_SLEEP = 3600


def plan(ctx) -> dict[str, Any]:
    """Agents per round and rounds."""
    return {"agents": ctx.pick(2, 3), "rounds": ctx.repeats, "settle_seconds": 0.5}


class ClaimWatcher(threading.Thread):
    """Reads the queue every ``poll`` seconds; records when none of ``numbers`` is claimed."""

    def __init__(self, ctx, box: Sandbox, numbers: set[int], t0: float, poll: float = 0.05):
        super().__init__(daemon=True, name="bench-claim-watcher")
        self.ctx, self.store, self.numbers, self.t0, self.poll = ctx, box.store(), numbers, t0, poll
        self.released_at: float | None = None
        self.halt = threading.Event()

    def held(self) -> int:
        return sum(1 for i in self.store.list("claimed") if i.number in self.numbers)

    def run(self) -> None:
        while not self.halt.is_set():
            if self.held() == 0:
                self.released_at = self.ctx.clock() - self.t0
                return
            self.halt.wait(self.poll)


def ours(ctx, box: Sandbox, n: int, label: str) -> dict[str, Any]:
    """Start N, give each a long issue, stop them all; seconds to gone and to released."""
    box.start(n, progress=lambda _: None)
    store = box.store()
    numbers = set(box.add_sleepers(n, LONG_SLEEP, label))
    wait_for(lambda: len({i.owner for i in store.list("claimed") if i.number in numbers}) == n, 120,
             f"{n} agents each working on an issue", sleep=ctx.sleep)
    ctx.sleep(plan(ctx)["settle_seconds"])
    t0 = ctx.clock()
    watcher = ClaimWatcher(ctx, box, numbers, t0)
    watcher.start()
    box.stop(progress=ctx.progress)
    gone = ctx.clock() - t0
    watcher.join(30)
    watcher.halt.set()
    left = [a.id for a in box.agents()]
    if left:
        raise RuntimeError(f"agents still there after Fleet.stop: {', '.join(left)}")
    held = watcher.held()
    released = watcher.released_at if watcher.released_at is not None else gone
    for number in numbers:  # keep them out of the next round's way
        if store.get(number).status in ("ready", "failed"):
            store.block(number)
    return {"gone": gone, "released": released, "claims_left": held}


def bare(ctx, box: Sandbox, n: int, label: str, grace: int) -> float:
    """N bare containers started, then stopped with one ``docker stop -t grace`` and removed."""
    names = [box.bare_name(f"{label}-{i:03d}") for i in range(1, n + 1)]
    for name in names:
        box.docker_run(name, command=["sleep", "infinity"])
    t0 = ctx.clock()
    # the baseline stays one `docker stop -t grace` of all N: docker_client.stop sends the N
    # stop requests together, as the CLI does, so it is still one grace period, not N
    with docker_step("docker stop"):
        daemon.stop(names, grace)
    box.docker_rm(names)
    return ctx.clock() - t0


def run(ctx) -> dict[str, Any]:
    """Each round: ours and bare, alternating which goes first."""
    params = plan(ctx)
    n = params["agents"]
    results, baseline = [], []
    with Sandbox(ctx, "stop") as box:
        grace = int(box.settings.stop_grace_seconds)
        for r in range(ctx.repeats):
            for side in (("ours", "bare") if r % 2 == 0 else ("bare", "ours")):
                ctx.progress(f"{side}: stop {n} agents, round {r + 1}/{ctx.repeats}")
                if side == "ours":
                    results.append(ours(ctx, box, n, f"round {r + 1}"))
                else:
                    baseline.append(bare(ctx, box, n, f"r{r}", grace))
    gone = [x["gone"] for x in results]
    released = [x["released"] for x in results]
    left = [x["claims_left"] for x in results]
    limit = grace + 5
    case = f"{n} agents working"
    rows = [
        stats.row(case, "all containers gone", "s", gone, baseline=baseline,
                  baseline_label="bare docker stop -t <grace> + docker rm of N containers",
                  target=f"<= grace + 5 s ({limit} s), zero claims left",
                  met=stats.summary(gone)["median"] <= limit and not any(left)),
        stats.row(case, "every claim released", "s", released,
                  note=f"claims left after Fleet.stop: {left} (per round)"),
    ]
    notes = [f"stop grace period {grace} s; claims left after Fleet.stop, per round: {left}"]
    return stats.scenario("stop", TITLE, rows, params={**params, "grace_seconds": grace}, notes=notes,
                          details={"rounds": results, "baseline": baseline})
