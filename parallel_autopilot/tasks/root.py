"""Top-level tasks: ``build``, ``cleanup``, ``demo``."""

from __future__ import annotations

from pathlib import Path

from .. import demo as demo_lib
from .. import doctor as doctor_lib
from ..errors import EXIT_DOCTOR
from ..containers import agentcli, image
from ..git import clones
from .edge import echo, emit_json, fleet_of, settings, table, task


@task(help={"rebuild": "build even if the image is up to date",
            "base_image": "base image (default autopilot.base_image; built offline with debootstrap if it cannot be pulled)",
            "cli": "agent CLIs to put in the image at their pinned versions: none, codex, claude or all "
                   "(default autopilot.agent_cli); the host fetches them with npm, the build needs no network",
            "agent_cli": "the same as --cli (older name)",
            "json": "print the image, its CLI versions and size as JSON"})
def build(c, rebuild=False, base_image=None, cli=None, agent_cli=None, json=False):
    """Build the agent image (the package's containers/files/Dockerfile), with the agent CLIs asked for.

    Works anywhere: the image belongs to the machine, not to a repository.
    """
    s = settings(c, anywhere=True)
    s = s.replace(**{k: v for k, v in {"base_image": base_image, "agent_cli": cli or agent_cli}.items() if v})
    agentcli.clis(s.agent_cli)  # an unknown value: one line before anything is fetched
    quiet = (lambda _: None) if json else echo
    tag = image.ensure_image(s, progress=quiet, rebuild=rebuild)
    info = image.describe(s)
    if json:
        emit_json(info)
        return
    versions = ", ".join(f"{k} {v}" for k, v in info["clis"].items()) or "no agent CLI"
    echo(f"image ready: {tag} ({versions}; {info['size'] / 1e6:.0f} MB)")


@task(help={"force": "also remove dirty worktrees and delete agent branches with unmerged commits",
            "json": "print the report as JSON"})
def cleanup(c, force=False, json=False):
    """Stop and remove the agents, remove their clones whose work is safe to drop, drop merged issue branches.

    Dirty clones and clones holding commits the repository lacks are KEPT (and
    listed) unless --force; issue branches (autopilot/issue-N) are deleted only
    when merged into the base - unmerged ones always stay, even with --force.
    """
    the_fleet = fleet_of(c)
    s = the_fleet.settings
    stopped = the_fleet.stop(progress=echo if not json else lambda _: None)
    if s.queue or s.db_path.exists():  # results never live only in a clone that is about to go
        from ..merge import queue as mergequeue

        mergequeue.bring_home(s, the_fleet.store)
    report = clones.remove(s, force=force, keep_unsafe=True)
    dropped = clones.drop_merged_issue_branches(s)
    if json:
        emit_json({"stopped": stopped, **report.to_dict(), "deleted_issue_branches": dropped})
        return
    echo(report.summary())
    echo(f"deleted merged issue branches: {', '.join(dropped) or 'none'}")


@task(help={"dir": "where to create the sample repository (default: a new temporary directory)",
            "n": "number of agents (default 3)", "keep": "leave the agents running afterwards",
            "json": "print the results as JSON"})
def demo(c, dir=None, n=3, keep=False, json=False):
    """Run the demo: a sample repository, 12 issues with scripts, 3 agents in containers."""
    directory = demo_lib.new_directory(Path(dir) if dir else None)
    result = demo_lib.run_demo(settings(c, repo=str(directory)), directory, agents=int(n), keep_running=keep,
                               progress=echo if not json else lambda _: None)
    rows = [(f"#{i.number}", i.status, i.owner or "", i.branch or "", (i.commit or "")[:10],
             f"{i.duration:.1f}s" if i.duration else "", i.title) for i in result.issues]
    if json:
        emit_json({"repo": str(result.repo), "seconds": result.seconds,
                   "issues": [i.to_dict() for i in result.issues],
                   "next": demo_lib.next_steps(result, keep_running=keep)})
    else:
        echo(table(rows, ["issue", "status", "agent", "branch", "commit", "duration", "title"]))
        echo(f"{sum(i.status == 'done' for i in result.issues)}/{len(result.issues)} issues done "
             f"in {result.seconds:.1f}s by {n} agents; repository: {result.repo}")
        echo("\n".join(demo_lib.next_steps(result, keep_running=keep)))
    if not result.ok:
        from invoke import Exit
        raise Exit("error: some demo issues did not finish: see `inv issues.list` in the demo repository", code=1)


_MARK = {doctor_lib.OK: "ok", doctor_lib.WARN: "warn", doctor_lib.FAIL: "FAIL", doctor_lib.SKIP: "skip"}


@task(help={"n": "the number of agents to check memory and CPUs for (default 3)",
            "json": "print the checks as JSON ({ok, version, checks: [{name, state, found, fix}]})"})
def doctor(c, n=3, json=False):
    """Say what agents.start needs and what is missing here, each missing thing with its fix.

    Docker daemon, Compose, git, the image and its CLIs, credentials per agent kind, memory
    and CPUs for N agents, the state directory's filesystem, the queue, the GUI's extra.
    Exits 0 only when agents.start would work (22 otherwise).
    """
    from ..ids import agent_count

    count = agent_count(n, 99)
    s = settings(c, anywhere=True)
    report = doctor_lib.examine(s, count, in_repository=doctor_lib.in_repository(s))
    if json:
        emit_json(report.to_dict())
    else:
        width = max(len(check.name) for check in report.checks)
        for check in report.checks:
            echo(f"{_MARK[check.state]:<4}  {check.name:<{width}}  {check.found}")
            if check.fix:
                echo(f"{'':<4}  {'':<{width}}  fix: {check.fix}")
        echo("agents.start would work here" if report.ok else "agents.start would fail here: fix the FAIL lines")
    if not report.ok:
        from invoke import Exit
        raise Exit(code=EXIT_DOCTOR)
