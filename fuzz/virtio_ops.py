"""Shared driver of the virtio fuzz targets: a hostile guest driver as a byte stream.

Each input is a sequence of operations on one device behind its virtio-mmio transport in
a MemoryVM: write descriptors (addresses near RAM, its end, the 3-4 GiB hole, or wild;
any flags, lengths and next indices), publish heads and move the available index, write
request bytes into guest buffers, notify queues, poke transport registers, and reset the
device and bring it up again. Contract: nothing escapes (a broken ring or chain sets
DEVICE_NEEDS_RESET inside the transport), a healthy device returns every chain it takes,
and ``check`` (per target) holds after every input.
"""

from __future__ import annotations

from collections.abc import Callable

from fuzz.harness import Bytes
from vmboot.devices.virtio import spec
from vmboot.devices.virtio.device import VirtioDevice
from vmboot.devices.virtio.driver import DriverQueue, driver_ok, negotiate, notify, write_reg
from vmboot.devices.virtio.mmio import MmioTransport
from vmboot.hv import MemoryVM
from vmboot.units import MiB

MEMORY = 4 * MiB
QUEUE_SIZE = 8
QUEUE_BASE = 0x10000
QUEUE_STRIDE = 0x1000
DATA = 0x100000
ADDRESSES = (DATA, DATA + 0x800, MEMORY - 16, MEMORY - 1, MEMORY, 0, 3 << 30, (1 << 64) - 8)
REGISTERS = (*(int(r) for r in spec.MmioReg), 0x100, 0x104, 0x108, 0x13C, 0x1FC)

OP_DESC, OP_PUBLISH, OP_AVAIL_IDX, OP_DATA, OP_NOTIFY, OP_REGISTER, OP_RESTART, OP_USED_EVENT = range(8)
OPS = 8


def start(t: MmioTransport, queues: list[DriverQueue]) -> None:
    negotiate(t)
    for i, q in enumerate(queues):
        q.program(t, i)
    driver_ok(t)


def run_ops(data: bytes, make: Callable[[], VirtioDevice],
            check: Callable[[VirtioDevice, MemoryVM], None]) -> None:
    src = Bytes(data)
    vm = MemoryVM(MEMORY)
    device = make()
    try:
        t = MmioTransport(device, vm.memory, 0xD0000000, 5, "fuzz")
        queues = [DriverQueue(vm.memory, QUEUE_BASE + i * QUEUE_STRIDE, QUEUE_SIZE)
                  for i in range(len(device.queues))]
        start(t, queues)
        while src.remaining:
            op = src.uint(1) % OPS
            qi = src.uint(1) % len(queues)
            q = queues[qi]
            if op == OP_DESC:
                index = src.uint(1) % QUEUE_SIZE
                base = src.choice(ADDRESSES)
                address = (base + src.uint(2)) & ((1 << 64) - 1)
                q.write_desc(index, address, src.uint(3), src.uint(1) & 7, src.uint(1) % 12)
            elif op == OP_PUBLISH:
                q.publish(src.uint(1) % 10)
            elif op == OP_AVAIL_IDX:
                q.set_avail_idx(q.avail_idx + src.uint(1) % 12)
            elif op == OP_DATA:
                vm.memory.write(DATA + src.uint(2) % 0x1000, src.take(src.uint(2) % 1024))
            elif op == OP_NOTIFY:
                notify(t, qi)
            elif op == OP_REGISTER:
                write_reg(t, src.choice(REGISTERS), src.uint(4))
            elif op == OP_RESTART:
                queues = [DriverQueue(vm.memory, QUEUE_BASE + i * QUEUE_STRIDE, QUEUE_SIZE)
                          for i in range(len(device.queues))]
                start(t, queues)
            else:
                q.set_used_event(src.uint(2))
            if t.live:  # every chain taken is returned: the devices complete synchronously
                assert all(dq.next_used == dq.next_avail for dq in device.queues), "chain lost"
        t.state()
        check(device, vm)
    finally:
        t.close()
        close = getattr(device, "close", None)
        if close is not None:
            close()
        vm.close()


def request_seed(queue: int, header: bytes, readable: int, writable: list[int]) -> bytes:
    """Ops that write a well-formed chain on ``queue`` (header at DATA, then buffers) and
    notify it: the seeds mutation starts from."""
    out = bytearray()
    out += bytes([OP_DATA, queue]) + (0).to_bytes(2, "little") + len(header).to_bytes(2, "little") + header
    parts = [(0, readable, 0)] if readable else []
    parts += [(0x400 + 0x400 * i, n, spec.DESC_F_WRITE) for i, n in enumerate(writable)]
    for i, (offset, length, flags) in enumerate(parts):
        more = i + 1 < len(parts)
        out += bytes([OP_DESC, queue, i, 0]) + offset.to_bytes(2, "little")
        out += length.to_bytes(3, "little") + bytes([flags | (spec.DESC_F_NEXT if more else 0),
                                                    i + 1 if more else 0])
    out += bytes([OP_PUBLISH, queue, 0, OP_NOTIFY, queue])
    return bytes(out)
