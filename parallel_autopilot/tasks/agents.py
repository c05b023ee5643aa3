"""``agents.*``: start, stop, restart and look at the agent containers."""

from __future__ import annotations

import sys
import time

from .. import fleet
from ..errors import InvalidInput
from .edge import (
    Namespace,
    echo,
    emit_json,
    fleet_of,
    print_table,
    rich_table,
    table,
    task,
)

HEADERS = ["agent", "host", "state", "doing", "uptime", "restarts", "cli", "tokens in/out"]


def _rows(agents: list[fleet.AgentStatus]) -> list[tuple]:
    # the words are the library's (AgentStatus.status, .doing, .uptime_text): fab and the GUI show the same
    return [(a.id, a.host or "", a.status, a.doing, a.uptime_text, a.restarts, a.cli or "",
             _tokens(a.tokens)) for a in agents]


NO_AGENTS = "no agents (start some with `agents.start --n 3`)"


def status_table(agents: list[fleet.AgentStatus]) -> str:
    """The agents as the table `agents.status` and `agents.start` print (plain text)."""
    return table(_rows(agents), HEADERS) if agents else NO_AGENTS


def show(agents: list[fleet.AgentStatus]) -> None:
    """Print the agents: a ``rich`` table on a terminal, :func:`status_table` elsewhere."""
    print_table(_rows(agents), HEADERS) if agents else echo(NO_AGENTS)


def _tokens(tokens: dict | None) -> str:
    if not tokens:
        return ""
    return f"{tokens['input_tokens']}/{tokens['output_tokens']}"


@task(help={"n": "number of agents, 1..max (--n N or -n N)", "no_wait": "return without waiting until healthy",
            "merge": "then run the merge queue in the foreground every autopilot.merge_poll_seconds "
                     "until Ctrl-C (done issues checked on the tip and merged; the agents keep running)",
            "json": "print the agents as JSON"})
def start(c, n=None, no_wait=False, merge=False, json=False):
    """Start N agents (worktrees, image if missing, containers) and wait until healthy."""
    the_fleet = fleet_of(c)
    agents = the_fleet.start(n, progress=echo if not json else lambda _: None, wait=not no_wait)
    emit_json([a.to_dict() for a in agents]) if json else show(agents)
    if merge:
        # flushed: it runs until Ctrl-C, and a pipe (a log, a supervisor) would hold every line till then
        def say(line: str) -> None:
            echo(line, flush=True)

        say("merge queue running (Ctrl-C stops it; the agents keep running)")
        the_fleet.merge_loop(progress=say)


@task(help={"id": "stop only this agent (1, 01, 001 or agent-001); default: all", "json": "print stopped ids as JSON"})
def stop(c, id=None, json=False):
    """Stop agents gracefully (they release their issues) and remove their containers."""
    stopped = fleet_of(c).stop([id] if id else None, progress=echo if not json else lambda _: None)
    emit_json(stopped) if json else echo(f"stopped {len(stopped)} agent(s)")


@task(help={"id": "the agent to restart (1, 01, 001 or agent-001)",
            "no_wait": "return without waiting until it is ready again", "json": "print the agent as JSON"})
def restart(c, id, no_wait=False, json=False):
    """Restart one agent's container and wait until its new incarnation is ready."""
    the_fleet = fleet_of(c)
    progress = echo if not json else lambda _: None
    agent = the_fleet.restart(id, progress=progress)
    if not no_wait:  # else the table shows the old incarnation's last word ("stopped")
        agent = the_fleet.wait_healthy([agent.id], progress=progress)[0]
    emit_json(agent.to_dict()) if json else show([agent])


@task(help={"json": "machine-readable output",
            "watch": "a live view refreshed every N seconds (like `docker stats`) until Ctrl-C"})
def status(c, json=False, watch=None):
    """Show each agent: its state, what it does, uptime, restarts."""
    the_fleet = fleet_of(c)
    try:
        every = float(watch or 0)  # a string: invoke would cast to the default's type (int)
    except ValueError:
        every = -1
    if every < 0 or every != every:
        raise InvalidInput(f"--watch {watch!r} is not a number of seconds: give e.g. --watch 2")
    if every and not json and sys.stdout.isatty():
        return _live(the_fleet, every)
    try:
        while True:
            agents = the_fleet.list()
            emit_json([a.to_dict() for a in agents]) if json else show(agents)
            if not every:
                return
            time.sleep(every)
            echo(flush=True)
    except KeyboardInterrupt:
        return  # Ctrl-C ends a watch: that is how it is stopped, not a failure


def _live(the_fleet: fleet.Fleet, every: float) -> None:
    """`agents.status --watch` on a terminal: one table redrawn in place (``rich.live``)."""
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    def view():
        agents = the_fleet.list()
        stamp = time.strftime("%H:%M:%S")
        head = Text(f"agents of {the_fleet.settings.repo} at {stamp}, every {every:g}s (Ctrl-C stops)", style="dim")
        return Group(head, rich_table(_rows(agents), HEADERS) if agents else Text(NO_AGENTS))

    try:
        with Live(view(), auto_refresh=False, redirect_stdout=False) as live:
            while True:
                time.sleep(every)
                live.update(view(), refresh=True)
    except KeyboardInterrupt:
        return  # the last table stays on the screen


ns = Namespace("agents")
for t in (start, stop, restart, status):
    ns.add_task(t)
