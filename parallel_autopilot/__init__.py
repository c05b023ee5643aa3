"""parallel-autopilot: many coding agents, one codebase, one shared issue queue.

The package is layered. Modules that also run inside agent containers
(``errors``, ``issues``, ``git``, ``ids``, ``runtime``) use the standard
library only; the host-side modules (``config``, ``worktrees``, ``platform``,
``compose``, ``containers``, ``fleet``) may use the chosen dependencies; the
edges (``tasks``, ``gui``, ``program``) turn the library into commands.
"""

__version__ = "0.1.0"
