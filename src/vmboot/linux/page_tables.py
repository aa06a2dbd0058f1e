"""Identity-mapped page tables for the 64-bit entry: 2 MiB pages over the first N GiB."""

from __future__ import annotations

import numpy as np

from vmboot.linux.layout import page_table_bytes
from vmboot.x86.paging import (
    ENTRIES_PER_TABLE,
    PAGE_SIZE_1G,
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
    table = np.zeros(page_table_bytes(address_space_gib) // 8, dtype="<u8")
    per = ENTRIES_PER_TABLE
    flags = PTE_PRESENT | PTE_WRITABLE
    pdpt = base + TABLE_SIZE
    table[0] = pdpt | flags
    pds = base + 2 * TABLE_SIZE + np.arange(address_space_gib, dtype="<u8") * TABLE_SIZE
    table[per : per + address_space_gib] = pds | flags
    phys = np.arange(address_space_gib * per, dtype="<u8") * PAGE_SIZE_2M
    table[2 * per :] = phys | (flags | PTE_PS)
    assert per * PAGE_SIZE_2M == PAGE_SIZE_1G
    return table.tobytes()
