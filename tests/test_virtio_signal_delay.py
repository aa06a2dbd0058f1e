"""Held-back used-buffer notifications (:mod:`vmboot.devices.virtio.signal_delay`): one
completion waits for its timer, enough of them are signalled at once, a reset forgets
them, and nothing is signalled when nothing waits."""

from __future__ import annotations

import select

from vmboot.devices.virtio.signal_delay import SignalDelay

DELAY_S = 0.001
WAIT_MS = 30_000
"""Bound on waiting for the timer (reached only when it never fires)."""


def _fires(delay: SignalDelay, wait_ms: int) -> bool:
    poller = select.poll()
    poller.register(delay.fd, select.POLLIN)
    return bool(poller.poll(wait_ms))


def test_a_completion_waits_for_the_timer_then_is_signalled_once() -> None:
    delay = SignalDelay(DELAY_S, at_once=4)
    try:
        assert not delay.completed(1)  # held back: the timer runs
        assert not delay.completed(0)  # processed again before it ran out: still held
        assert _fires(delay, WAIT_MS)
        assert delay.completed(0)  # the timer ran out: signal now
        assert delay.waiting == 0
        assert not delay.completed(0)  # nothing waits: nothing to signal
    finally:
        delay.close()


def test_enough_completions_are_signalled_at_once_and_stop_the_timer() -> None:
    delay = SignalDelay(DELAY_S, at_once=4)
    try:
        assert not delay.completed(3)
        assert delay.completed(1)  # the fourth
        assert not _fires(delay, 50)  # disarmed: it never fires
    finally:
        delay.close()


def test_a_reset_forgets_what_waited() -> None:
    delay = SignalDelay(DELAY_S, at_once=4)
    try:
        assert not delay.completed(2)
        delay.reset()
        assert delay.waiting == 0 and not _fires(delay, 50)
        assert not delay.completed(0)
    finally:
        delay.close()
