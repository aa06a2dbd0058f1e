"""Port-I/O and MMIO buses: route a guest access to the device that owns the address.

A device implements :class:`PortDevice` or :class:`MmioDevice` and is attached to a
range. Unknown addresses are answered by the bus itself: reads return all-ones,
writes are dropped, and each distinct unknown address is logged once.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("vmboot.devices")

MAX_LOGGED_UNKNOWN = 4096
"""Distinct unknown MMIO addresses remembered (and logged once each); later ones are only
counted. The port bus remembers every port: there are only 65,536."""


class PortDevice(Protocol):
    """A device on the port-I/O bus. ``offset`` is relative to the start of its range."""

    def port_read(self, offset: int, size: int) -> int: ...

    def port_write(self, offset: int, size: int, value: int) -> None: ...


class MmioDevice(Protocol):
    """A device on the MMIO bus. ``offset`` is relative to the start of its range."""

    def mmio_read(self, offset: int, size: int) -> int: ...

    def mmio_write(self, offset: int, size: int, value: int) -> None: ...


@dataclass
class _Range:
    start: int
    length: int
    device: object
    name: str

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass
class _Bus:
    """Sorted, non-overlapping ranges; lookup by bisection."""

    kind: str
    limit: int
    _ranges: list[_Range] = field(default_factory=list)
    _starts: list[int] = field(default_factory=list)
    unknown_seen: set[int] = field(default_factory=set)
    unknown_unlogged: int = 0
    """Accesses to unknown addresses past ``max_unknown`` distinct ones (counted, not kept)."""
    max_unknown: int = MAX_LOGGED_UNKNOWN

    def attach(self, start: int, length: int, device: object, name: str) -> None:
        from vmboot.errors import BootConfigError

        if length <= 0 or start < 0 or start + length > self.limit:
            raise BootConfigError(
                f"{self.kind} bus: device {name!r} range [{start:#x}, {start + length:#x}) is "
                f"outside 0..{self.limit:#x}"
            )
        for r in self._ranges:
            if start < r.end and r.start < start + length:
                raise BootConfigError(
                    f"{self.kind} bus: device {name!r} at [{start:#x}, {start + length:#x}) overlaps "
                    f"{r.name!r} at [{r.start:#x}, {r.end:#x})"
                )
        i = bisect.bisect(self._starts, start)
        self._ranges.insert(i, _Range(start, length, device, name))
        self._starts.insert(i, start)

    def find(self, address: int) -> _Range | None:
        i = bisect.bisect(self._starts, address) - 1
        if i >= 0:
            r = self._ranges[i]
            if address < r.end:
                return r
        return None

    def note_unknown(self, address: int, size: int, write: bool, value: int = 0) -> None:
        if address not in self.unknown_seen:
            if len(self.unknown_seen) >= self.max_unknown:
                # A guest sweeping the address space must not grow host memory without bound.
                self.unknown_unlogged += 1
                return
            self.unknown_seen.add(address)
            what = f"write {value:#x}" if write else "read"
            log.info("%s: unhandled %d-byte %s at %#x (logged once)", self.kind, size, what, address)

    def devices(self) -> list[tuple[int, int, str]]:
        return [(r.start, r.length, r.name) for r in self._ranges]


def _all_ones(size: int) -> int:
    return (1 << (8 * size)) - 1


class PortBus(_Bus):
    """The 64 KiB x86 I/O port space."""

    def __init__(self) -> None:
        super().__init__("port I/O", 0x10000, max_unknown=0x10000)

    def attach_device(self, start: int, length: int, device: PortDevice, name: str) -> None:
        self.attach(start, length, device, name)

    def read(self, port: int, size: int) -> int:
        r = self.find(port)
        if r is None:
            self.note_unknown(port, size, False)
            return _all_ones(size)
        dev: PortDevice = r.device  # type: ignore[assignment]
        return dev.port_read(port - r.start, size) & _all_ones(size)

    def write(self, port: int, size: int, value: int) -> None:
        r = self.find(port)
        if r is None:
            self.note_unknown(port, size, True, value)
            return
        dev: PortDevice = r.device  # type: ignore[assignment]
        dev.port_write(port - r.start, size, value & _all_ones(size))


class MmioBus(_Bus):
    """The guest-physical MMIO space (addresses that are not RAM)."""

    def __init__(self) -> None:
        super().__init__("MMIO", 1 << 52)

    def attach_device(self, start: int, length: int, device: MmioDevice, name: str) -> None:
        self.attach(start, length, device, name)

    def read(self, address: int, size: int) -> int:
        r = self.find(address)
        if r is None:
            self.note_unknown(address, size, False)
            return _all_ones(size)
        dev: MmioDevice = r.device  # type: ignore[assignment]
        return dev.mmio_read(address - r.start, size) & _all_ones(size)

    def write(self, address: int, size: int, value: int) -> None:
        r = self.find(address)
        if r is None:
            self.note_unknown(address, size, True, value)
            return
        dev: MmioDevice = r.device  # type: ignore[assignment]
        dev.mmio_write(address - r.start, size, value & _all_ones(size))
