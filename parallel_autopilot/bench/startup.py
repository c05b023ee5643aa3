"""Scenario ``startup``: ``Fleet.open(settings).start(N)`` until all are healthy.

Baseline, in the same round and sandbox: N times bare ``git worktree add`` plus
``docker run -d`` of the same image with the same limits (a container running
``sleep``; ``docker run -d`` returns once it runs). Ours does more - worktrees
checked for safety, compose, the runtime's boot, and waiting for the health
check to pass - and the ratio says what that costs. Ours runs on every Compose
this machine has (v2, the Go plugin Docker ships, and v1, the Python program), each
against the same baseline, so the fixed cost of each shows. Between rounds both sides
are torn down completely (containers, worktrees, branches), so every start
begins from nothing. The image is never built inside a measured start: a start
that had to (re)build it (sources changed meanwhile) is measured again.
"""

from __future__ import annotations

from typing import Any

from ..containers import compose
from . import stats
from .sandbox import Sandbox, git

TITLE = "start-up: agents.start until all healthy"
#: the runner records it skipped where the fleet cannot run (sandbox.fleet_problem)
NEEDS_FLEET = True
BARE_LABEL = "bare git worktree add + docker run -d (same image and limits), N times"
MAX_REMEASURE = 2


def plan(ctx) -> dict[str, Any]:
    """Agent counts and rounds."""
    return {"agents": ctx.pick([1, 2], [1, 3, 5, 10]), "rounds": ctx.repeats, "profile": "light",
            "composes": compose.installed() or ["auto"]}


def measure_ours(ctx, box: Sandbox, n: int) -> tuple[float, list]:
    """Seconds from ``Fleet.start`` to all healthy, with the timed progress messages."""
    for _ in range(MAX_REMEASURE + 1):
        trace: list = []
        t0 = ctx.clock()

        def record(message: str) -> None:
            trace.append([round(ctx.clock() - t0, 3), message])
            ctx.progress(f"N={n}: {message}")

        box.start(n, progress=record)
        seconds = ctx.clock() - t0
        box.stop(progress=ctx.progress)
        box.reset_worktrees()
        if not any("building" in message for _, message in trace):
            return seconds, trace
        ctx.progress(f"N={n}: the image was rebuilt during the start; measuring again")
    raise RuntimeError("the agent image was rebuilt during every start (its sources keep changing)")


def measure_bare(ctx, box: Sandbox, n: int, label: str) -> float:
    """Seconds for N bare worktrees plus ``docker run -d``."""
    root = box.root / "bare-worktrees" / label
    names, paths, branches = [], [], []
    t0 = ctx.clock()
    for i in range(1, n + 1):
        path, branch = root / f"agent-{i:03d}", f"bare/{label}-{i:03d}"
        git(box.repo, "worktree", "add", "-q", "-b", branch, str(path), "main")
        paths.append(path)
        branches.append(branch)
        name = box.bare_name(f"{label}-{i:03d}")
        box.docker_run(name, user=_owner(box), volumes={str(path): "/workspace"}, command=["sleep", "infinity"])
        names.append(name)
    seconds = ctx.clock() - t0
    box.docker_rm(names)
    for path in paths:
        git(box.repo, "worktree", "remove", "--force", str(path))
    git(box.repo, "branch", "-q", "-D", *branches)
    return seconds


def _owner(box: Sandbox) -> str:
    stat = box.repo.stat()
    return f"{stat.st_uid}:{stat.st_gid}"


def run(ctx) -> dict[str, Any]:
    """Each round, each N: ours on each Compose, and bare (alternating which goes first)."""
    params = plan(ctx)
    programs = params["composes"]
    ours: dict[tuple[int, str], list[float]] = {(n, p): [] for n in params["agents"] for p in programs}
    bare: dict[int, list[float]] = {n: [] for n in params["agents"]}
    traces: dict[str, list] = {}
    with Sandbox(ctx, "startup") as box:
        for r in range(ctx.repeats):
            for n in params["agents"]:
                sides = [*programs, "bare"] if r % 2 == 0 else ["bare", *programs]
                for side in sides:
                    ctx.progress(f"{side} N={n}, round {r + 1}/{ctx.repeats}")
                    if side == "bare":
                        bare[n].append(measure_bare(ctx, box, n, f"r{r}-n{n}"))
                        continue
                    with box.settings_changed(compose=side):
                        seconds, trace = measure_ours(ctx, box, n)
                    ours[(n, side)].append(seconds)
                    traces[f"N={n} compose {side} round {r + 1}"] = trace
    rows = []
    for program in programs:
        first = program == programs[0]  # the chart's series: what auto picks (v2 when installed)
        for n in params["agents"]:
            ratio = stats.summary(stats.ratios(ours[(n, program)], bare[n]))["median"]
            rows.append(stats.row(f"N={n}" if first else f"N={n} compose {program}",
                                  "time to all healthy" if first else f"time to all healthy, compose {program}",
                                  "s", ours[(n, program)], baseline=bare[n], baseline_label=BARE_LABEL,
                                  target="<= 1.5x baseline", met=ratio <= 1.5, x=n))
    notes = ["ours = Fleet.start (worktrees, compose up, runtime boot) until every health check passes; "
             f"health interval {box.settings.health_interval_seconds}s; bare = containers running `sleep` "
             "(docker run -d returns once started; no health check to wait for)",
             f"compose programs measured: {', '.join(programs)} (the first is what autopilot.compose: auto picks)"]
    return stats.scenario("startup", TITLE, rows, params=params, notes=notes, details={"traces": traces})
