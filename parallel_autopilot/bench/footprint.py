"""Scenario ``footprint``: memory of one idle agent container (runtime only, no model CLI).

One agent is started and left idle (an empty queue: it polls); beside it, a
bare container of the same image with the same limits runs an idle Python
interpreter (``time.sleep``) - the floor any Python agent pays. Both are
sampled with Docker's stats a few times, one second apart: "used" is the
cgroup's usage minus inactive page cache (what ``docker stats`` shows), "RSS"
is anonymous memory. Sample ``i`` of ours is paired with sample ``i`` of bare.
"""

from __future__ import annotations

from typing import Any

from . import stats
from .sandbox import Sandbox, container_memory

TITLE = "footprint: memory of one idle agent"
#: the runner records it skipped where the fleet cannot run (sandbox.fleet_problem)
NEEDS_FLEET = True
TARGET_MB = 50.0
MB_PER_MIB = 1.048576


def plan(ctx) -> dict[str, Any]:
    """Samples and how long the agent idles first."""
    return {"samples": max(ctx.repeats, 3), "settle_seconds": ctx.pick(2, 5)}


def run(ctx) -> dict[str, Any]:
    """Start one agent and one bare interpreter, let them settle, sample both."""
    params = plan(ctx)
    ours, bare = [], []
    with Sandbox(ctx, "footprint") as box:
        ctx.progress("starting one agent")
        (agent,) = box.start(1)
        owner = box.repo.stat()
        baseline = box.bare_name("python")
        box.docker_run(baseline, user=f"{owner.st_uid}:{owner.st_gid}",
                       command=["python3", "-c", "import time; time.sleep(10**6)"])
        ctx.progress(f"idle for {params['settle_seconds']} s")
        ctx.sleep(params["settle_seconds"])
        for k in range(params["samples"]):
            ctx.progress(f"sample {k + 1}/{params['samples']}")
            ours.append(container_memory(agent.container))
            bare.append(container_memory(baseline))
            ctx.sleep(1)
    used = [x["used"] * MB_PER_MIB for x in ours]
    rows = [
        stats.row("1 idle agent", "memory used", "MB", used, baseline=[x["used"] * MB_PER_MIB for x in bare],
                  baseline_label="idle python3 in a bare container of the same image",
                  target=f"<= {TARGET_MB:g} MB", met=stats.summary(used)["median"] <= TARGET_MB),
        stats.row("1 idle agent", "anonymous memory (RSS)", "MB", [x["rss"] * MB_PER_MIB for x in ours],
                  baseline=[x["rss"] * MB_PER_MIB for x in bare],
                  baseline_label="idle python3 in a bare container of the same image"),
    ]
    notes = ["MB = 10^6 bytes; used = cgroup usage - inactive file cache (as `docker stats`); "
             f"{params['samples']} samples 1 s apart after {params['settle_seconds']} s idle"]
    return stats.scenario("footprint", TITLE, rows, params=params, notes=notes,
                          details={"ours_mib": ours, "bare_mib": bare})
