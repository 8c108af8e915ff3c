"""Locks of module-level state that a forked process (a DataLoader2 worker) inherits.

A lock held by another thread at the fork is never released in the child: these are new there.
"""

from __future__ import annotations

import os
import threading

__all__ = ["ForkSafeLock"]


class ForkSafeLock:
    """A ``threading.Lock`` that a forked child gets anew, unheld by the parent's threads.

    For module-level locks only: each one stays registered with ``os.register_at_fork``.

    Examples
    --------
    >>> lock = ForkSafeLock()
    >>> with lock:
    ...     pass

    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
