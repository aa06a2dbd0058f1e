"""Guest page-table walker over hostile page tables (4- and 5-level, large pages, loops)."""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

import contextlib
import struct

from fuzz.harness import Bytes, Target, atheris_main
from vmboot.debug.page_walk import GuestAddressSpace
from vmboot.errors import PageWalkError
from vmboot.hv import MemoryVM

VM_BYTES = 4 << 20
_vm: MemoryVM | None = None


def _guest() -> MemoryVM:
    global _vm
    if _vm is None:
        _vm = MemoryVM(VM_BYTES)
    return _vm


def _seeds() -> list[bytes]:
    # cr0, cr3, cr4, four VAs, then table words: PML4 -> PDPT -> PD (2 MiB page) at 0x1000...
    head = struct.pack("<QQQ", 0x80000001, 0x0, 0)
    vas = struct.pack("<4Q", 0xFFFF_8000_0000_1234, 0x1234, 0x200000, 0xFFFF_FFFF_FFFF_F000)
    pml4 = struct.pack("<Q", 0x1003) + bytes(8 * 255) + struct.pack("<Q", 0x1003) + bytes(8 * 255)
    pdpt = struct.pack("<Q", 0x2003) + bytes(8 * 511)
    pd = struct.pack("<Q", 0x83) + struct.pack("<Q", 0x3003) + bytes(8 * 510)
    pt = b"".join(struct.pack("<Q", (i << 12) | 3) for i in range(512))
    return [head + vas + pml4 + pdpt + pd + pt, head.replace(b"\0" * 8, struct.pack("<Q", 1 << 12), 1) + vas]


def one_input(data: bytes) -> None:
    src = Bytes(data)
    cr0, cr3, cr4 = src.uint(8), src.uint(8), src.uint(8)
    vas = [src.uint(8) for _ in range(4)]
    tables = src.rest()
    vm = _guest()
    vm.zero(0, VM_BYTES)
    vm.write(0, tables[:VM_BYTES])
    space = GuestAddressSpace(vm, cr3, cr4, cr0)
    for va in vas:
        space.is_canonical(va)
        try:
            t = space.translate(va)
        except PageWalkError:
            continue  # unmapped: the next address is independent
        assert t.page_size in (4096, 2 << 20, 1 << 30), t
        with contextlib.suppress(PageWalkError):
            space.read(va, 16)
            space.read_u64(va)


TARGET = Target("page_walk", one_input, _seeds, lambda: list(range(0, 56, 8)), max_len=1 << 15,
                description="GuestAddressSpace.translate/read over hostile page tables")

if __name__ == "__main__":
    atheris_main(TARGET)
