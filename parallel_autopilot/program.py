"""The ``parallel-autopilot`` console program: the task collection, from any git repository."""

import os
import sys

from invoke import Program

from . import __version__
from .errors import EXIT_BROKEN_PIPE
from .tasks import ns

#: Exit code when the reader of our output went away (`| head`): 128 + SIGPIPE, as a shell reports it.
BROKEN_PIPE_EXIT = EXIT_BROKEN_PIPE


def main(argv: list[str] | None = None) -> None:
    """Run ``parallel-autopilot <task> [args]`` (same tasks and config as ``inv``)."""
    try:
        Program(namespace=ns, version=__version__, name="parallel-autopilot",
                binary="parallel-autopilot").run(argv)
        sys.stdout.flush()  # inside the try: a reader gone since the last write shows here
    except BrokenPipeError:
        # `parallel-autopilot --help | head`: the reader has all it wanted. Point stdout
        # at /dev/null so Python's flush at exit does not print a second traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(BROKEN_PIPE_EXIT)


if __name__ == "__main__":  # `python -m parallel_autopilot.program`: what `fab -H` runs on a workstation
    main()
