"""vmm.paused_call: a call handed to the run's thread is made exactly once, by the run's
thread while it runs, or by the caller once the run has ended without taking it."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from vmboot.vmm.paused_call import call_paused


def test_the_run_thread_makes_the_call_and_the_caller_gets_its_result() -> None:
    lock = threading.RLock()
    held = threading.Event()
    queued: list[Callable[[], object]] = []
    made_on: list[int] = []

    def run_thread() -> None:
        with lock:
            held.set()
            while not queued:
                threading.Event().wait(0.01)
            queued.pop()()

    runner = threading.Thread(target=run_thread)
    runner.start()
    held.wait()

    def action() -> str:
        made_on.append(threading.get_ident())
        return "traced"

    assert call_paused(queued.append, lock, action) == "traced"
    runner.join()
    assert made_on == [runner.ident]


def test_after_the_run_ends_the_caller_makes_the_call_once() -> None:
    lock = threading.RLock()
    queued: list[Callable[[], object]] = []
    calls: list[int] = []

    def action() -> int:
        calls.append(1)
        return len(calls)

    assert call_paused(queued.append, lock, action) == 1  # nobody holds the run lock
    assert len(queued) == 1
    queued[0]()  # the next run takes the stale work: it must not call again
    assert calls == [1]


def test_an_error_in_the_call_reaches_the_caller() -> None:
    lock = threading.RLock()

    def run_now(work: Callable[[], object]) -> None:
        def on_run_thread() -> None:
            with lock:
                work()
        t = threading.Thread(target=on_run_thread)
        t.start()
        t.join()

    def action() -> None:
        raise ValueError("no such task")

    with pytest.raises(ValueError, match="no such task"):
        call_paused(run_now, lock, action)
