"""Waiting for a condition in tests that drive real processes and containers."""

from __future__ import annotations

import time


def wait_for(predicate, timeout=120.0, step=0.3, what="condition"):
    """Poll ``predicate`` until it returns something truthy (returned); AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
