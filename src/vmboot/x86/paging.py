"""Page-table entry bits and the geometry of 4- and 5-level paging."""

from __future__ import annotations

PTE_PRESENT = 1 << 0
PTE_WRITABLE = 1 << 1
PTE_USER = 1 << 2
PTE_PWT = 1 << 3
PTE_PCD = 1 << 4
PTE_ACCESSED = 1 << 5
PTE_DIRTY = 1 << 6
PTE_PS = 1 << 7
"""Page size: in a PDPTE maps 1 GiB, in a PDE maps 2 MiB."""
PTE_GLOBAL = 1 << 8
PTE_NX = 1 << 63
PTE_ADDR_MASK = 0x000F_FFFF_FFFF_F000
"""Physical-address bits of an entry (up to MAXPHYADDR 52)."""

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
ENTRIES_PER_TABLE = 512
ENTRY_SIZE = 8
TABLE_SIZE = ENTRIES_PER_TABLE * ENTRY_SIZE

PAGE_SIZE_2M = 1 << 21
PAGE_SIZE_1G = 1 << 30
PML4_SPAN = 1 << 39
"""Bytes one PML4 entry maps (512 GiB)."""

LEVEL_NAMES_4 = ("PML4", "PDPT", "PD", "PT")
LEVEL_NAMES_5 = ("PML5", "PML4", "PDPT", "PD", "PT")


def is_canonical(address: int, va_bits: int = 48) -> bool:
    """True if ``address`` is canonical for ``va_bits``-bit virtual addresses (48 or 57)."""
    top = address >> (va_bits - 1)
    return top == 0 or top == (1 << (64 - va_bits + 1)) - 1
