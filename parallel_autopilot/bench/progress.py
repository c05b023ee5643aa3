"""The progress display of a benchmark run: which scenario, which step, how long so far.

On a terminal the current step is one line rewritten in place; elsewhere (CI
logs, pipes) every step is its own line. It writes to stderr by default, so
``inv bench --json`` keeps stdout for the report alone.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


class Display:
    """Shows ``[  12.3s] 2/6 startup | ours N=3 run 1/3`` while a run goes on.

    Call it (or :meth:`step`) with the current step; :meth:`begin` and
    :meth:`end` frame a scenario; :meth:`note` prints a line that stays.
    """

    def __init__(self, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 live: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.live = self._isatty() if live is None else live
        self.started = clock()
        self.scenario = ""
        self._dirty = False

    def _isatty(self) -> bool:
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False

    def _stamp(self) -> str:
        return f"[{self.clock() - self.started:7.1f}s]"

    def _write(self, text: str, keep: bool) -> None:
        if self.live:
            self.stream.write("\r\x1b[K" + text + ("\n" if keep else ""))
            self._dirty = not keep
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def begin(self, name: str, index: int, total: int) -> None:
        """A scenario starts."""
        self.scenario = f"{index}/{total} {name}"
        self._write(f"{self._stamp()} {self.scenario}: starting", keep=not self.live)

    def step(self, text: str) -> None:
        """The current step of the current scenario (fleet messages arrive here too)."""
        text = " ".join(str(text).split())
        if len(text) > 100:
            text = text[:97] + "..."
        prefix = f"{self.scenario} | " if self.scenario else ""
        self._write(f"{self._stamp()} {prefix}{text}", keep=False)

    __call__ = step

    def end(self, name: str, status: str, seconds: float, reason: str | None = None) -> None:
        """A scenario is over: one line that stays."""
        tail = f": {reason}" if reason else ""
        self._write(f"{self._stamp()} {self.scenario}: {status} in {seconds:.1f}s{tail}", keep=True)
        self.scenario = ""

    def note(self, text: str) -> None:
        """A line that stays (set-up, where files were written)."""
        self._write(f"{self._stamp()} {text}", keep=True)

    def close(self) -> None:
        """End a live line so the next output starts on a fresh line."""
        if self.live and self._dirty:
            self.stream.write("\n")
            self.stream.flush()
            self._dirty = False


def quiet(_: str) -> None:
    """A progress callback that shows nothing."""


__all__ = ["Display", "quiet"]
