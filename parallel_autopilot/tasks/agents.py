"""``agents.*``: start, stop, restart and look at the agent containers."""

from __future__ import annotations

import time

from .. import fleet
from .edge import Namespace, emit_json, settings, table, task


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def status_table(agents: list[fleet.AgentStatus]) -> str:
    """The agents as the table `agents.status` and `agents.start` print."""
    if not agents:
        return "no agents (start some with `agents.start --n 3`)"
    return table(
        [(a.id, a.state, a.health or "", (f"working on #{a.issue} {(a.issue_title or '')[:40]}"
                                          if a.issue else a.activity),
          _duration(a.uptime), a.restarts) for a in agents],
        ["agent", "container", "health", "doing", "uptime", "restarts"],
    )


@task(help={"n": "number of agents, 1..max (--n N or -n N)", "no_wait": "return without waiting until healthy",
            "merge": "then run the merge queue in the foreground every autopilot.merge_poll_seconds "
                     "until Ctrl-C (done issues checked on the tip and merged; the agents keep running)",
            "json": "print the agents as JSON"})
def start(c, n=None, no_wait=False, merge=False, json=False):
    """Start N agents (worktrees, image if missing, containers) and wait until healthy."""
    s = settings(c)
    agents = fleet.start_agents(s, n, progress=print if not json else lambda _: None, wait=not no_wait)
    emit_json([a.to_dict() for a in agents]) if json else print(status_table(agents))
    if merge:
        print("merge queue running (Ctrl-C stops it; the agents keep running)")
        fleet.merge_loop(s)


@task(help={"id": "stop only this agent (1, 01, 001 or agent-001); default: all", "json": "print stopped ids as JSON"})
def stop(c, id=None, json=False):
    """Stop agents gracefully (they release their issues) and remove their containers."""
    stopped = fleet.stop_agents(settings(c), [id] if id else None, progress=print if not json else lambda _: None)
    emit_json(stopped) if json else print(f"stopped {len(stopped)} agent(s)")


@task(help={"id": "the agent to restart (1, 01, 001 or agent-001)"})
def restart(c, id):
    """Restart one agent's container."""
    agent = fleet.restart_agent(settings(c), id)
    print(status_table([agent]))


@task(help={"json": "machine-readable output", "watch": "refresh every N seconds until Ctrl-C"})
def status(c, json=False, watch=0):
    """Show each agent: container state, health, current issue, uptime."""
    s = settings(c)
    while True:
        agents = fleet.list_agents(s)
        if json:
            emit_json([a.to_dict() for a in agents])
        else:
            print(status_table(agents))
        if not watch:
            return
        time.sleep(float(watch))
        print()


ns = Namespace("agents")
for t in (start, stop, restart, status):
    ns.add_task(t)
