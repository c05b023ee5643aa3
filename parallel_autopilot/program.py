"""The ``parallel-autopilot`` console program: the task collection, from any git repository."""

from invoke import Program

from . import __version__
from .tasks import ns


def main() -> None:
    """Run ``parallel-autopilot <task> [args]`` (same tasks and config as ``inv``)."""
    Program(namespace=ns, version=__version__, name="parallel-autopilot",
            binary="parallel-autopilot").run()


if __name__ == "__main__":  # `python -m parallel_autopilot.program`: what `fab -H` runs on a workstation
    main()
