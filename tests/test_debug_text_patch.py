"""Patching a stopped guest's kernel from the host: writes through the page tables, patches
checked against the function they land in, and ``__bug_table`` entries decoded and moved.

A synthetic kernel in a MemoryVM: text at 0xffffffff81000000 (mapped read-only for the
guest, which the host ignores), a ``__bug_table`` of ``CONFIG_DEBUG_BUGVERBOSE`` entries and
their file names, moved by a KASLR slide.
"""

from __future__ import annotations

import struct

import pytest

from debug_support import PageTables
from vmboot.debug.page_walk import GuestAddressSpace
from vmboot.debug.symtab import SymbolTable
from vmboot.debug.text_patch import (
    BUGFLAG_NO_CUT_HERE,
    BUGFLAG_ONCE,
    BUGFLAG_WARNING,
    LOAD_NULL,
    UD2,
    KernelText,
)
from vmboot.errors import DebugError, PageWalkError
from vmboot.hv import MemoryVM
from vmboot.x86.paging import PAGE_SIZE

LINK = 0xFFFF_FFFF_8100_0000
SLIDE = 0x1200_0000
TEXT_PHYS = 0x20_0000
TEXT_PAGES = 4
TAINT_WARN = 9 << 8
FUNCTIONS = {"_text": 0, "f_sync": 0x100, "f_host": 0x110, "f_other": 0x200}
FUNCTION_SIZE = 0x10
BUG_TABLE = 0x3000
"""Offsets from ``_text``; the table sits in the last text page (as data, not code)."""
FILES = 0x3800
ENTRIES = [  # (site offset, line, flags)
    (0x205, 11, BUGFLAG_WARNING | BUGFLAG_ONCE | BUGFLAG_NO_CUT_HERE | TAINT_WARN),
    (0x209, 22, 0),
    (0x20D, 33, BUGFLAG_WARNING | BUGFLAG_NO_CUT_HERE | TAINT_WARN),
]


def kernel(vm: MemoryVM, table_bytes: bytes | None = None) -> KernelText:
    pt = PageTables(vm, 0x1000)
    for page in range(TEXT_PAGES):
        pt.map(LINK + SLIDE + page * PAGE_SIZE, TEXT_PHYS + page * PAGE_SIZE)
    base = LINK + SLIDE
    table = bytearray()
    for n, (site, line, flags) in enumerate(ENTRIES):
        at = base + BUG_TABLE + 12 * n
        name = FILES + 0x20 * n
        vm.write(TEXT_PHYS + name, f"kernel/f{n}.c\0".encode())
        table += struct.pack("<iiHH", base + site - at, base + name - (at + 4), line, flags)
    vm.write(TEXT_PHYS + BUG_TABLE, bytes(table) if table_bytes is None else table_bytes)
    size = len(table) if table_bytes is None else len(table_bytes)
    addresses = {**{n: LINK + off for n, off in FUNCTIONS.items()},
                 "__start___bug_table": LINK + BUG_TABLE,
                 "__stop___bug_table": LINK + BUG_TABLE + size,
                 "_end": LINK + TEXT_PAGES * PAGE_SIZE}
    names = [n for n in FUNCTIONS if n != "_text"]
    functions = SymbolTable.from_names([addresses[n] for n in names], [n.encode() for n in names],
                                       "<test>", sizes=[FUNCTION_SIZE] * len(names))
    return KernelText(GuestAddressSpace(vm, pt.root), addresses, functions, SLIDE)


def test_a_patch_lands_at_the_slid_address_and_restores() -> None:
    vm = MemoryVM(8 << 20)
    text = kernel(vm)
    vm.write(TEXT_PHYS + 0x110, b"\x41\x54\x31\xc0\xb9\x10\x00\x00\x00")
    patch = text.patch("f_host", LOAD_NULL)
    assert patch.address == LINK + SLIDE + 0x110
    assert vm.read(TEXT_PHYS + 0x110, 9) == LOAD_NULL + b"\x00"
    assert patch.original == b"\x41\x54\x31\xc0\xb9\x10\x00\x00"
    patch.restore()
    assert vm.read(TEXT_PHYS + 0x110, 9) == b"\x41\x54\x31\xc0\xb9\x10\x00\x00\x00"


def test_a_patch_past_the_function_end_or_empty_or_unknown_writes_nothing() -> None:
    vm = MemoryVM(8 << 20)
    text = kernel(vm)
    before = vm.read(TEXT_PHYS, TEXT_PAGES * PAGE_SIZE)
    with pytest.raises(DebugError, match=r"f_sync\+0xc: 8 bytes run past .* at most 4 bytes"):
        text.patch("f_sync", LOAD_NULL, offset=0xC)
    with pytest.raises(DebugError, match="code is empty"):
        text.patch("f_sync", b"")
    with pytest.raises(DebugError, match="'nope' is not in the symbol table"):
        text.patch("nope", UD2)
    with pytest.raises(PageWalkError):  # not mapped: translated before anything is written
        text.patch(LINK + SLIDE + TEXT_PAGES * PAGE_SIZE - 1, UD2)
    assert vm.read(TEXT_PHYS, TEXT_PAGES * PAGE_SIZE) == before


def test_a_write_across_a_mapped_and_an_unmapped_page_writes_nothing() -> None:
    vm = MemoryVM(8 << 20)
    text = kernel(vm)
    last = LINK + SLIDE + TEXT_PAGES * PAGE_SIZE - 2
    before = vm.read(TEXT_PHYS + TEXT_PAGES * PAGE_SIZE - 2, 2)
    with pytest.raises(PageWalkError):
        text.space.write(last, b"abcd")
    assert vm.read(TEXT_PHYS + TEXT_PAGES * PAGE_SIZE - 2, 2) == before


def test_bug_table_entries_are_decoded_with_sites_files_lines_and_flags() -> None:
    text = kernel(MemoryVM(8 << 20))
    entries = text.bug_entries()
    assert [(e.bug_address - LINK - SLIDE, e.file, e.line, e.flags) for e in entries] == [
        (site, f"kernel/f{n}.c", line, flags) for n, (site, line, flags) in enumerate(ENTRIES)]
    assert [e.warning for e in entries] == [True, False, True]


@pytest.mark.parametrize(("warning", "index"), [(False, 1), (True, 2)])
def test_claiming_an_entry_points_it_at_the_patch_and_gives_it_back(warning: bool,
                                                                    index: int) -> None:
    """A BUG() entry, or a WARN() one that is not WARN_ONCE() (it would print only once)."""
    text = kernel(MemoryVM(8 << 20))
    target = text.address_of("f_sync")
    entry, patch = text.claim_bug_entry(target, warning=warning)
    now = text.bug_entries()
    assert now[index].bug_address == target and now[index].line == ENTRIES[index][1]
    assert entry.bug_address == LINK + SLIDE + ENTRIES[index][0]
    patch.restore()
    assert text.bug_entries()[index].bug_address == entry.bug_address


def test_a_table_that_points_outside_the_kernel_is_refused() -> None:
    garbage = struct.pack("<iiHH", 0x7FFF_0000, 0, 1, 0) * 2
    with pytest.raises(DebugError, match=r"no entry layout .* points every entry into the kernel"):
        kernel(MemoryVM(8 << 20), garbage).bug_entries()


def test_no_entry_of_the_wanted_kind() -> None:
    only_bugs = b"".join(struct.pack("<iiHH", 0x100 - 12 * n, 0, 1, 0) for n in range(2))
    text = kernel(MemoryVM(8 << 20), only_bugs)
    with pytest.raises(DebugError, match=r"no plain WARN\(\) entry"):
        text.claim_bug_entry(text.address_of("f_sync"), warning=True)
