"""Where guest RAM sits in the guest-physical address space of a PC-like machine.

RAM starts at guest-physical 0. Like a PC (and Firecracker), the top of the
32-bit space is kept free for MMIO devices: RAM that would reach into
``[MMIO_GAP_START, MMIO_GAP_END)`` continues from 4 GiB instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmboot.errors import BootConfigError
from vmboot.units import GiB, KiB, MiB

PAGE_SIZE = 4 * KiB
MMIO_GAP_START = 3 * GiB
"""First guest-physical byte of the 32-bit MMIO hole (devices, e.g. virtio-mmio at 0xd0000000)."""
MMIO_GAP_END = 4 * GiB
"""First guest-physical byte after the 32-bit MMIO hole."""
MIN_MEMORY = 2 * MiB
"""Smallest guest RAM vmboot accepts: room for the zero page, page tables and a stack."""
MAX_MEMORY = 1 << 46
"""Largest guest RAM vmboot accepts (64 TiB, below every current CPU's MAXPHYADDR)."""


@dataclass(frozen=True, slots=True)
class MemoryRegion:
    """A run of guest RAM: guest-physical ``gpa`` .. ``gpa + size``, at ``offset`` in the backing."""

    gpa: int
    size: int
    offset: int

    @property
    def end(self) -> int:
        """One past the last guest-physical byte."""
        return self.gpa + self.size


def ram_regions(memory_bytes: int) -> tuple[MemoryRegion, ...]:
    """Split ``memory_bytes`` of RAM into guest-physical regions around the MMIO hole."""
    if not isinstance(memory_bytes, int) or isinstance(memory_bytes, bool):
        raise BootConfigError(f"memory size: expected an integer byte count, got {memory_bytes!r}")
    if memory_bytes < MIN_MEMORY or memory_bytes > MAX_MEMORY:
        raise BootConfigError(
            f"memory size: {memory_bytes:#x} bytes is outside the accepted range "
            f"{MIN_MEMORY:#x} (2 MiB) .. {MAX_MEMORY:#x} (64 TiB)"
        )
    if memory_bytes % PAGE_SIZE:
        raise BootConfigError(
            f"memory size: {memory_bytes:#x} bytes is not a multiple of the 4 KiB page size"
        )
    if memory_bytes <= MMIO_GAP_START:
        return (MemoryRegion(0, memory_bytes, 0),)
    return (
        MemoryRegion(0, MMIO_GAP_START, 0),
        MemoryRegion(MMIO_GAP_END, memory_bytes - MMIO_GAP_START, MMIO_GAP_START),
    )
