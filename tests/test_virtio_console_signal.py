"""virtio-console: the interrupts for a named port's used output are held back until a
quarter of the queue is used or the delay passes; the console's own and output drained
before another port's message are signalled at once. The driver here behaves as Linux's
does with ``VIRTIO_F_EVENT_IDX``: it frees used buffers before each write and asks for an
interrupt at the next one (used_event = what it has seen)."""

from __future__ import annotations

import select

from virtio_support import DATA, Rig, rig
from vmboot.devices.virtio import spec
from vmboot.devices.virtio.console import (
    TX_SIGNAL_QUEUE_SHARE,
    ConsoleDevice,
    ConsolePort,
    tx_queue,
)
from vmboot.devices.virtio.driver import notify

QUEUE_SIZE = 16
"""The rig's queue size: an interrupt at most every 16 // 4 = 4 buffers."""
WAIT_MS = 30_000
"""Bound on waiting for a held-back interrupt's timer (reached only when it never fires)."""


def _ports() -> tuple[Rig, ConsoleDevice, list[bytes], list[bytes]]:
    console_out: list[bytes] = []
    port_out: list[bytes] = []
    dev = ConsoleDevice([ConsolePort("", console_out.append),
                         ConsolePort("out", port_out.append)])
    timers = dev.host_fds()  # what the wiring does: the I/O thread serves the timers
    assert sorted(timers.values()) == [tx_queue(1)]
    r = rig(dev, queue_size=QUEUE_SIZE)
    assert r.device.has_feature(spec.F_EVENT_IDX)
    return r, dev, console_out, port_out


def _write(r: Rig, queue: int, data: bytes, slot: int) -> None:
    """One write as Linux's driver makes it: free what was used, ask for an interrupt at
    the next used buffer, queue the buffer, notify."""
    q = r.queues[queue]
    q.take_used()
    q.set_used_event(q.used_seen)
    at = DATA + slot * 0x100
    r.vm.memory.write(at, data)
    q.add_chain([(at, len(data))], [])
    notify(r.transport, queue)


def _timer_fires(dev: ConsoleDevice, queue: int) -> bool:
    fd = next(fd for fd, index in dev.host_fds().items() if index == queue)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(WAIT_MS))


def test_streamed_output_takes_one_interrupt_per_quarter_queue() -> None:
    r, _, _, port_out = _ports()
    chunks = [bytes([65 + i % 26]) * 100 for i in range(32)]
    for i, chunk in enumerate(chunks):
        _write(r, tx_queue(1), chunk, i)
    assert port_out == chunks  # every byte reached the sink at once, in order
    assert len(r.interrupts) == 32 // (QUEUE_SIZE // TX_SIGNAL_QUEUE_SHARE)  # not 32


def test_a_lone_buffer_is_signalled_when_the_delay_passes() -> None:
    r, dev, _, port_out = _ports()
    _write(r, tx_queue(1), b"alone", 0)
    assert port_out == [b"alone"] and r.interrupts == []
    assert _timer_fires(dev, tx_queue(1))
    r.transport.process(tx_queue(1))  # what the I/O thread does when the timer fires
    assert r.interrupts == [spec.INTERRUPT_USED_BUFFER]
    r.transport.process(tx_queue(1))
    assert len(r.interrupts) == 1  # signalled once


def test_the_console_port_is_signalled_at_once() -> None:
    r, _, console_out, _ = _ports()
    _write(r, tx_queue(0), b"hvc", 0)
    assert console_out == [b"hvc"] and len(r.interrupts) == 1


def test_output_drained_before_another_ports_message_is_signalled_at_once() -> None:
    heard: list[tuple[str, bytes]] = []
    out = ConsolePort("out", lambda data: heard.append(("out", data)))
    ctl = ConsolePort("ctl", lambda data: heard.append(("ctl", data)), drain_first=(out,))
    dev = ConsoleDevice([ConsolePort(""), out, ctl])
    dev.host_fds()
    r = rig(dev, queue_size=QUEUE_SIZE)
    r.vm.memory.write(DATA, b"last")
    r.queues[tx_queue(1)].add_chain([(DATA, 4)], [])
    _write(r, tx_queue(2), b"exited", 1)  # held back: one buffer of "ctl"
    assert heard == [("out", b"last"), ("ctl", b"exited")] and r.interrupts == []
    r.transport.on_queue_event(tx_queue(1))  # "out"'s queue, drained out of turn: owed
    assert len(r.interrupts) == 1


def test_a_held_back_interrupt_is_saved_as_owed_and_a_reset_forgets_it() -> None:
    r, dev, _, _ = _ports()
    _write(r, tx_queue(1), b"x", 0)
    assert r.interrupts == [] and dev.state()["owed"] == [tx_queue(1)]
    dev.reset()
    assert dev.state()["owed"] == []
