"""What every scenario is given: settings, size of the run, clocks, a scratch directory."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import Settings


@dataclass
class Context:
    """One benchmark run, shared by its scenarios.

    ``settings`` are the user's (image name, limits, lease...); scenarios never
    touch the user's repository: they work in sandboxes under ``workdir``.
    ``run_id`` is unique per run and names every container and compose project
    the run creates. ``image`` is the agent image once it is ready, else None
    and ``image_problem`` says why. Clocks and ``sleep`` are parameters.
    """

    settings: Settings
    workdir: Path
    run_id: str
    quick: bool = False
    repeats: int = 3
    progress: Callable[[str], None] = lambda _: None
    image: str | None = None
    image_problem: str | None = "the agent image was not prepared"
    clock: Callable[[], float] = time.perf_counter
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    extra: dict[str, Any] = field(default_factory=dict)

    def pick(self, quick: Any, full: Any) -> Any:
        """``quick`` in a quick run, else ``full``."""
        return quick if self.quick else full


__all__ = ["Context"]
