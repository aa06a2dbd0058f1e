"""A virtio device on a MemoryVM, driven through its transport as a guest driver would."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vmboot.devices.virtio import spec
from vmboot.devices.virtio.device import VirtioDevice
from vmboot.devices.virtio.driver import DriverQueue, driver_ok, negotiate
from vmboot.devices.virtio.mmio import MmioTransport
from vmboot.hv import MemoryVM

MEMORY = 16 << 20
QUEUE_BASE = 0x100000
"""Where the first queue's rings go; each next queue 64 KiB further."""
QUEUE_STRIDE = 0x10000
DATA = 0x400000
"""Where tests put request buffers."""


@dataclass
class Rig:
    vm: MemoryVM
    transport: MmioTransport
    queues: list[DriverQueue]
    interrupts: list[int]

    @property
    def device(self) -> VirtioDevice:
        return self.transport.device

    @property
    def status(self) -> int:
        return self.transport.status

    @property
    def needs_reset(self) -> bool:
        return bool(self.transport.status & spec.STATUS_DEVICE_NEEDS_RESET)


def rig(device: VirtioDevice, memory: int = MEMORY, queue_size: int = 16,
        features: int | None = None, start: bool = True) -> Rig:
    vm = MemoryVM(memory)
    t = MmioTransport(device, vm.memory, 0xD0000000, 5, f"test-{device.name}")
    interrupts: list[int] = []
    t.interrupt = lambda: interrupts.append(t.interrupt_status)
    queues = [DriverQueue(vm.memory, QUEUE_BASE + i * QUEUE_STRIDE, queue_size)
              for i in range(len(device.queues))]
    if start:
        assert negotiate(t, features) & spec.STATUS_FEATURES_OK
        for i, q in enumerate(queues):
            q.program(t, i)
        driver_ok(t)
        for i in range(len(queues)):
            t.on_queue_event(i)  # the kick DRIVER_OK sends, served here (no I/O thread)
    return Rig(vm, t, queues, interrupts)


def restart(r: Rig) -> None:
    """The driver resets the device and brings it up again on the same transport."""
    assert negotiate(r.transport) & spec.STATUS_FEATURES_OK
    for i, q in enumerate(r.queues):
        fresh = DriverQueue(r.vm.memory, q.desc, q.size)
        r.queues[i] = fresh
        fresh.program(r.transport, i)
    driver_ok(r.transport)


# -- chains no driver should make: each must put the device in NEEDS_RESET -----------------
def chain_loop(q: DriverQueue, ram: int) -> None:
    q.write_desc(0, DATA, 8, spec.DESC_F_WRITE | spec.DESC_F_NEXT, 1)
    q.write_desc(1, DATA, 8, spec.DESC_F_WRITE | spec.DESC_F_NEXT, 0)
    q.publish(0)


def chain_longer_than_queue(q: DriverQueue, ram: int) -> None:
    for i in range(q.size):  # the last one points back into the table: a chain > size
        q.write_desc(i, DATA, 8, spec.DESC_F_WRITE | spec.DESC_F_NEXT, (i + 1) % q.size)
    q.publish(0)


def chain_outside_ram(q: DriverQueue, ram: int) -> None:
    q.add_chain([], [(ram + 0x1000, 64)])


def chain_wrapping_address(q: DriverQueue, ram: int) -> None:
    q.add_chain([], [((1 << 64) - 16, 64)])


def chain_head_out_of_range(q: DriverQueue, ram: int) -> None:
    q.publish(0xFFFF)


def chain_next_out_of_range(q: DriverQueue, ram: int) -> None:
    q.write_desc(0, DATA, 8, spec.DESC_F_WRITE | spec.DESC_F_NEXT, q.size + 3)
    q.publish(0)


def chain_avail_idx_jump(q: DriverQueue, ram: int) -> None:
    q.set_avail_idx(q.size + 1)


def chain_readable_after_writable(q: DriverQueue, ram: int) -> None:
    q.write_desc(0, DATA, 8, spec.DESC_F_WRITE | spec.DESC_F_NEXT, 1)
    q.write_desc(1, DATA, 8, 0, 0)
    q.publish(0)


def chain_nested_indirect(q: DriverQueue, ram: int) -> None:
    table = DATA + 0x1000
    q.write_desc(0, DATA + 0x2000, 16, spec.DESC_F_INDIRECT, 0, table)
    q.write_desc(0, table, 16, spec.DESC_F_INDIRECT, 0)
    q.publish(0)


def chain_indirect_with_next(q: DriverQueue, ram: int) -> None:
    q.write_desc(0, DATA + 0x1000, 16, spec.DESC_F_INDIRECT | spec.DESC_F_NEXT, 1)
    q.publish(0)


def chain_indirect_bad_length(q: DriverQueue, ram: int) -> None:
    q.write_desc(0, DATA + 0x1000, 15, spec.DESC_F_INDIRECT, 0)
    q.publish(0)


def chain_indirect_loop(q: DriverQueue, ram: int) -> None:
    table = DATA + 0x1000
    q.write_desc(0, DATA, 8, spec.DESC_F_WRITE | spec.DESC_F_NEXT, 1, table)
    q.write_desc(1, DATA, 8, spec.DESC_F_WRITE | spec.DESC_F_NEXT, 0, table)
    q.write_desc(0, table, 32, spec.DESC_F_INDIRECT, 0)
    q.publish(0)


HOSTILE_CHAINS: dict[str, Callable[[DriverQueue, int], None]] = {
    "descriptor loop": chain_loop,
    "chain longer than the queue": chain_longer_than_queue,
    "buffer outside RAM": chain_outside_ram,
    "buffer address wraps 2**64": chain_wrapping_address,
    "head index out of range": chain_head_out_of_range,
    "next index out of range": chain_next_out_of_range,
    "available index past the queue size": chain_avail_idx_jump,
    "readable after writable": chain_readable_after_writable,
    "indirect inside indirect": chain_nested_indirect,
    "indirect with NEXT": chain_indirect_with_next,
    "indirect table length not a multiple of 16": chain_indirect_bad_length,
    "loop inside an indirect table": chain_indirect_loop,
}
"""Each writes a malformed chain into queue ``q`` (of a guest with ``ram`` bytes of RAM) and
makes it available."""
