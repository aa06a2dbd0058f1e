"""The one x86 page-table walker in vmboot: a linear address to a physical one.

It reads the guest's own tables through ``read(physical, n)``, so it serves both the run
loop (instruction bytes for an emulation-failure report, :mod:`vmboot.vmm.code_fetch`) and
the debugger (:class:`vmboot.debug.page_walk.GuestAddressSpace`, which adds a page cache
and the canonical-address check). Paging off, 32-bit paging without PAE (4 KiB and 4 MiB
pages), and 4- and 5-level paging (4 KiB, 2 MiB and 1 GiB pages); 32-bit PAE paging is
refused. A missing mapping raises :class:`~vmboot.errors.PageWalkError` naming the level.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from vmboot.errors import GuestMemoryError, PageWalkError
from vmboot.x86.cr import CR0_PG, CR3_ADDR_MASK, CR4_LA57, CR4_PAE, EFER_LMA
from vmboot.x86.paging import (
    ENTRY_SIZE,
    LEVEL_NAMES_4,
    LEVEL_NAMES_5,
    PAGE_SHIFT,
    PAGE_SIZE,
    PTE_ADDR_MASK,
    PTE_PRESENT,
    PTE_PS,
)

ReadPhysical = Callable[[int, int], bytes]
"""``read(physical, n)``: ``n`` bytes of guest RAM (raises GuestMemoryError outside it)."""

INDEX_BITS = 9
INDEX_MASK = (1 << INDEX_BITS) - 1
LARGE_PAGE_LEVELS = frozenset({"PDPT", "PD"})
"""Levels whose entries may map a page directly (PS bit): 1 GiB and 2 MiB."""
MASK32 = 0xFFFFFFFF
LARGE_PAGE_32 = 1 << 22
"""A 32-bit page directory entry with PS maps 4 MiB."""

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Translation:
    """Where a virtual address lands: ``physical`` address and the mapping ``page_size``."""

    virtual: int
    physical: int
    page_size: int


def translate(read: ReadPhysical, linear: int, *, cr0: int, cr3: int, cr4: int,
              efer: int) -> Translation:
    """Translate ``linear`` under the given control registers (see the module docstring)."""
    if not cr0 & CR0_PG:
        return Translation(linear, linear, PAGE_SIZE)
    if not cr4 & CR4_PAE:
        return _walk_32(read, cr3, linear)
    if not efer & EFER_LMA:
        raise PageWalkError(f"{linear:#x}: 32-bit PAE paging is not supported by this walker")
    return walk_long_mode(read, cr3, linear, five_level=bool(cr4 & CR4_LA57))


def walk_long_mode(read: ReadPhysical, cr3: int, va: int, *, five_level: bool) -> Translation:
    """Walk the 4- or 5-level tables rooted at ``cr3`` (PCID bits ignored) for ``va``."""
    levels = LEVEL_NAMES_5 if five_level else LEVEL_NAMES_4
    table = cr3 & CR3_ADDR_MASK
    for depth, level in enumerate(levels):
        shift = PAGE_SHIFT + INDEX_BITS * (len(levels) - 1 - depth)
        index = (va >> shift) & INDEX_MASK
        entry_gpa = table + index * ENTRY_SIZE
        try:
            entry: int = _U64.unpack(read(entry_gpa, ENTRY_SIZE))[0]
        except GuestMemoryError as exc:
            raise PageWalkError(
                f"{level} table at {table:#x} (entry {index}) is outside guest RAM while "
                f"translating {va:#x} (CR3={cr3:#x})"
            ) from exc
        if not entry & PTE_PRESENT:
            raise PageWalkError(
                f"{level} entry {index} at {entry_gpa:#x} is not present (value {entry:#x}) "
                f"while translating {va:#x} (CR3={cr3:#x})"
            )
        if depth == len(levels) - 1 or (level in LARGE_PAGE_LEVELS and entry & PTE_PS):
            size = 1 << shift
            base = (entry & PTE_ADDR_MASK) & ~(size - 1)
            return Translation(va, base + (va & (size - 1)), size)
        table = entry & PTE_ADDR_MASK
    raise AssertionError("unreachable: the last level always returns")


def _walk_32(read: ReadPhysical, cr3: int, linear: int) -> Translation:
    linear &= MASK32
    pde_addr = (cr3 & 0xFFFFF000) + (linear >> 22) * 4
    try:
        pde: int = _U32.unpack(read(pde_addr, 4))[0]
        if not pde & PTE_PRESENT:
            raise PageWalkError(f"{linear:#x}: PDE at {pde_addr:#x} is not present")
        if pde & PTE_PS:
            return Translation(linear, (pde & 0xFFC00000) | (linear & 0x3FFFFF), LARGE_PAGE_32)
        pte_addr = (pde & 0xFFFFF000) + ((linear >> 12) & 0x3FF) * 4
        pte: int = _U32.unpack(read(pte_addr, 4))[0]
    except GuestMemoryError as e:
        raise PageWalkError(f"{linear:#x}: a page-table entry is outside RAM ({e})") from None
    if not pte & PTE_PRESENT:
        raise PageWalkError(f"{linear:#x}: PTE at {pte_addr:#x} is not present")
    return Translation(linear, (pte & 0xFFFFF000) | (linear & 0xFFF), PAGE_SIZE)
