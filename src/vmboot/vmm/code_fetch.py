"""Fetch the instruction bytes at a vCPU's RIP from guest memory (for emulation-failure reports).

The address is translated as the CPU would: segment base + RIP outside long mode, then
through the guest's page tables when paging is on, by the one walker,
:mod:`vmboot.x86.page_walk`.
"""

from __future__ import annotations

from vmboot.errors import GuestMemoryError, PageWalkError
from vmboot.hv.guest_memory import GuestMemory
from vmboot.x86 import cr, page_walk, paging

MAX_INSTRUCTION_BYTES = 15
"""The architectural maximum length of one x86 instruction."""

_MASK32 = 0xFFFFFFFF


def translate(memory: GuestMemory, cr0: int, cr3: int, cr4: int, efer: int, linear: int) -> int:
    """Guest-physical address of ``linear`` under the given control registers
    (:func:`vmboot.x86.page_walk.translate`); raises :class:`PageWalkError` when not mapped."""
    return page_walk.translate(memory.read, linear, cr0=cr0, cr3=cr3, cr4=cr4, efer=efer).physical


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
