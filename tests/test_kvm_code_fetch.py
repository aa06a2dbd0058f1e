"""vmboot.vmm.code_fetch: reading instruction bytes at RIP through guest page tables (no KVM)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from vmboot.errors import PageWalkError
from vmboot.hv.guest_memory import GuestMemory
from vmboot.vmm.code_fetch import code_address, read_linear, translate
from vmboot.x86 import cr
from vmboot.x86.paging import PTE_PRESENT, PTE_PS, PTE_WRITABLE

P = PTE_PRESENT | PTE_WRITABLE
CR0_PAGING = cr.CR0_PE | cr.CR0_PG
CR4_PAE = cr.CR4_PAE
EFER_LONG = cr.EFER_LME | cr.EFER_LMA
PML4, PDPT, PD, PT = 0x1000, 0x2000, 0x3000, 0x4000
KERNEL_VA = 0xFFFF_FFFF_8100_0000


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    mem = GuestMemory(8 << 20)
    yield mem
    mem.close()


def _put(mem: GuestMemory, table: int, index: int, entry: int) -> None:
    mem.write(table + 8 * index, struct.pack("<Q", entry))


def test_no_paging_is_identity(memory: GuestMemory) -> None:
    assert translate(memory, cr.CR0_PE, 0, 0, 0, 0x1234) == 0x1234
    assert code_address(0x10, 0xF0000, 0) == 0xF0010
    assert code_address(0xFFFF_FFFF_8100_0000, 0x1234, EFER_LONG) == 0xFFFF_FFFF_8100_0000


def test_four_level_with_4k_2m_and_1g_pages(memory: GuestMemory) -> None:
    # KERNEL_VA: PML4[511] -> PDPT[510] -> PD[8] -> PT[0] -> 0x5000 (4 KiB page)
    _put(memory, PML4, 511, PDPT | P)
    _put(memory, PDPT, 510, PD | P)
    _put(memory, PD, 8, PT | P)
    _put(memory, PT, 0, 0x5000 | P)
    # KERNEL_VA + 2 MiB: PD[9] is a 2 MiB page at 0x400000
    _put(memory, PD, 9, 0x400000 | P | PTE_PS)
    # 0x4000_0000 (PML4[0] -> PDPT[1]): a 1 GiB page at 0
    _put(memory, PML4, 0, PDPT | P)
    _put(memory, PDPT, 1, 0 | P | PTE_PS)
    memory.write(0x5000 + 0x10, b"\x0f\x0b")
    assert translate(memory, CR0_PAGING, PML4, CR4_PAE, EFER_LONG, KERNEL_VA + 0x10) == 0x5010
    assert translate(memory, CR0_PAGING, PML4, CR4_PAE, EFER_LONG, KERNEL_VA + 0x200123) == 0x400123
    assert translate(memory, CR0_PAGING, PML4, CR4_PAE, EFER_LONG, 0x4000_1234) == 0x1234
    assert read_linear(memory, CR0_PAGING, PML4, CR4_PAE, EFER_LONG, KERNEL_VA + 0x10, 2) == b"\x0f\x0b"


def test_not_present_names_the_level(memory: GuestMemory) -> None:
    with pytest.raises(PageWalkError, match=r"PML4 entry .* not present"):
        translate(memory, CR0_PAGING, PML4, CR4_PAE, EFER_LONG, KERNEL_VA)
    _put(memory, PML4, 511, PDPT | P)
    with pytest.raises(PageWalkError, match="PDPT entry"):
        translate(memory, CR0_PAGING, PML4, CR4_PAE, EFER_LONG, KERNEL_VA)


def test_read_stops_at_an_unmapped_page(memory: GuestMemory) -> None:
    _put(memory, PML4, 511, PDPT | P)
    _put(memory, PDPT, 510, PD | P)
    _put(memory, PD, 8, PT | P)
    _put(memory, PT, 0, 0x5000 | P)  # PT[1] not present
    memory.write(0x5FFD, b"\x90\x90\x90")
    got = read_linear(memory, CR0_PAGING, PML4, CR4_PAE, EFER_LONG, KERNEL_VA + 0xFFD, 15)
    assert got == b"\x90\x90\x90"
    with pytest.raises(PageWalkError):
        read_linear(memory, CR0_PAGING, PML4, CR4_PAE, EFER_LONG, KERNEL_VA + 0x1000, 15)


def test_32bit_paging(memory: GuestMemory) -> None:
    memory.write(PD, struct.pack("<I", PT | P))
    memory.write(PT + 4 * 3, struct.pack("<I", 0x7000 | P))
    memory.write(PD + 4 * 1, struct.pack("<I", 0x400000 | P | PTE_PS))
    assert translate(memory, CR0_PAGING, PD, 0, 0, 0x3123) == 0x7123
    assert translate(memory, CR0_PAGING, PD, 0, 0, 0x400042) == 0x400042
