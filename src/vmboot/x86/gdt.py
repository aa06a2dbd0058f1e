"""Segment descriptors: encode a :class:`Segment` as a GDT entry, and decode one back.

Layout (Intel SDM vol. 3, 3.4.5): limit[15:0], base[23:0], type[3:0], S, DPL[1:0], P,
limit[19:16], AVL, L, D/B, G, base[31:24].
"""

from __future__ import annotations

from vmboot.x86.segment import Segment

# Descriptor type field values for code/data segments (S = 1).
TYPE_DATA_RW_ACCESSED = 0x3
TYPE_CODE_XR_ACCESSED = 0xB
# System descriptor types (S = 0).
TYPE_TSS_BUSY_64 = 0xB
TYPE_LDT = 0x2


def encode_descriptor(seg: Segment) -> int:
    """The 8-byte GDT entry of ``seg`` (its limit is in units given by ``seg.g``)."""
    limit = seg.limit >> 12 if seg.g else seg.limit
    return (
        (limit & 0xFFFF)
        | (seg.base & 0xFFFFFF) << 16
        | (seg.type & 0xF) << 40
        | int(seg.s) << 44
        | (seg.dpl & 0x3) << 45
        | int(seg.present) << 47
        | ((limit >> 16) & 0xF) << 48
        | int(seg.avl) << 52
        | int(seg.l) << 53
        | int(seg.db) << 54
        | int(seg.g) << 55
        | ((seg.base >> 24) & 0xFF) << 56
    )


def decode_descriptor(entry: int, selector: int = 0) -> Segment:
    """The segment register a CPU would load from GDT ``entry`` with ``selector``."""
    raw_limit = (entry & 0xFFFF) | ((entry >> 48) & 0xF) << 16
    g = bool(entry >> 55 & 1)
    limit = (raw_limit << 12) | 0xFFF if g else raw_limit
    return Segment(
        base=((entry >> 16) & 0xFFFFFF) | ((entry >> 56) & 0xFF) << 24,
        limit=limit,
        selector=selector,
        type=(entry >> 40) & 0xF,
        s=bool(entry >> 44 & 1),
        dpl=(entry >> 45) & 0x3,
        present=bool(entry >> 47 & 1),
        avl=bool(entry >> 52 & 1),
        l=bool(entry >> 53 & 1),
        db=bool(entry >> 54 & 1),
        g=g,
    )


def flat_code64(selector: int) -> Segment:
    """A present, ring-0, 64-bit code segment, 4 GiB flat (execute/read)."""
    return Segment(base=0, limit=0xFFFFFFFF, selector=selector, type=TYPE_CODE_XR_ACCESSED,
                   present=True, dpl=0, db=False, s=True, l=True, g=True)


def flat_code32(selector: int) -> Segment:
    """A present, ring-0, 32-bit code segment, 4 GiB flat (execute/read)."""
    return Segment(base=0, limit=0xFFFFFFFF, selector=selector, type=TYPE_CODE_XR_ACCESSED,
                   present=True, dpl=0, db=True, s=True, l=False, g=True)


def flat_data(selector: int) -> Segment:
    """A present, ring-0 data segment, 4 GiB flat (read/write)."""
    return Segment(base=0, limit=0xFFFFFFFF, selector=selector, type=TYPE_DATA_RW_ACCESSED,
                   present=True, dpl=0, db=True, s=True, l=False, g=True)


def tss64(selector: int, base: int = 0, limit: int = 0x67) -> Segment:
    """A busy 64-bit TSS (KVM wants TR to hold one when entering long mode)."""
    return Segment(base=base, limit=limit, selector=selector, type=TYPE_TSS_BUSY_64,
                   present=True, dpl=0, db=False, s=False, l=False, g=False)
