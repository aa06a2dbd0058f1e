"""The virtio-mmio transport's registers, feature negotiation, status rules and state."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable

from virtio_support import DATA, rig
from vmboot.devices.bus import MmioBus
from vmboot.devices.virtio import spec
from vmboot.devices.virtio.device import QueueNotify
from vmboot.devices.virtio.driver import (
    DriverQueue,
    driver_ok,
    negotiate,
    notify,
    read_reg,
    write_reg,
)
from vmboot.devices.virtio.mmio import MmioTransport
from vmboot.devices.virtio.queue import GuestRam
from vmboot.devices.virtio.rng import RngDevice
from vmboot.devices.virtio.setup import IRQS, MMIO_BASE, NotificationPath, VirtioDevices
from vmboot.hv import MemoryVM

R = spec.MmioReg
WAIT_S = 30.0
"""Bound on waiting for another thread (reached only when it is stuck)."""


def test_identification_registers() -> None:
    r = rig(RngDevice(), start=False)
    t = r.transport
    assert read_reg(t, R.MAGIC_VALUE) == 0x74726976
    assert read_reg(t, R.VERSION) == 2
    assert read_reg(t, R.DEVICE_ID) == 4
    write_reg(t, R.DEVICE_FEATURES_SEL, 1)
    assert read_reg(t, R.DEVICE_FEATURES) & 1  # VIRTIO_F_VERSION_1 is bit 32
    write_reg(t, R.DEVICE_FEATURES_SEL, 7)
    assert read_reg(t, R.DEVICE_FEATURES) == 0
    write_reg(t, R.QUEUE_SEL, 0)
    assert read_reg(t, R.QUEUE_NUM_MAX) == 256
    write_reg(t, R.QUEUE_SEL, 1)
    assert read_reg(t, R.QUEUE_NUM_MAX) == 0  # no such queue


def test_odd_sized_register_access_is_ignored() -> None:
    t = rig(RngDevice(), start=False).transport
    assert t.mmio_read(R.MAGIC_VALUE, 1) == 0
    t.mmio_write(R.STATUS, 2, spec.STATUS_ACKNOWLEDGE)
    assert t.status == 0


def test_features_without_version_1_are_refused() -> None:
    t = rig(RngDevice(), start=False).transport
    status = negotiate(t, 1 << spec.F_EVENT_IDX)
    assert not status & spec.STATUS_FEATURES_OK
    driver_ok(t)
    assert not t.status & spec.STATUS_DRIVER_OK


def test_features_the_device_does_not_offer_are_refused() -> None:
    t = rig(RngDevice(), start=False).transport
    assert not negotiate(t, (1 << spec.F_VERSION_1) | (1 << 3)) & spec.STATUS_FEATURES_OK


def test_negotiated_features_are_what_the_driver_accepted() -> None:
    r = rig(RngDevice(), features=1 << spec.F_VERSION_1)
    assert r.device.acked_features == 1 << spec.F_VERSION_1
    assert not r.device.queues[0].event_idx


def test_status_bits_cannot_be_cleared_without_reset() -> None:
    r = rig(RngDevice())
    before = r.status
    write_reg(r.transport, R.STATUS, spec.STATUS_ACKNOWLEDGE)
    assert r.status == before


def test_driver_cannot_set_needs_reset() -> None:
    r = rig(RngDevice())
    write_reg(r.transport, R.STATUS, r.status | spec.STATUS_DEVICE_NEEDS_RESET)
    assert not r.needs_reset


def test_queue_registers_locked_after_driver_ok() -> None:
    r = rig(RngDevice())
    q = r.device.queues[0]
    desc = q.desc_table
    write_reg(r.transport, R.QUEUE_SEL, 0)
    write_reg(r.transport, R.QUEUE_DESC_LOW, 0x1234000)
    assert q.desc_table == desc


def test_interrupt_ack_clears_bits() -> None:
    r = rig(RngDevice())
    r.queues[0].add_chain([], [(DATA, 4)])
    notify(r.transport, 0)
    assert read_reg(r.transport, R.INTERRUPT_STATUS) == spec.INTERRUPT_USED_BUFFER
    write_reg(r.transport, R.INTERRUPT_ACK, spec.INTERRUPT_USED_BUFFER)
    assert read_reg(r.transport, R.INTERRUPT_STATUS) == 0


def test_state_round_trips_through_json_into_a_new_transport() -> None:
    r = rig(RngDevice())
    for _ in range(3):
        r.queues[0].add_chain([], [(DATA, 4)])
        notify(r.transport, 0)
    state = json.loads(json.dumps(r.transport.state()))
    fresh = MmioTransport(RngDevice(), r.vm.memory, 0xD0000000, 5, "restored")
    fresh.restore(state)
    assert fresh.state() == state
    assert fresh.live and fresh.device.queues[0].next_used == 3
    head = r.queues[0].add_chain([], [(DATA, 4)])
    fresh.process(0)
    assert r.queues[0].take_used()[-1] == (head, 4)


def _acked_by_kvm(t: MmioTransport) -> None:
    """What KVM does for the driver's InterruptAck write of 1 once the ioeventfd is set."""
    os.eventfd_write(t.ack_fd, 1)


def test_an_acknowledgement_taken_by_kvm_clears_the_bit_before_it_is_read() -> None:
    r = rig(RngDevice())
    t = r.transport
    t.acks_in_kernel = True
    r.queues[0].add_chain([], [(DATA, 8)])
    t.process(0)
    assert read_reg(t, R.INTERRUPT_STATUS) == spec.INTERRUPT_USED_BUFFER
    _acked_by_kvm(t)
    assert read_reg(t, R.INTERRUPT_STATUS) == 0
    assert t.state()["interrupt_status"] == 0


def test_an_interrupt_after_an_acknowledgement_taken_by_kvm_keeps_its_bit() -> None:
    r = rig(RngDevice())
    t = r.transport
    t.acks_in_kernel = True
    r.queues[0].add_chain([], [(DATA, 8)])
    t.process(0)
    _acked_by_kvm(t)  # acknowledged, not yet looked at
    r.queues[0].set_used_event(1)  # the driver wants the next one
    r.queues[0].add_chain([], [(DATA + 8, 8)])
    t.process(0)  # the next interrupt
    assert r.interrupts == [spec.INTERRUPT_USED_BUFFER] * 2
    assert read_reg(t, R.INTERRUPT_STATUS) == spec.INTERRUPT_USED_BUFFER
    assert t.state()["interrupt_status"] == spec.INTERRUPT_USED_BUFFER


def test_interrupt_status_is_read_while_a_queue_is_being_served() -> None:
    """The driver's InterruptStatus read (on the vCPU thread) does not wait for the I/O
    thread, which holds the transport's lock while it serves a queue."""
    import threading

    r = rig(RngDevice())
    t = r.transport
    r.queues[0].add_chain([], [(DATA, 8)])
    t.process(0)
    serving, release = threading.Event(), threading.Event()

    def serve() -> None:
        with t.lock:  # as process() holds it while the device works
            serving.set()
            release.wait(WAIT_S)

    server = threading.Thread(target=serve)
    server.start()
    try:
        assert serving.wait(WAIT_S)
        got: list[int] = []
        reader = threading.Thread(target=lambda: got.append(read_reg(t, R.INTERRUPT_STATUS)))
        reader.start()
        reader.join(WAIT_S)
        assert got == [spec.INTERRUPT_USED_BUFFER]
    finally:
        release.set()
        server.join()


class FakeVm:
    """What VirtioDevices.connect needs from a VM, recording the calls."""

    def __init__(self, fds: bool) -> None:
        self.memory = MemoryVM(16 << 20).memory
        self.fds = fds
        self.ioeventfds: list[tuple[int, int, int | None]] = []
        self.irqfds: list[int] = []
        self.lines: list[tuple[int, bool]] = []

    def notification_fds_supported(self) -> bool:
        return self.fds

    def register_ioeventfd(self, address: int, length: int, fd: int,
                           datamatch: int | None = None) -> None:
        self.ioeventfds.append((address, length, datamatch))

    def register_irqfd(self, fd: int, gsi: int) -> None:
        self.irqfds.append(gsi)

    def irq_line(self, irq: int, level: bool | int) -> None:
        self.lines.append((irq, bool(level)))


def test_placement_and_cmdline() -> None:
    devs = VirtioDevices([RngDevice(), RngDevice()])
    assert devs.placement() == [(MMIO_BASE, IRQS[0]), (MMIO_BASE + 0x1000, IRQS[1])]
    assert devs.cmdline_parameters() == (
        f"virtio_mmio.device=0x200@{MMIO_BASE:#x}:{IRQS[0]} "
        f"virtio_mmio.device=0x200@{MMIO_BASE + 0x1000:#x}:{IRQS[1]}")
    assert devs.names == ["virtio-rng0", "virtio-rng1"]


def test_connect_with_ioeventfd_registers_every_queue_and_an_irqfd() -> None:
    devs = VirtioDevices([RngDevice()])
    bus = MmioBus()
    devs.attach(bus)
    vm = FakeVm(fds=True)
    try:
        assert devs.connect(vm) is NotificationPath.IOEVENTFD
        assert vm.ioeventfds == [(MMIO_BASE + R.QUEUE_NOTIFY, 4, 0),
                                 (MMIO_BASE + R.INTERRUPT_ACK, 4, spec.INTERRUPT_USED_BUFFER)]
        assert devs.transports[0].acks_in_kernel
        assert vm.irqfds == [IRQS[0]]
        assert devs.report()["notification_path"] == "ioeventfd/irqfd"
    finally:
        devs.close()


def test_connect_falls_back_to_exits_and_serves_a_request_on_the_io_thread() -> None:
    import time

    devs = VirtioDevices([RngDevice()])
    bus = MmioBus()
    devs.attach(bus)
    vm = FakeVm(fds=False)
    try:
        assert devs.connect(vm) is NotificationPath.EXITS
        t = devs.transports[0]
        from vmboot.devices.virtio.driver import DriverQueue

        q = DriverQueue(vm.memory, 0x100000, 8)
        negotiate(t)
        q.program(t, 0)
        driver_ok(t)
        head = q.add_chain([], [(DATA, 32)])
        bus.write(MMIO_BASE + R.QUEUE_NOTIFY, 4, 0)  # an MMIO exit, as the vCPU loop delivers it
        for _ in range(1000):  # wait (bounded) for the I/O thread's pulse on the line
            if len(vm.lines) >= 2:
                break
            time.sleep(0.01)
        assert vm.lines[:2] == [(IRQS[0], True), (IRQS[0], False)]
        assert q.take_used() == [(head, 32)]
        assert devs.report()["devices"][0]["requests"] == 1
    finally:
        devs.close()


class HostFdDevice(RngDevice):
    """A device with one host fd (a pipe) served on the I/O thread: readable -> queue 0."""

    def __init__(self) -> None:
        super().__init__()
        self.read_end, self.write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.served = 0

    def host_fds(self) -> dict[int, int]:
        return {self.read_end: 0}

    def activate(self, memory: GuestRam, notify: QueueNotify) -> None:
        super().activate(memory, notify)
        self.watch_host_fd(self.read_end, True)

    def process_queue(self, index: int) -> bool:
        with contextlib.suppress(BlockingIOError):
            if os.read(self.read_end, 64):
                self.served += 1
        return False

    def close(self) -> None:
        os.close(self.read_end)
        os.close(self.write_end)


def _eventually(condition: Callable[[], bool]) -> bool:
    for _ in range(1000):  # bounded: the I/O thread acts at once
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_host_fds_are_served_on_the_io_thread_while_the_device_runs() -> None:
    device = HostFdDevice()
    devs = VirtioDevices([device])
    devs.attach(MmioBus())
    vm = FakeVm(fds=False)
    try:
        devs.connect(vm)
        t = devs.transports[0]
        q = DriverQueue(vm.memory, 0x100000, 8)
        negotiate(t)
        q.program(t, 0)
        driver_ok(t)
        os.write(device.write_end, b"x")
        assert _eventually(lambda: device.served == 1)
        write_reg(t, R.STATUS, 0)  # the driver resets the device: its fd is not served
        os.write(device.write_end, b"y")
        negotiate(t)
        q.program(t, 0)
        driver_ok(t)  # running again: what waited in the pipe is served
        assert _eventually(lambda: device.served == 2)
    finally:
        devs.close()


class BrokenDevice(RngDevice):
    def process_queue(self, index: int) -> bool:
        raise ZeroDivisionError("a bug in the device")


def test_a_device_bug_is_contained_to_that_device() -> None:
    r = rig(BrokenDevice())
    r.queues[0].add_chain([], [(DATA, 4)])
    notify(r.transport, 0)
    assert r.needs_reset and "ZeroDivisionError" in (r.transport.error or "")


def test_verbose_listing() -> None:
    from vmboot.cli.run import render_virtio

    devs = VirtioDevices([RngDevice()])
    devs.attach(MmioBus())
    text = render_virtio(devs.report())
    assert text.splitlines() == ["virtio: notifications through (not wired: the VM was never started)",
                                 "  virtio-rng0      0xd0000000 irq 5  requests 0"]
    devs.close()


def test_machine_virtio_console_default_cmdline_and_parameters() -> None:
    from vmboot.config import DEFAULT_VIRTIO_CMDLINE
    from vmboot.vmm.machine import Machine

    m = Machine(b"", console_device="virtio", virtio_rng=True)
    try:
        assert m.cmdline == DEFAULT_VIRTIO_CMDLINE
        assert m.virtio.extend_cmdline(m.cmdline) == (
            f"{DEFAULT_VIRTIO_CMDLINE} virtio_mmio.device=0x200@{MMIO_BASE:#x}:{IRQS[0]} "
            f"virtio_mmio.device=0x200@{MMIO_BASE + 0x1000:#x}:{IRQS[1]}")
        assert m.virtio_console_port is not None
    finally:
        m.close()


def test_machine_refuses_an_unknown_console_device() -> None:
    import pytest

    from vmboot.errors import UsageError
    from vmboot.vmm.machine import Machine

    with pytest.raises(UsageError, match="console_device: 'parallel' is not one of serial, virtio"):
        Machine(b"", console_device="parallel")  # type: ignore[arg-type]
