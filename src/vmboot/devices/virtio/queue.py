"""Split virtqueues (virtio 1.2 section 2.7), read and written in guest RAM with every
guest-supplied number checked before it is used.

A :class:`Virtqueue` is the device side of one queue: the three addresses and the size
the driver programmed through the transport, and the device's own indices. It hands out
:class:`DescriptorChain` objects (:meth:`Virtqueue.pop`) and returns them as used
(:meth:`Virtqueue.add_used`). A malformed ring or chain (an index out of range, a loop,
a chain longer than the queue, a buffer outside guest RAM, a device-readable buffer after
a device-writable one, a nested or misaligned indirect table) raises :class:`QueueError`:
the transport then marks the device ``DEVICE_NEEDS_RESET``.

Guest RAM is anything with the :class:`GuestRam` methods (``vmboot.hv.GuestMemory``).
"""

from __future__ import annotations

import struct
import threading
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from vmboot.devices.virtio import spec
from vmboot.errors import GuestMemoryError, VmbootError

_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")
_U16_MASK = 0xFFFF
_FENCE = threading.Lock()


class QueueError(VmbootError):
    """The driver broke the virtqueue contract; the device needs a reset."""


class GuestRam(Protocol):
    def read(self, gpa: int, length: int) -> bytes: ...

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None: ...

    def view(self, gpa: int, length: int) -> memoryview: ...

    def contains(self, gpa: int, length: int) -> bool: ...


def memory_fence() -> None:
    """A full barrier: a locked instruction (the lock's acquire) orders the store before it
    against the load after it, as virtio's "suppress notifications, then re-check" needs."""
    with _FENCE:
        pass


@dataclass(frozen=True, slots=True)
class Buffer:
    """One guest buffer of a chain: ``length`` bytes at guest-physical ``address``."""

    address: int
    length: int


@dataclass
class DescriptorChain:
    """A request: the head index (returned in the used ring), then the device-readable
    buffers followed by the device-writable ones, all checked to lie in guest RAM."""

    head: int
    readable: list[Buffer]
    writable: list[Buffer]

    @property
    def readable_bytes(self) -> int:
        return sum(b.length for b in self.readable)

    @property
    def writable_bytes(self) -> int:
        return sum(b.length for b in self.writable)


@dataclass
class QueueState:
    """A queue as plain data, for device state save and restore."""

    size: int
    ready: bool
    desc_table: int
    avail_ring: int
    used_ring: int
    next_avail: int
    next_used: int
    signalled_used: int | None


class Virtqueue:
    """The device side of one split virtqueue of at most ``max_size`` entries."""

    def __init__(self, max_size: int) -> None:
        if max_size <= 0 or max_size > spec.MAX_QUEUE_SIZE or max_size & (max_size - 1):
            raise ValueError(f"virtqueue: max_size {max_size} is not a power of two in "
                             f"1..{spec.MAX_QUEUE_SIZE}")
        self.max_size = max_size
        self.event_idx = False
        """VIRTIO_F_EVENT_IDX was negotiated (set by the transport at activation)."""
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.ready = False
        self.desc_table = 0
        self.avail_ring = 0
        self.used_ring = 0
        self.next_avail = 0
        self.next_used = 0
        self.signalled_used: int | None = None

    # -- state ------------------------------------------------------------------------------
    def state(self) -> QueueState:
        return QueueState(self.size, self.ready, self.desc_table, self.avail_ring, self.used_ring,
                          self.next_avail, self.next_used, self.signalled_used)

    def restore(self, state: QueueState | dict[str, Any]) -> None:
        s = state if isinstance(state, QueueState) else QueueState(**state)
        if not 1 <= s.size <= self.max_size:
            raise QueueError(f"virtqueue restore: size {s.size} is outside 1..{self.max_size}")
        for name, value in asdict(s).items():
            setattr(self, name, value)

    # -- layout -----------------------------------------------------------------------------
    def _avail_bytes(self) -> int:
        return 6 + 2 * self.size

    def _used_bytes(self) -> int:
        return 6 + spec.USED_ELEM_SIZE * self.size

    def check_layout(self, memory: GuestRam) -> None:
        """Raise :class:`QueueError` unless size and the three areas are valid for ``memory``."""
        size = self.size
        if size == 0 or size > self.max_size or size & (size - 1):
            raise QueueError(f"virtqueue: QueueNum {size} is not a power of two in "
                             f"1..{self.max_size} (QueueNumMax)")
        areas = (("descriptor table", self.desc_table, spec.DESC_SIZE * size, spec.DESC_ALIGN),
                 ("driver (available) ring", self.avail_ring, self._avail_bytes(), spec.AVAIL_ALIGN),
                 ("device (used) ring", self.used_ring, self._used_bytes(), spec.USED_ALIGN))
        for name, address, length, align in areas:
            if address % align:
                raise QueueError(f"virtqueue: {name} address {address:#x} is not "
                                 f"{align}-byte aligned")
            if not memory.contains(address, length):
                raise QueueError(f"virtqueue: {name} [{address:#x}, {address + length:#x}) "
                                 "is not inside guest RAM")

    # -- driver ring ------------------------------------------------------------------------
    def _u16(self, memory: GuestRam, address: int) -> int:
        value: int = _U16.unpack(memory.read(address, 2))[0]
        return value

    def avail_idx(self, memory: GuestRam) -> int:
        return self._u16(memory, self.avail_ring + 2)

    def pending(self, memory: GuestRam) -> int:
        """Chains the driver made available that the device has not taken yet."""
        count = (self.avail_idx(memory) - self.next_avail) & _U16_MASK
        if count > self.size:
            raise QueueError(f"virtqueue: available index moved {count} entries past the "
                             f"device's {self.next_avail}, more than the queue size {self.size}")
        return count

    def pop(self, memory: GuestRam) -> DescriptorChain | None:
        """The next available chain, or None when the driver has made none available."""
        if not self.pending(memory):
            return None
        slot = self.avail_ring + 4 + 2 * (self.next_avail % self.size)
        head = self._u16(memory, slot)
        self.next_avail = (self.next_avail + 1) & _U16_MASK
        if self.event_idx:
            self._write_u16(memory, self.used_ring + 4 + spec.USED_ELEM_SIZE * self.size,
                            self.next_avail)
        return self._walk(memory, head)

    def _walk(self, memory: GuestRam, head: int) -> DescriptorChain:
        if head >= self.size:
            raise QueueError(f"virtqueue: chain head {head} is outside the queue (size {self.size})")
        chain = DescriptorChain(head, [], [])
        table, count, index = self.desc_table, self.size, head
        seen = 0
        indirect = False
        while True:
            seen += 1
            if seen > count:
                raise QueueError(f"virtqueue: chain from head {head} is longer than its table "
                                 f"({count} descriptors): a loop or a chain longer than the queue")
            address, length, flags, nxt = _DESC.unpack(memory.read(table + spec.DESC_SIZE * index,
                                                                   spec.DESC_SIZE))
            if flags & spec.DESC_F_INDIRECT:
                if indirect:
                    raise QueueError(f"virtqueue: chain {head}: an indirect table inside an "
                                     "indirect table")
                if flags & spec.DESC_F_NEXT:
                    raise QueueError(f"virtqueue: chain {head}: descriptor {index} has both "
                                     "INDIRECT and NEXT")
                if length == 0 or length % spec.DESC_SIZE or length // spec.DESC_SIZE > spec.MAX_QUEUE_SIZE:
                    raise QueueError(f"virtqueue: chain {head}: indirect table length {length} "
                                     f"is not a non-zero multiple of {spec.DESC_SIZE} up to "
                                     f"{spec.MAX_QUEUE_SIZE} descriptors")
                if not memory.contains(address, length):
                    raise QueueError(f"virtqueue: chain {head}: indirect table "
                                     f"[{address:#x}, {address + length:#x}) is not in guest RAM")
                if chain.readable or chain.writable:
                    raise QueueError(f"virtqueue: chain {head}: an indirect table after "
                                     "direct descriptors")
                table, count, index, seen, indirect = address, length // spec.DESC_SIZE, 0, 0, True
                continue
            if length and not memory.contains(address, length):
                raise QueueError(f"virtqueue: chain {head}: buffer [{address:#x}, "
                                 f"{address + length:#x}) ({length} bytes) is not inside guest RAM")
            if flags & spec.DESC_F_WRITE:
                chain.writable.append(Buffer(address, length))
            elif chain.writable:
                raise QueueError(f"virtqueue: chain {head}: a device-readable buffer after a "
                                 "device-writable one")
            else:
                chain.readable.append(Buffer(address, length))
            if not flags & spec.DESC_F_NEXT:
                return chain
            if nxt >= count:
                raise QueueError(f"virtqueue: chain {head}: next index {nxt} is outside its "
                                 f"table of {count} descriptors")
            index = nxt

    # -- device ring ------------------------------------------------------------------------
    def _write_u16(self, memory: GuestRam, address: int, value: int) -> None:
        memory.write(address, _U16.pack(value & _U16_MASK))

    def add_used(self, memory: GuestRam, head: int, length: int) -> None:
        """Return chain ``head`` to the driver with ``length`` bytes written into it."""
        slot = self.used_ring + 4 + spec.USED_ELEM_SIZE * (self.next_used % self.size)
        memory.write(slot, _USED_ELEM.pack(head, length))
        memory_fence()  # the element before the index that publishes it (x86 keeps store order)
        self.next_used = (self.next_used + 1) & _U16_MASK
        self._write_u16(memory, self.used_ring + 2, self.next_used)

    def needs_interrupt(self, memory: GuestRam) -> bool:
        """Whether the driver wants a used-buffer notification now (2.7.10 / 2.7.7.2)."""
        memory_fence()
        if self.event_idx:
            used_event = self._u16(memory, self.avail_ring + 4 + 2 * self.size)
            new, old = self.next_used, self.signalled_used
            self.signalled_used = new
            if old is None:
                return True
            return ((new - used_event - 1) & _U16_MASK) < ((new - old) & _U16_MASK)
        flags = self._u16(memory, self.avail_ring)
        return not flags & spec.AVAIL_F_NO_INTERRUPT

    def drained(self, memory: GuestRam) -> bool:
        """Publish where the device stopped (avail_event) and re-check that nothing came in
        meanwhile: True when the queue is really empty."""
        if self.event_idx:
            self._write_u16(memory, self.used_ring + 4 + spec.USED_ELEM_SIZE * self.size,
                            self.next_avail)
        memory_fence()
        return self.pending(memory) == 0


def gather(memory: GuestRam, buffers: list[Buffer], limit: int | None = None) -> bytes:
    """The bytes of ``buffers`` in order (at most ``limit``)."""
    out = bytearray()
    for b in buffers:
        n = b.length if limit is None else min(b.length, limit - len(out))
        if n <= 0:
            break
        out += memory.read(b.address, n)
    return bytes(out)


def scatter(memory: GuestRam, buffers: list[Buffer], data: bytes | bytearray | memoryview) -> int:
    """Copy ``data`` into ``buffers`` in order; the number of bytes written."""
    src = memoryview(data).cast("B")
    done = 0
    for b in buffers:
        if done >= len(src):
            break
        n = min(b.length, len(src) - done)
        memory.write(b.address, src[done:done + n])
        done += n
    return done


def views(memory: GuestRam, buffers: list[Buffer]) -> list[memoryview]:
    """Zero-copy views of ``buffers`` (for ``os.preadv``/``os.pwritev``). Release them after use."""
    try:
        return [memory.view(b.address, b.length) for b in buffers if b.length]
    except GuestMemoryError as e:
        raise QueueError(f"virtqueue: {e}") from None
