"""Fetch the instruction bytes at a vCPU's RIP from guest memory (for emulation-failure reports).

The address is translated as the CPU would: segment base + RIP outside long mode, then
through the guest's 4- or 5-level page tables when paging is on. This is a deliberately
small walker for one purpose; :mod:`vmboot.debug` has the full one.
"""

from __future__ import annotations

import struct

from vmboot.errors import GuestMemoryError, PageWalkError
from vmboot.hv.guest_memory import GuestMemory
from vmboot.x86 import cr, paging

MAX_INSTRUCTION_BYTES = 15
"""The architectural maximum length of one x86 instruction."""

_PAE_LEVEL_SHIFTS_4 = (39, 30, 21, 12)
_PAE_LEVEL_SHIFTS_5 = (48, *_PAE_LEVEL_SHIFTS_4)
_INDEX_MASK = paging.ENTRIES_PER_TABLE - 1
_MASK32 = 0xFFFFFFFF
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


def translate(memory: GuestMemory, cr0: int, cr3: int, cr4: int, efer: int, linear: int) -> int:
    """Guest-physical address of ``linear`` under the given control registers.

    Supports no paging, 32-bit paging without PAE (4 KiB and 4 MiB pages) and 4/5-level
    paging (4 KiB, 2 MiB and 1 GiB pages). Raises :class:`PageWalkError` when not mapped.
    """
    if not cr0 & cr.CR0_PG:
        return linear
    if not cr4 & cr.CR4_PAE:
        return _translate_32(memory, cr3, linear)
    if not efer & cr.EFER_LMA:
        raise PageWalkError(f"{linear:#x}: 32-bit PAE paging is not supported by this walker")
    shifts = _PAE_LEVEL_SHIFTS_5 if cr4 & cr.CR4_LA57 else _PAE_LEVEL_SHIFTS_4
    names = paging.LEVEL_NAMES_5 if cr4 & cr.CR4_LA57 else paging.LEVEL_NAMES_4
    table = cr3 & cr.CR3_ADDR_MASK
    for depth, (shift, name) in enumerate(zip(shifts, names, strict=True)):
        slot = table + ((linear >> shift) & _INDEX_MASK) * paging.ENTRY_SIZE
        try:
            entry: int = _U64.unpack(memory.read(slot, paging.ENTRY_SIZE))[0]
        except GuestMemoryError as e:
            raise PageWalkError(f"{linear:#x}: {name} entry at {slot:#x} is outside RAM ({e})") from None
        if not entry & paging.PTE_PRESENT:
            raise PageWalkError(f"{linear:#x}: {name} entry at {slot:#x} is not present ({entry:#x})")
        is_leaf = depth == len(shifts) - 1 or (entry & paging.PTE_PS and shift in (30, 21))
        if is_leaf:
            offset_mask = (1 << shift) - 1
            return (entry & paging.PTE_ADDR_MASK & ~offset_mask) | (linear & offset_mask)
        table = entry & paging.PTE_ADDR_MASK
    raise AssertionError("unreachable: the last level is always a leaf")


def _translate_32(memory: GuestMemory, cr3: int, linear: int) -> int:
    linear &= _MASK32
    pde_addr = (cr3 & 0xFFFFF000) + (linear >> 22) * 4
    try:
        pde: int = _U32.unpack(memory.read(pde_addr, 4))[0]
        if not pde & paging.PTE_PRESENT:
            raise PageWalkError(f"{linear:#x}: PDE at {pde_addr:#x} is not present")
        if pde & paging.PTE_PS:
            return (pde & 0xFFC00000) | (linear & 0x3FFFFF)
        pte_addr = (pde & 0xFFFFF000) + ((linear >> 12) & 0x3FF) * 4
        pte: int = _U32.unpack(memory.read(pte_addr, 4))[0]
    except GuestMemoryError as e:
        raise PageWalkError(f"{linear:#x}: a page-table entry is outside RAM ({e})") from None
    if not pte & paging.PTE_PRESENT:
        raise PageWalkError(f"{linear:#x}: PTE at {pte_addr:#x} is not present")
    return (pte & 0xFFFFF000) | (linear & 0xFFF)


def read_linear(
    memory: GuestMemory, cr0: int, cr3: int, cr4: int, efer: int, linear: int, length: int
) -> bytes:
    """Up to ``length`` bytes at ``linear``, page by page; stops early at an unmapped page."""
    out = bytearray()
    while len(out) < length:
        address = linear + len(out)
        in_page = paging.PAGE_SIZE - (address & (paging.PAGE_SIZE - 1))
        n = min(in_page, length - len(out))
        try:
            gpa = translate(memory, cr0, cr3, cr4, efer, address)
            out += memory.read(gpa, n)
        except (PageWalkError, GuestMemoryError):
            if not out:
                raise
            break
    return bytes(out)


def code_address(rip: int, cs_base: int, efer: int) -> int:
    """The linear address of RIP: CS.base is ignored in 64-bit mode (and 0 there anyway)."""
    if efer & cr.EFER_LMA:
        return rip
    return (cs_base + rip) & _MASK32
