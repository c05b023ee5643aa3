"""``python3 -m parallel_autopilot.runtime``: run one agent until SIGTERM."""

from .agent import main

raise SystemExit(main())
