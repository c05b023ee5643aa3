"""Scenario ``agents``: M issues resolved by the REAL Codex CLI in containers, with N agents.

Each agent runs the pinned ``codex exec`` (``agent_kind: codex``) against a
scripted Responses API server on 127.0.0.1 (:mod:`.modelservers`; the agents
use ``network: host`` to reach it) that thinks ``think`` seconds per turn and
answers in two turns: one shell command that writes a file, then a final
message. So every issue costs the same model time, and what is left is ours.

The agents run (healthy, idle) before the clock starts; each N adds M fresh
issues at once and measures until the last is done. Figures:

- makespan per N;
- parallel efficiency against N = 1 of the same run: makespan(1) / (N x makespan(N));
- harness overhead per issue: claim to complete minus the CLI's own run time
  (the attempt's ``duration``: process start to exit), median and p95 over the
  issues of that N - what the runtime adds (checkout, commit, completion).

The image with the codex CLI is built for the run under a tag of its own (not
measured; removed at the end).
"""

from __future__ import annotations

import math
from typing import Any

from . import stats
from .modelservers import ResponsesServer
from .sandbox import Sandbox

TITLE = "agents: M issues resolved by the real codex CLI with N agents"
#: the runner records it skipped where the fleet cannot run (sandbox.fleet_problem)
NEEDS_FLEET = True
ROUND_TIMEOUT = 900.0
TURNS = 2
TARGET_EFFICIENCY = {5: 90.0, 10: 85.0}  # percent, issue 9
TARGET_OVERHEAD = 1.0  # seconds per issue, issue 9


def plan(ctx) -> dict[str, Any]:
    """Agent counts, issues per N (M), model think time per turn, model turns per issue."""
    return {"agents": ctx.pick([1, 3], [1, 5, 10]), "issues": ctx.pick(6, 20),
            "think_seconds": 2.0, "turns": TURNS}


def codex_image(ctx) -> str:
    """The run's image with the codex CLI (built once, from the host's npm cache)."""
    from ..containers import image

    base = ctx.image or str(ctx.settings.image)
    tag = f"{base.rsplit(':', 1)[0]}:bench-{ctx.run_id}-codex"
    image.ensure_image(ctx.settings.replace(image=tag, agent_cli="codex"), progress=ctx.progress)
    ctx.extra.setdefault("images", []).append(tag)
    return tag


def _drop(tag: str) -> None:
    try:
        from ..containers import daemon

        daemon.client().images.remove(tag, noprune=False)
    except Exception:  # noqa: BLE001 - housekeeping must not hide the report
        pass


def measure(ctx, box: Sandbox, m: int, n: int) -> tuple[float, list[float], list[float]]:
    """Add M issues; (makespan, overhead per issue, CLI seconds per issue)."""
    store = box.store()
    added = store.add_many([{"title": f"N={n}: greet contributor {i + 1}/{m}",
                             "body": "Write the greeting file the model asks for."} for i in range(m)])
    numbers = {i.number for i in added}
    span = box.seconds_until_done(numbers, ROUND_TIMEOUT, f"{m} codex issues with N={n}")
    done = [store.get(number) for number in sorted(numbers)]
    overhead = [(i.completed_at - i.claimed_at) - i.duration for i in done]
    return span, overhead, [i.duration for i in done]


def run(ctx) -> dict[str, Any]:
    """Start the scripted server, build the codex image, then for N = 1, 5, 10 measure M issues."""
    params = plan(ctx)
    m, think, counts = params["issues"], params["think_seconds"], params["agents"]
    tag = codex_image(ctx)
    spans: dict[int, float] = {}
    overheads: dict[int, list[float]] = {}
    cli_times: dict[int, list[float]] = {}
    try:
        with ResponsesServer(think=think) as server:
            keys = ctx.workdir / "agents-keys.env"
            keys.write_text("OPENAI_API_KEY=sk-bench-not-real\n")
            with Sandbox(ctx, "agents", image=tag, agent_cli="codex", agent_kind="codex", network="host",
                         env_file=str(keys), openai_base_url=f"{server.url}/v1", model_retries=1,
                         issue_timeout=300) as box:
                for n in counts:
                    ctx.progress(f"starting {n} codex agent(s)")
                    box.start(n)
                    ctx.progress(f"N={n}: {m} issues, {TURNS} turns of {think:g}s each")
                    spans[n], overheads[n], cli_times[n] = measure(ctx, box, m, n)
            peers = server.peers()
        if peers != {"127.0.0.1"}:
            raise RuntimeError(f"the scripted server saw peers {sorted(peers)}: only 127.0.0.1 is allowed")
    finally:
        _drop(tag)
    rows = []
    ideal_one = m * TURNS * think
    for n in counts:
        ideal = math.ceil(m / n) * TURNS * think
        rows.append(stats.row(f"N={n}", "makespan", "s", [spans[n]], baseline=[ideal],
                              baseline_label="ideal ceil(M/N) x turns x think", x=n))
        if counts[0] == 1:
            efficiency = 100.0 * spans[1] / (n * spans[n])
            goal = TARGET_EFFICIENCY.get(n)
            rows.append(stats.row(f"N={n}", "parallel efficiency vs N=1", "%", [efficiency],
                                  target=f">= {goal:g}%" if goal else None,
                                  met=efficiency >= goal if goal else None, x=n))
        p50, p95 = stats.percentile(overheads[n], 50), stats.percentile(overheads[n], 95)
        rows.append(stats.row(f"N={n}", "harness overhead per issue, median", "s", [p50],
                              target=f"<= {TARGET_OVERHEAD:g} s", met=p50 <= TARGET_OVERHEAD, x=n))
        rows.append(stats.row(f"N={n}", "harness overhead per issue, p95", "s", [p95], x=n))
        rows.append(stats.row(f"N={n}", "codex CLI time per issue, median", "s",
                              [stats.percentile(cli_times[n], 50)],
                              baseline=[TURNS * think], baseline_label="model think time", x=n))
    notes = [f"M = {m} issues per N, each {TURNS} model turns of {think:g} s (scripted Responses API on "
             "127.0.0.1, agents on network host); the real codex CLI pinned in containers/agentcli.py",
             f"ideal makespan at N=1: {ideal_one:g} s; efficiency = makespan(N=1) / (N x makespan(N))",
             "harness overhead = (completed_at - claimed_at) - the CLI's own run time, per issue"]
    return stats.scenario("agents", TITLE, rows, params=params, notes=notes,
                          details={"overheads": overheads, "cli_seconds": cli_times, "makespans": spans})
