"""Reading and writing a stopped guest's memory by virtual address, through its own page tables.

The walk itself is :func:`vmboot.x86.page_walk.walk_long_mode` (4- and 5-level paging, 1 GiB
and 2 MiB pages, PCID bits of CR3 ignored), the one walker the run loop uses too; this adds
the canonical-address check and a per-page cache. With paging off addresses are physical.
"""

from __future__ import annotations

import struct

from vmboot.errors import GuestMemoryError, PageWalkError
from vmboot.hv.base import VirtualCPU, VirtualMachine
from vmboot.hv.registers import Register
from vmboot.x86.cr import CR0_PG, CR3_ADDR_MASK, CR4_LA57
from vmboot.x86.page_walk import Translation, walk_long_mode
from vmboot.x86.paging import (
    ENTRY_SIZE,
    LEVEL_NAMES_4,
    LEVEL_NAMES_5,
    PAGE_SHIFT,
    PAGE_SIZE,
    is_canonical,
)

VA_BITS_4LEVEL = 48
VA_BITS_5LEVEL = 57
_U64 = struct.Struct("<Q")


class GuestAddressSpace:
    """Reads guest memory by virtual address through the page tables rooted at ``cr3``."""

    def __init__(self, vm: VirtualMachine, cr3: int, cr4: int = 0, cr0: int = CR0_PG) -> None:
        self.vm = vm
        self.cr3 = cr3
        self.root = cr3 & CR3_ADDR_MASK
        self.paging = bool(cr0 & CR0_PG)
        self.five_level = bool(cr4 & CR4_LA57)
        self.levels = LEVEL_NAMES_5 if self.five_level else LEVEL_NAMES_4
        self.va_bits = VA_BITS_5LEVEL if self.five_level else VA_BITS_4LEVEL
        self._pages: dict[int, tuple[int, int]] = {}

    @classmethod
    def from_vcpu(cls, vcpu: VirtualCPU) -> GuestAddressSpace:
        regs = vcpu.get_registers([Register.CR0, Register.CR3, Register.CR4])
        return cls(vcpu.vm, regs[Register.CR3], regs[Register.CR4], regs[Register.CR0])

    def is_canonical(self, address: int) -> bool:
        return is_canonical(address, self.va_bits)

    def translate(self, va: int) -> Translation:
        """Walk the tables for ``va``; a missing mapping raises :class:`PageWalkError`."""
        if not self.paging:
            return Translation(va, va, PAGE_SIZE)
        page = va >> PAGE_SHIFT
        hit = self._pages.get(page)
        if hit is not None:
            base, size = hit
            return Translation(va, base + (va & (size - 1)), size)
        if not self.is_canonical(va):
            raise PageWalkError(f"virtual address {va:#x} is not canonical for {self.va_bits}-bit "
                                f"addresses ({len(self.levels)}-level paging)")
        walked = walk_long_mode(self.vm.read, self.cr3, va, five_level=self.five_level)
        size = walked.page_size
        base = walked.physical - (va & (size - 1))
        self._pages[page] = (base + ((page << PAGE_SHIFT) & (size - 1) & ~(PAGE_SIZE - 1)),
                             PAGE_SIZE)
        return walked

    def read(self, va: int, n: int) -> bytes:
        """``n`` bytes at virtual ``va``, page by page."""
        out = bytearray()
        while n > 0:
            chunk = min(n, PAGE_SIZE - (va & (PAGE_SIZE - 1)))
            gpa = self.translate(va).physical
            try:
                out += self.vm.read(gpa, chunk)
            except GuestMemoryError as exc:
                raise PageWalkError(f"virtual address {va:#x} maps to {gpa:#x}, which is outside "
                                    f"guest RAM") from exc
            va += chunk
            n -= chunk
        return bytes(out)

    def write(self, va: int, data: bytes) -> None:
        """Write ``data`` at virtual ``va``, whole or not at all: every page is translated and
        found in guest RAM before the first byte is written. The write goes to guest-physical
        memory, so the guest's own write protection (read-only kernel text) does not apply."""
        pieces: list[tuple[int, bytes]] = []
        done = 0
        while done < len(data):
            at = va + done
            chunk = min(len(data) - done, PAGE_SIZE - (at & (PAGE_SIZE - 1)))
            pieces.append((self.translate(at).physical, data[done:done + chunk]))
            done += chunk
        for gpa, piece in pieces:
            try:
                self.vm.read(gpa, len(piece))
            except GuestMemoryError as exc:
                raise PageWalkError(f"virtual address {va:#x} maps to {gpa:#x}, which is "
                                    f"outside guest RAM; nothing was written") from exc
        for gpa, piece in pieces:
            self.vm.write(gpa, piece)

    def read_u64(self, va: int) -> int:
        value: int = _U64.unpack(self.read(va, ENTRY_SIZE))[0]
        return value
