"""Scenario ``recovery``: an agent SIGKILLed (``docker kill``) in the middle of an issue.

Two cases. **Busy queue** (the case users live in): 3 agents all working, 3x
more issues than agents, each sleeping B seconds; the container of one working
agent is killed; always with the default 15-minute lease, whatever the run's
size, since only the stale-owner rule of the claim can bring the issue back
early. Its figure is the stale window plus the wait until some busy agent
finishes its issue and claims again (at most B seconds).
**Idle peer**: two agents; one issue whose script sleeps S seconds is added;
once it is claimed and its script runs, the container of the agent holding it is killed.
Measured from the kill: seconds until the issue is claimed again (by whichever
agent; the events say what released it) and until it is done. Nothing is done
by hand: recovery is the tool's own (a live agent's sweep of silent agents, the
orchestrator, or a restarted agent releasing its previous incarnation's claim).

Baseline: the design's bound, the lease expiry (``lease_seconds``, 15 minutes by
default), after which any agent could claim the issue again; it is a setting,
not a measurement. After each round the killed agent is started again (not timed).

A quick run uses a lease of :data:`QUICK_LEASE` seconds, so that whatever path
frees the issue first (the sweep of silent agents, or the lease expiring) does
so within seconds; a full run keeps the user's settings (the defaults: 15 minutes).
"""

from __future__ import annotations

from typing import Any

from ..containers import daemon
from . import stats
from .sandbox import Sandbox, docker_step, wait_for

TITLE = "recovery: an agent SIGKILLed mid-issue"
#: the runner records it skipped where the fleet cannot run (sandbox.fleet_problem)
NEEDS_FLEET = True
TARGET_SECONDS = 10.0
TIMEOUT = 300.0
QUICK_LEASE = 6


def plan(ctx) -> dict[str, Any]:
    """Agents, seconds the issue's script sleeps, rounds."""
    return {"agents": 2, "sleep_seconds": ctx.pick(2, 5), "rounds": ctx.repeats, "settle_seconds": 0.5,
            "busy_agents": 3, "busy_issues_per_agent": 3, "busy_sleep_seconds": ctx.pick(2, 3)}


def kill(container: str) -> None:
    """``docker kill`` (SIGKILL) of ``container``; RuntimeError naming it if Docker refuses."""
    with docker_step(f"docker kill {container}"):
        daemon.kill(container)


def busy_round(ctx, box: Sandbox, label: str) -> dict[str, Any]:
    """Every agent working, more issues ready: kill one working agent; time its issue's way back."""
    params = plan(ctx)
    store = box.store()
    numbers = box.add_sleepers(params["busy_agents"] * params["busy_issues_per_agent"],
                               params["busy_sleep_seconds"], label)

    def all_working():
        working = [a for a in box.agents() if a.issue in numbers]
        return working if len(working) == params["busy_agents"] else None

    working = wait_for(all_working, 120, "every agent working", sleep=ctx.sleep)
    ctx.sleep(params["settle_seconds"])
    victim = working[0]
    first = store.get(victim.issue)
    ready = store.counts()["ready"]
    ctx.progress(f"{label}: docker kill {victim.container} (holding #{first.number}, {ready} issues ready)")
    t0 = ctx.clock()
    kill(victim.container)
    again = wait_for(lambda: (lambda i: i if i.token > first.token else None)(store.get(first.number)),
                     TIMEOUT, f"issue #{first.number} claimed again after the kill", poll=0.1, sleep=ctx.sleep)
    t_claim = ctx.clock() - t0
    done = wait_for(lambda: (lambda i: i if i.status in ("done", "dead") else None)(store.get(first.number)),
                    TIMEOUT, f"issue #{first.number} done after the kill", poll=0.1, sleep=ctx.sleep)
    t_done = ctx.clock() - t0
    if done.status != "done":
        raise RuntimeError(f"issue #{first.number} ended {done.status}: {done.error}")
    wait_for(lambda: all(store.get(n).status == "done" for n in numbers), TIMEOUT, "the busy queue drained",
             sleep=ctx.sleep)
    how = sorted({e.kind for e in store.events(first.number) if e.kind in ("abandoned", "expired")
                  or e.kind.startswith("released")})
    ctx.progress(f"{label}: restarting {victim.id}")
    box.start(params["busy_agents"], progress=lambda _: None)
    return {"claimed_again": t_claim, "done": t_done, "victim": victim.id, "claimed_by": again.owner,
            "ready_at_kill": ready, "freed_by": how, "issue": first.number}


def one_round(ctx, box: Sandbox, sleep: float, label: str) -> dict[str, Any]:
    """Kill the agent working on a fresh issue; time the way back to done."""
    store = box.store()
    (number,) = box.add_sleepers(1, sleep, label)
    first = wait_for(lambda: (lambda i: i if i.status == "claimed" else None)(store.get(number)), 120,
                     f"issue #{number} claimed", sleep=ctx.sleep)
    ctx.sleep(plan(ctx)["settle_seconds"])  # let the agent start the script: mid-issue
    victim = first.owner
    container = next((a.container for a in box.agents() if a.id == victim), None)
    if not container:
        raise RuntimeError(f"no container for {victim}, which claimed #{number}")
    last_event = max((e.id for e in store.events(number)), default=0)
    ctx.progress(f"{label}: docker kill {container} (holding #{number})")
    t0 = ctx.clock()
    kill(container)

    def reclaimed():
        issue = store.get(number)
        return issue if issue.token > first.token and issue.status in ("claimed", "done") else None

    again = wait_for(reclaimed, TIMEOUT, f"issue #{number} claimed again after the kill", sleep=ctx.sleep)
    t_claim = ctx.clock() - t0
    done = wait_for(lambda: (lambda i: i if i.status in ("done", "dead") else None)(store.get(number)),
                    TIMEOUT, f"issue #{number} done after the kill", poll=0.1, sleep=ctx.sleep)
    t_done = ctx.clock() - t0
    if done.status != "done":
        raise RuntimeError(f"issue #{number} ended {done.status}: {done.error}")
    events = [e for e in store.events(number) if e.id > last_event]
    released = [f"{e.kind} ({e.detail})" if e.detail else e.kind for e in events
                if e.kind.startswith("released") or e.kind in ("expired", "abandoned")]
    ctx.progress(f"{label}: restarting {victim}")
    box.start(plan(ctx)["agents"], progress=lambda _: None)
    return {"claimed_again": t_claim, "done": t_done, "victim": victim, "claimed_by": again.owner,
            "released_by": released, "issue": number}


def run(ctx) -> dict[str, Any]:
    """Each round: kill, measure, restart."""
    params = plan(ctx)
    busy = []
    with Sandbox(ctx, "recovery-busy") as box:
        lease_busy = float(box.settings.lease_seconds)
        ctx.progress(f"busy queue: starting {params['busy_agents']} agents (lease {lease_busy:g} s)")
        box.start(params["busy_agents"])
        for r in range(ctx.repeats):
            busy.append(busy_round(ctx, box, f"busy round {r + 1}/{ctx.repeats}"))
    rounds = []
    overrides = {"lease_seconds": QUICK_LEASE} if ctx.quick else {}
    with Sandbox(ctx, "recovery", **overrides) as box:
        lease = float(box.settings.lease_seconds)
        ctx.progress(f"starting {params['agents']} agents")
        box.start(params["agents"])
        for r in range(ctx.repeats):
            rounds.append(one_round(ctx, box, params["sleep_seconds"], f"round {r + 1}/{ctx.repeats}"))
    claimed = [x["claimed_again"] for x in rounds]
    done = [x["done"] for x in rounds]
    bound = [lease] * len(rounds)
    median_claim = stats.summary(claimed)["median"]
    paths = sorted({p.split(" (")[0] for x in rounds for p in x["released_by"]})
    busy_claimed = [x["claimed_again"] for x in busy]
    busy_label = (f"busy queue: 1 of {params['busy_agents']} working agents killed, "
                  f"{params['busy_issues_per_agent']}x issues per agent")
    rows = [
        stats.row(busy_label, "claimed again after the kill", "s", busy_claimed,
                  baseline=[lease_busy] * len(busy), baseline_label=f"lease expiry ({lease_busy:g} s, the default)",
                  target=f"<= {TARGET_SECONDS:g} s with the default lease",
                  met=stats.summary(busy_claimed)["median"] <= TARGET_SECONDS),
        stats.row(busy_label, "done after the kill", "s", [x["done"] for x in busy],
                  baseline=[lease_busy + params["busy_sleep_seconds"]] * len(busy),
                  baseline_label=f"lease expiry + the issue's {params['busy_sleep_seconds']} s"),
        stats.row("1 of 2 agents killed", "claimed again after the kill", "s", claimed, baseline=bound,
                  baseline_label=f"design bound: lease expiry ({lease:g} s)",
                  target=f"<= {TARGET_SECONDS:g} s with the default settings",
                  met=None if ctx.quick else median_claim <= TARGET_SECONDS),
        stats.row("1 of 2 agents killed", "done after the kill", "s", done,
                  baseline=[lease + params["sleep_seconds"]] * len(rounds),
                  baseline_label=f"lease expiry + the issue's {params['sleep_seconds']} s"),
    ]
    notes = [f"busy queue: issues sleep {params['busy_sleep_seconds']} s; freed by: "
             f"{', '.join(sorted({k for x in busy for k in x['freed_by']})) or 'nothing recorded'}; the figure is the "
             "stale window (6 s) plus the wait until a busy agent finishes its issue",
             f"idle peer: issue script: sleep {params['sleep_seconds']}; killed {params['settle_seconds']} s after "
             f"its claim; lease {lease:g} s{' (quick run)' if ctx.quick else ''}; "
             f"freed by: {', '.join(paths) or 'nothing recorded'}"]
    return stats.scenario("recovery", TITLE, rows, params={**params, "lease_seconds": lease}, notes=notes,
                          details={"rounds": rounds, "busy_rounds": busy})
