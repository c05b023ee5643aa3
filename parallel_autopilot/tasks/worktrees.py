"""``worktrees.*``: create, list and remove the agents' git worktrees."""

from __future__ import annotations

from ..git import clones
from .edge import Namespace, echo, emit_json, fleet_of, settings, table, task


def _print(ws: list[clones.Worktree]) -> None:
    if not ws:
        echo("no agent worktrees (make some with: worktrees.create --n 3)")
        return
    echo(table(
        [(w.id, w.state, w.branch or ("(detached)" if w.exists else ""),
          "" if w.dirty is None else ("dirty" if w.dirty else "clean"),
          ", ".join(w.unmerged) if w.unmerged else ("" if w.ahead is None else f"{w.ahead} ahead of {w.base}"),
          w.path) for w in ws],
        ["agent", "state", "checked out", "changes", "unmerged work", "path"],
    ))


@task(help={"n": "how many: agent-001..agent-00N (1 to autopilot.max_agents)",
            "json": "machine-readable output"})
def create(c, n, json=False):
    """Create (or reuse, or repair, or migrate) the agents' own clones .worktrees/agent-001.."""
    the_fleet = fleet_of(c)
    made = clones.create(the_fleet.settings, the_fleet.check_count(n, containers=False),
                            git=the_fleet.git)
    if json:
        emit_json([w.to_dict() for w in made])
    else:
        _print(made)


@task(name="list", help={"json": "machine-readable output"})
def list_(c, json=False):
    """List the agents' clones: branch checked out, clean/dirty, refs with work the repository lacks."""
    found = clones.list(settings(c))
    if json:
        emit_json([w.to_dict() for w in found])
    else:
        _print(found)


@task(iterable=["id"], help={
    "id": "only this agent (1, 001 or agent-001); repeat for more; default: all",
    "force": "remove even with uncommitted changes or unmerged commits (they are LOST)",
    "json": "machine-readable output",
})
def remove(c, id=None, force=False, json=False):  # noqa: A002 - the flag reads --id
    """Remove the agents' clones (old layout: worktrees and merged agent/NNN branches); keeps work unless --force."""
    report = clones.remove(settings(c), ids=id or None, force=force)
    if json:
        emit_json(report.to_dict())
        return
    echo(report.summary())

ns = Namespace("worktrees")
for t in (create, list_, remove):
    ns.add_task(t)
