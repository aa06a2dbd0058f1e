"""Guest page walks: 4- and 5-level paging, 4 KiB / 2 MiB / 1 GiB pages, PCID bits, errors."""

from __future__ import annotations

import pytest

from debug_support import PageTables
from vmboot.debug.page_walk import GuestAddressSpace
from vmboot.errors import PageWalkError
from vmboot.hv import MemoryVM
from vmboot.x86.cr import CR0_PG, CR3_NOFLUSH, CR4_LA57, CR4_PCIDE
from vmboot.x86.paging import PAGE_SIZE, PAGE_SIZE_1G, PAGE_SIZE_2M


@pytest.fixture
def vm() -> MemoryVM:
    return MemoryVM(8 << 20)


def test_4k_2m_1g_pages_translate_exactly(vm: MemoryVM) -> None:
    pt = PageTables(vm, 0x1000)
    pt.map(0xFFFF_8880_0000_0000, 0, PAGE_SIZE_1G)
    pt.map(0xFFFF_FFFF_8120_0000, 0x60_0000, PAGE_SIZE_2M)
    pt.map(0xFFFF_C900_0000_3000, 0x5000)
    space = GuestAddressSpace(vm, pt.root, 0)
    t = space.translate(0xFFFF_8880_0012_3456)
    assert (t.physical, t.page_size) == (0x12_3456, PAGE_SIZE_1G)
    t = space.translate(0xFFFF_FFFF_8121_2345)
    assert (t.physical, t.page_size) == (0x61_2345, PAGE_SIZE_2M)
    t = space.translate(0xFFFF_C900_0000_3ABC)
    assert (t.physical, t.page_size) == (0x5ABC, PAGE_SIZE)


def test_read_spans_pages_mapped_to_scattered_frames(vm: MemoryVM) -> None:
    pt = PageTables(vm, 0x1000)
    pt.map(0x40_0000, 0x30_0000)
    pt.map(0x40_1000, 0x20_0000)
    vm.write(0x30_0FFC, b"abcd")
    vm.write(0x20_0000, b"efgh")
    space = GuestAddressSpace(vm, pt.root)
    assert space.read(0x40_0FFC, 8) == b"abcdefgh"


def test_pcid_and_noflush_bits_of_cr3_are_ignored(vm: MemoryVM) -> None:
    pt = PageTables(vm, 0x1000)
    pt.map(0xFFFF_C900_0000_0000, 0x7000)
    space = GuestAddressSpace(vm, pt.root | 0x5 | CR3_NOFLUSH, CR4_PCIDE)
    assert space.translate(0xFFFF_C900_0000_0010).physical == 0x7010


def test_five_level_paging_with_57_bit_addresses(vm: MemoryVM) -> None:
    pt = PageTables(vm, 0x1000, five_level=True)
    va = 0xFF12_3456_7800_0000  # canonical only with 57-bit addresses
    pt.map(va, 0x40_0000, PAGE_SIZE_2M)
    pt.map(0xFFFF_FFFF_8100_0000, 0x20_0000, PAGE_SIZE_2M)
    space = GuestAddressSpace(vm, pt.root, CR4_LA57)
    assert space.translate(va + 0x1234).physical == 0x40_1234
    assert space.translate(0xFFFF_FFFF_8100_0042).physical == 0x20_0042
    four = GuestAddressSpace(vm, pt.root, 0)
    with pytest.raises(PageWalkError, match=r"not canonical for 48-bit"):
        four.translate(va)


@pytest.mark.parametrize(("five", "level"), [(False, "PML4"), (True, "PML5")])
def test_missing_top_level_entry_names_level_and_address(vm: MemoryVM, five: bool, level: str) -> None:
    pt = PageTables(vm, 0x1000, five_level=five)
    space = GuestAddressSpace(vm, pt.root, CR4_LA57 if five else 0)
    with pytest.raises(PageWalkError, match=rf"{level} entry \d+ .* not present .*0xffffc90000000000"):
        space.translate(0xFFFF_C900_0000_0000)


@pytest.mark.parametrize(("mapped_size", "missing_va", "level"), [
    (PAGE_SIZE_1G, 0xFFFF_C900_4000_0000, "PDPT"),
    (PAGE_SIZE_2M, 0xFFFF_C900_0020_0000, "PD"),
    (PAGE_SIZE, 0xFFFF_C900_0000_1000, "PT"),
])
def test_missing_lower_level_entries(vm: MemoryVM, mapped_size: int, missing_va: int, level: str) -> None:
    pt = PageTables(vm, 0x1000)
    pt.map(0xFFFF_C900_0000_0000, 0, mapped_size)
    space = GuestAddressSpace(vm, pt.root)
    with pytest.raises(PageWalkError, match=rf"^{level} entry .*{missing_va:#x}"):
        space.translate(missing_va)


def test_table_outside_guest_ram_is_a_page_walk_error(vm: MemoryVM) -> None:
    space = GuestAddressSpace(vm, 0x4000_0000)
    with pytest.raises(PageWalkError, match=r"PML4 table at 0x40000000 .* outside guest RAM"):
        space.translate(0xFFFF_FFFF_8100_0000)


def test_paging_disabled_means_identity(vm: MemoryVM) -> None:
    space = GuestAddressSpace(vm, 0, 0, cr0=0)
    vm.write(0x1234, b"xyz")
    assert space.read(0x1234, 3) == b"xyz"
    assert GuestAddressSpace(vm, 0, 0, cr0=CR0_PG).paging
