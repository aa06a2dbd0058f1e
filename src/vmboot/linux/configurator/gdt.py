"""The boot GDT: the selectors the Linux boot protocols require (``__BOOT_CS``/``__BOOT_DS``)."""

from __future__ import annotations

import struct

from vmboot.hv.registers import Segment
from vmboot.linux import bootparam as bp
from vmboot.x86.gdt import encode_descriptor, flat_code32, flat_code64, flat_data, tss64

BOOT_CS32 = 0x08
"""A flat 32-bit code segment, used by the PVH entry (32-bit protected mode)."""
BOOT_TSS = 0x20
"""A 64-bit TSS descriptor (16 bytes); KVM wants a usable TR in long mode."""


def boot_segments() -> dict[str, Segment]:
    """The segments the boot GDT holds, by role."""
    return {
        "code32": flat_code32(BOOT_CS32),
        "code64": flat_code64(bp.BOOT_CS),
        "data": flat_data(bp.BOOT_DS),
        "tss": tss64(BOOT_TSS),
    }


def boot_gdt() -> bytes:
    """GDT bytes: null, code32 (0x08), code64 (0x10), data (0x18), TSS (0x20, two slots)."""
    segs = boot_segments()
    entries = [
        0,
        encode_descriptor(segs["code32"]),
        encode_descriptor(segs["code64"]),
        encode_descriptor(segs["data"]),
        encode_descriptor(segs["tss"]),
        0,  # upper half of the 16-byte TSS descriptor: base bits 63..32 = 0
    ]
    return struct.pack(f"<{len(entries)}Q", *entries)
