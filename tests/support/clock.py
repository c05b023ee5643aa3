"""A clock the tests move by hand."""

from __future__ import annotations

#: A fixed, round start time for stores driven by a fake clock (2023-11-14).
T0 = 1_700_000_000.0


class FakeClock:
    """A clock that moves only when told to: ``clock()`` is now, ``clock.advance(s)`` moves it."""

    def __init__(self, start: float = T0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now
