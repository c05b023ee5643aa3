"""Queue stores that survive fork(): one lock and connection per process.

A store opened before fork() holds a connection the child must neither use nor
close (SQLite would run its close path on the parent's locks and WAL; a
PostgreSQL close would end the PARENT's session). So in the child every store
gets a fresh lock and sets its connection aside in ``INHERITED`` - kept
referenced for the child's lifetime, a small one-time leak - and reconnects on
first use. Standard library only (the in-container runtime uses it).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

#: Connections inherited across fork(): never used nor closed in the child.
INHERITED: list[Any] = []


def reset_in_children(stores: "weakref.WeakSet[Any]") -> None:
    """After each fork(), in the child: every store in ``stores`` gets a new lock and drops its connection.

    A thread of the parent may have held the lock at fork(): it would never be
    released in the child. Each store has ``_lock`` and ``_discard_inherited()``.
    """
    def after_in_child() -> None:
        for store in list(stores):
            store._lock = threading.RLock()
            store._discard_inherited()

    os.register_at_fork(after_in_child=after_in_child)
