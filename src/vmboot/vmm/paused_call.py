"""Call a function with every vCPU of a running guest paused, from another thread, and get
its result: what lets ``Machine.traces()`` and ``Machine.tasks()`` look at a guest while
``Machine.run()`` is in progress.

The call is handed to ``Machine.when_stopped`` (the run's thread stops every vCPU, calls it,
and resumes the run). A run can end before it takes the call: then the caller takes the
machine's run lock (so no new run starts) and makes the call itself. A claim decides which
of the two makes it, so it is made exactly once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_S = 0.05
"""How often the caller checks whether the run ended without taking the call."""


def call_paused(when_stopped: Callable[[Callable[[], object]], None], run_lock: threading.RLock,
                action: Callable[[], T]) -> T:
    """``action()`` with the guest stopped; ``run_lock`` is held by the thread in ``run()``
    for as long as it runs vCPUs."""
    results: list[T] = []
    errors: list[BaseException] = []
    claim = threading.Lock()
    done = threading.Event()

    def on_run_thread() -> None:
        if not claim.acquire(blocking=False):
            return  # the caller made the call after the run ended
        try:
            results.append(action())
        except BaseException as exc:  # handed to the caller, who raises it
            errors.append(exc)
        finally:
            done.set()

    when_stopped(on_run_thread)
    while not done.wait(POLL_S):
        if run_lock.acquire(blocking=False):
            try:
                if claim.acquire(blocking=False):
                    return action()
            finally:
                run_lock.release()
    if errors:
        raise errors[0]
    return results[0]
