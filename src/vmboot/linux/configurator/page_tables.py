"""Identity-mapped page tables for the 64-bit entry: 2 MiB pages over the first N GiB."""

from __future__ import annotations

from array import array

from vmboot.linux.configurator.layout import page_table_bytes
from vmboot.x86.paging import (
    ENTRIES_PER_TABLE,
    PAGE_SIZE_2M,
    PTE_PRESENT,
    PTE_PS,
    PTE_WRITABLE,
    TABLE_SIZE,
)


def identity_map_tables(base: int, address_space_gib: int) -> bytes:
    """The PML4, PDPT and page directories placed at guest-physical ``base``.

    PML4[0] -> PDPT at base + 4 KiB; PDPT[i] -> PD_i at base + (2 + i) * 4 KiB;
    PD_i[j] maps i GiB + j * 2 MiB to itself. CR3 = ``base``.
    """
    per = ENTRIES_PER_TABLE
    flags = PTE_PRESENT | PTE_WRITABLE
    table = array("Q", bytes(page_table_bytes(address_space_gib)))
    table[0] = (base + TABLE_SIZE) | flags
    for gib in range(address_space_gib):
        table[per + gib] = (base + (2 + gib) * TABLE_SIZE) | flags
    large = flags | PTE_PS
    table[2 * per :] = array("Q", ((i * PAGE_SIZE_2M) | large for i in range(address_space_gib * per)))
    return table.tobytes()  # array("Q") is native-endian: little-endian on x86-64 hosts
