"""invoke entry point: `inv --list`. The tasks live in parallel_autopilot/tasks/."""

from parallel_autopilot.tasks import ns  # noqa: F401  (invoke looks for `ns`)
