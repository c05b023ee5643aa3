"""git: the one place that runs git (:mod:`.runner`) and the agents' own clones (:mod:`.clones`).

Callers import the runner's names from here (``from parallel_autopilot.git import Git``).
The runner is standard library only: the agent containers use it.
"""

from .runner import DEFAULT_TIMEOUT, NO_PROGRAMS, Git, WorktreeEntry, toplevel_of

__all__ = ["DEFAULT_TIMEOUT", "NO_PROGRAMS", "Git", "WorktreeEntry", "toplevel_of"]
