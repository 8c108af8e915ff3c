"""ForkSafeLock: a forked child can take a lock that a parent's thread held at the fork."""

from __future__ import annotations

import os
import threading

import pytest

from mlcast_pipes._locks import ForkSafeLock


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.timeout(30)
def test_child_takes_a_lock_held_by_a_parent_thread_at_the_fork() -> None:
    lock = ForkSafeLock()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    try:
        pid = os.fork()
        if pid == 0:  # child: the holding thread is gone; its lock must not be
            code = 0 if lock._lock.acquire(timeout=2) else 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert lock._lock.locked()  # the parent's is still held by its thread
    finally:
        release.set()
        thread.join()
    with lock:  # and free again in the parent
        pass
