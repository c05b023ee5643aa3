"""``logs.*``: read what the agents wrote."""

from __future__ import annotations

from .edge import Namespace, echo, fleet_of, task


@task(help={"id": "only this agent (1, 01, 001 or agent-001); default: all, prefixed",
            "follow": "keep printing new lines until Ctrl-C", "lines": "how many past lines (default 50)"})
def tail(c, id=None, follow=False, lines=50):
    """Print an agent's log (docs/logs/agents/<id>/agent.log); --follow streams it."""
    for line in fleet_of(c).logs(id, tail=int(lines), follow=follow):
        echo(line, flush=True)


ns = Namespace("logs")
ns.add_task(tail)
