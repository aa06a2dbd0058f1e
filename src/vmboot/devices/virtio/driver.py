"""The driver side of virtio-mmio and split virtqueues, in Python: what a guest driver does,
written through the transport's registers and guest RAM. For tests, fuzz targets and
benchmarks that exercise a device without booting Linux."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from vmboot.devices.virtio import spec
from vmboot.devices.virtio.mmio import MmioTransport
from vmboot.devices.virtio.queue import GuestRam

_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED = struct.Struct("<II")
R = spec.MmioReg


def write_reg(t: MmioTransport, reg: int, value: int) -> None:
    t.mmio_write(reg, 4, value)


def read_reg(t: MmioTransport, reg: int) -> int:
    return t.mmio_read(reg, 4)


class DriverQueue:
    """A split virtqueue laid out from guest-physical ``base``: descriptors, then the driver
    ring, then the device ring (4-byte aligned)."""

    def __init__(self, memory: GuestRam, base: int, size: int) -> None:
        self.memory = memory
        self.size = size
        self.desc = base
        self.avail = base + spec.DESC_SIZE * size
        self.used = (self.avail + 6 + 2 * size + 3) & ~3
        self.end = self.used + 6 + spec.USED_ELEM_SIZE * size
        self.avail_idx = 0
        self.used_seen = 0
        self.next_free = 0
        memory.write(base, bytes(self.end - base))

    def write_desc(self, index: int, address: int, length: int, flags: int, nxt: int,
                   table: int | None = None) -> None:
        at = (self.desc if table is None else table) + spec.DESC_SIZE * index
        self.memory.write(at, _DESC.pack(address, length, flags, nxt))

    def add_chain(self, readable: Sequence[tuple[int, int]], writable: Sequence[tuple[int, int]],
                  indirect_table: int | None = None) -> int:
        """Put a chain in the table (or in an indirect table at ``indirect_table``) and make
        it available; the head index."""
        parts = [(a, n, 0) for a, n in readable] + [(a, n, spec.DESC_F_WRITE) for a, n in writable]
        if indirect_table is not None:
            for i, (a, n, f) in enumerate(parts):
                nxt = i + 1 if i + 1 < len(parts) else 0
                self.write_desc(i, a, n, f | (spec.DESC_F_NEXT if nxt else 0), nxt, indirect_table)
            head = self.next_free % self.size
            self.next_free += 1
            self.write_desc(head, indirect_table, spec.DESC_SIZE * len(parts),
                            spec.DESC_F_INDIRECT, 0)
        else:
            indices = [(self.next_free + i) % self.size for i in range(len(parts))]
            self.next_free += len(parts)
            for k, (a, n, f) in enumerate(parts):
                last = k + 1 == len(parts)
                self.write_desc(indices[k], a, n, f | (0 if last else spec.DESC_F_NEXT),
                                0 if last else indices[k + 1])
            head = indices[0]
        self.publish(head)
        return head

    def publish(self, head: int) -> None:
        """Put ``head`` in the driver ring and advance its index."""
        self.memory.write(self.avail + 4 + 2 * (self.avail_idx % self.size), _U16.pack(head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.set_avail_idx(self.avail_idx)

    def set_avail_idx(self, value: int) -> None:
        self.memory.write(self.avail + 2, _U16.pack(value & 0xFFFF))

    def set_used_event(self, value: int) -> None:
        self.memory.write(self.avail + 4 + 2 * self.size, _U16.pack(value & 0xFFFF))

    def used_idx(self) -> int:
        value: int = _U16.unpack(self.memory.read(self.used + 2, 2))[0]
        return value

    def take_used(self) -> list[tuple[int, int]]:
        """(head, length) of the elements the device used since the last call."""
        out = []
        idx = self.used_idx()
        while self.used_seen != idx:
            at = self.used + 4 + spec.USED_ELEM_SIZE * (self.used_seen % self.size)
            out.append(_USED.unpack(self.memory.read(at, spec.USED_ELEM_SIZE)))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return [(int(h), int(n)) for h, n in out]

    def program(self, t: MmioTransport, index: int) -> None:
        """Tell the device where this queue is and make it ready (as the Linux driver does)."""
        write_reg(t, R.QUEUE_SEL, index)
        write_reg(t, R.QUEUE_NUM, self.size)
        for low, address in ((R.QUEUE_DESC_LOW, self.desc), (R.QUEUE_DRIVER_LOW, self.avail),
                             (R.QUEUE_DEVICE_LOW, self.used)):
            write_reg(t, low, address & 0xFFFFFFFF)
            write_reg(t, low + 4, address >> 32)
        write_reg(t, R.QUEUE_READY, 1)


def negotiate(t: MmioTransport, features: int | None = None) -> int:
    """Reset, ACKNOWLEDGE, DRIVER, accept ``features`` (default: all offered), FEATURES_OK;
    the status read back (FEATURES_OK is missing if the device refused)."""
    write_reg(t, R.STATUS, 0)
    write_reg(t, R.STATUS, spec.STATUS_ACKNOWLEDGE)
    write_reg(t, R.STATUS, spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER)
    offered = 0
    for sel in (0, 1):
        write_reg(t, R.DEVICE_FEATURES_SEL, sel)
        offered |= read_reg(t, R.DEVICE_FEATURES) << (32 * sel)
    wanted = offered if features is None else features
    for sel in (0, 1):
        write_reg(t, R.DRIVER_FEATURES_SEL, sel)
        write_reg(t, R.DRIVER_FEATURES, (wanted >> (32 * sel)) & 0xFFFFFFFF)
    write_reg(t, R.STATUS, spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER | spec.STATUS_FEATURES_OK)
    return read_reg(t, R.STATUS)


def driver_ok(t: MmioTransport) -> None:
    write_reg(t, R.STATUS, read_reg(t, R.STATUS) | spec.STATUS_DRIVER_OK)


def notify(t: MmioTransport, index: int) -> None:
    """QueueNotify, and run the device at once on this thread (no I/O thread in tests)."""
    write_reg(t, R.QUEUE_NOTIFY, index)
    t.on_queue_event(index)
