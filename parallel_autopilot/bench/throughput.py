"""Scenario ``throughput``: makespan of M issues whose script sleeps S seconds, with N agents.

The agents run (healthy, idle) before the clock starts; each round adds M fresh
issues at once and measures until the last is done: the makespan a user of a
running fleet sees, the agents' idle polling included. N grows 1, 2, 3, 5, 10
(``Fleet.start`` keeps the running ones). Against:

- the ideal makespan ``ceil(M/N) x S`` (sleep-bound issues, zero overhead);
- N = 1 in the same round number: speedup = makespan(1) / makespan(N), pair by pair.

Parallel efficiency is ideal / makespan.
"""

from __future__ import annotations

import math
from typing import Any

from . import stats
from .sandbox import Sandbox

TITLE = "throughput: makespan of M sleeping issues with N agents"
#: the runner records it skipped where the fleet cannot run (sandbox.fleet_problem)
NEEDS_FLEET = True
ROUND_TIMEOUT = 600.0
TARGET_EFFICIENCY = {5: 90.0, 10: 85.0}  # percent, issue 6
TARGET_SPEEDUP = 0.9  # x N, issue 3 (N = 3 and 5)


def plan(ctx) -> dict[str, Any]:
    """Agent counts, issues per round (M), seconds each issue sleeps (S), rounds."""
    return {"agents": ctx.pick([1, 2], [1, 2, 3, 5, 10]), "issues": ctx.pick(4, 30),
            "sleep_seconds": ctx.pick(1, 2), "rounds": ctx.repeats}


def ideal(m: int, n: int, s: float) -> float:
    """Makespan of M issues of S seconds on N agents with no overhead at all."""
    return math.ceil(m / n) * s


def makespan(ctx, box: Sandbox, m: int, s: float, label: str) -> float:
    """Add M sleepers, return seconds until all are done (fails on a failed or dead issue)."""
    return box.seconds_until_done(box.add_sleepers(m, s, label), ROUND_TIMEOUT, f"{m} issues with {label}")


def run(ctx) -> dict[str, Any]:
    """For N = 1, 2, ...: start N agents, then measure each round's makespan."""
    params = plan(ctx)
    m, s, counts = params["issues"], params["sleep_seconds"], params["agents"]
    spans: dict[int, list[float]] = {}
    starts: dict[int, float] = {}
    with Sandbox(ctx, "throughput") as box:
        for n in counts:
            ctx.progress(f"starting {n} agent(s)")
            t0 = ctx.clock()
            box.start(n)
            starts[n] = round(ctx.clock() - t0, 2)
            for r in range(ctx.repeats):
                ctx.progress(f"N={n}: {m} issues x {s}s, round {r + 1}/{ctx.repeats}")
                spans.setdefault(n, []).append(makespan(ctx, box, m, s, f"N={n} round {r + 1}"))
    rows = []
    one = spans[counts[0]] if counts[0] == 1 else None
    for n in counts:
        best = [ideal(m, n, s)] * len(spans[n])
        rows.append(stats.row(f"N={n}", "makespan", "s", spans[n], baseline=best,
                              baseline_label="ideal ceil(M/N) x S", x=n))
        if one is not None:
            speedup = [a / b for a, b in zip(one, spans[n])]
            perfect = [ideal(m, 1, s) / ideal(m, n, s)] * len(speedup)
            judged = n in (3, 5)
            rows.append(stats.row(f"N={n}", "speedup over N=1", "x", speedup, baseline=perfect,
                                  baseline_label="ideal speedup ceil(M/1) / ceil(M/N)",
                                  target=f">= {TARGET_SPEEDUP:g} x N" if judged else None,
                                  met=stats.summary(speedup)["median"] >= TARGET_SPEEDUP * n if judged else None,
                                  x=n))
        efficiency = [100.0 * ideal(m, n, s) / span for span in spans[n]]
        goal = TARGET_EFFICIENCY.get(n)
        rows.append(stats.row(f"N={n}", "parallel efficiency", "%", efficiency,
                              target=f">= {goal:g}%" if goal else None,
                              met=stats.summary(efficiency)["median"] >= goal if goal else None, x=n))
    notes = [f"M = {m} issues per round, each `sleep {s}`; agents healthy and idle before each round "
             f"(poll {box.settings.poll_seconds}s +-30%); speedup pairs round r of N=1 with round r of N",
             "time to start N agents (not in the makespan): "
             + ", ".join(f"N={n}: {t} s" for n, t in starts.items())]
    return stats.scenario("throughput", TITLE, rows, params=params, notes=notes,
                          details={"start_seconds": starts})
