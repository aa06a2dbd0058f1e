"""The E820 memory map handed to the kernel (``struct boot_e820_entry``)."""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from vmboot.errors import BootConfigError
from vmboot.hv.memory_map import MMIO_GAP_END, MMIO_GAP_START
from vmboot.linux import bootparam as bp
from vmboot.units import MiB

_ENTRY = struct.Struct("<QQI")
assert _ENTRY.size == bp.E820_ENTRY_SIZE

EBDA_START = 0x9FC00
"""Start of the Extended BIOS Data Area on a PC: conventional RAM ends here."""
HIGH_MEMORY_START = 1 * MiB
"""End of the legacy VGA/ROM area; RAM resumes here."""


class E820Type(enum.IntEnum):
    """``E820_TYPE_*`` (arch/x86/include/asm/e820/types.h)."""

    RAM = 1
    RESERVED = 2
    ACPI = 3
    NVS = 4
    UNUSABLE = 5
    PMEM = 7
    PRAM = 12


@dataclass(frozen=True, slots=True)
class E820Entry:
    """One memory-map entry: ``size`` bytes at guest-physical ``addr`` of ``type``."""

    addr: int
    size: int
    type: int = E820Type.RAM

    @property
    def end(self) -> int:
        return self.addr + self.size

    def pack(self) -> bytes:
        return _ENTRY.pack(self.addr, self.size, int(self.type))

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> E820Entry:
        addr, size, typ = _ENTRY.unpack(raw)
        return cls(addr, size, typ)

    def __str__(self) -> str:
        try:
            name = E820Type(self.type).name.lower()
        except ValueError:
            name = f"type {self.type}"
        return f"[mem {self.addr:#018x}-{self.end - 1:#018x}] {name}"


def default_e820_map(start: int, end: int) -> list[E820Entry]:
    """The memory map of a PC with RAM ``[start, end)`` counted as if contiguous.

    ``end - start`` is the amount of RAM (``start`` is normally 0). The layout is what
    Linux expects of a PC: usable RAM below the EBDA (0x9FC00), reserved up to 1 MiB,
    usable RAM above; RAM that would reach into the 32-bit MMIO hole
    (``MMIO_GAP_START``..4 GiB) continues from 4 GiB instead, exactly as
    :func:`vmboot.hv.memory_map.ram_regions` places guest RAM.
    """
    if start < 0 or end <= start:
        raise BootConfigError(f"e820: empty or negative RAM range [{start:#x}, {end:#x})")
    if start >= EBDA_START:
        raise BootConfigError(
            f"e820: RAM start {start:#x} must be below the EBDA at {EBDA_START:#x}"
        )
    if end <= HIGH_MEMORY_START:
        raise BootConfigError(
            f"e820: RAM end {end:#x} must be above 1 MiB ({HIGH_MEMORY_START:#x}) for a 64-bit kernel"
        )
    entries = [
        E820Entry(start, EBDA_START - start, E820Type.RAM),
        E820Entry(EBDA_START, HIGH_MEMORY_START - EBDA_START, E820Type.RESERVED),
    ]
    low_end = min(end, MMIO_GAP_START)
    entries.append(E820Entry(HIGH_MEMORY_START, low_end - HIGH_MEMORY_START, E820Type.RAM))
    if end > MMIO_GAP_START:
        entries.append(E820Entry(MMIO_GAP_END, end - MMIO_GAP_START, E820Type.RAM))
    return entries


def validate_e820(entries: Sequence[E820Entry]) -> None:
    """Refuse entries with a negative/zero size, 64-bit overflow, or overlaps."""
    prev: E820Entry | None = None
    for i, e in enumerate(sorted(entries, key=lambda x: x.addr)):
        if e.addr < 0 or e.size <= 0 or e.end > 1 << 64:
            raise BootConfigError(
                f"e820 entry {i} ({e}): address and size must be non-negative, size non-zero, "
                f"and the end within 64 bits"
            )
        if not 0 < e.type < 1 << 32:
            raise BootConfigError(f"e820 entry {i}: type {e.type} is not a 32-bit E820 type")
        if prev is not None and e.addr < prev.end:
            raise BootConfigError(f"e820: entries overlap: {prev} and {e}")
        prev = e


def pack_table(entries: Sequence[E820Entry]) -> bytes:
    return b"".join(e.pack() for e in entries)
