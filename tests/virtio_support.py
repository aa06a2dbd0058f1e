"""A virtio device on a MemoryVM, driven through its transport as a guest driver would."""

from __future__ import annotations

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
