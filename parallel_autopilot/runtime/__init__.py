"""What runs INSIDE each agent container: ``python3 -m parallel_autopilot.runtime``.

Standard library only (it must import under ``python3 -I -S``). Configured
purely by ``AUTOPILOT_*`` environment variables (the contract in
``docs/development/parallel-autopilot-containers.md``). Modules:

- ``settings`` - the environment, read and checked once at boot.
- ``agent`` - the loop: claim, branch, run the agent, commit, complete; the
  heartbeat thread (lease renewal, agents table), the watchdog, SIGTERM.
- ``kinds`` - how each agent kind (script, codex, claude, command) is run.
- ``workspace`` - the git steps on the agent's worktree (through ``git/runner.py``).
- ``process`` - process groups: start, stop with a grace, reap leftovers.
- ``logs`` - ``agent.log``, ``events.jsonl`` and per-attempt logs, per agent.
- ``health`` - the container healthcheck: is the heartbeat file fresh?

This file imports nothing: the healthcheck runs every few seconds and must
stay cheap.
"""
