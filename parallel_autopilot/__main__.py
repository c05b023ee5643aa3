"""``python3 -m parallel_autopilot <task> ...``: the console program without its script."""

from .program import main

main()
