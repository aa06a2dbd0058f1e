"""Helpers shared by every loader that fills a ``struct boot_params`` (bzImage and ELF)."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from vmboot.errors import LayoutError
from vmboot.linux import bootparam as bp
from vmboot.linux.configurator.e820 import E820Entry, pack_table, validate_e820

U32_LIMIT = 1 << 32


def put_split(zp: bytearray, field: str, value: int, low_off: int, high_off: int,
              above_4g_ok: bool = True) -> None:
    """Store a 64-bit ``value`` as a 32-bit header field plus its ``ext_`` high half.

    ``above_4g_ok`` is False for a kernel without XLF_CAN_BE_LOADED_ABOVE_4G, which would
    ignore the high half."""
    if not 0 <= value < 1 << 64:
        raise LayoutError(f"{field} {value:#x} is not a 64-bit unsigned value")
    if value >= U32_LIMIT and not above_4g_ok:
        raise LayoutError(
            f"{field} {value:#x} needs the ext_ high 32 bits, but the kernel lacks "
            f"XLF_CAN_BE_LOADED_ABOVE_4G"
        )
    struct.pack_into("<I", zp, low_off, value & (U32_LIMIT - 1))
    struct.pack_into("<I", zp, high_off, value >> 32)


def put_e820(zp: bytearray, entries: Sequence[E820Entry]) -> None:
    """Validate ``entries`` and store them as e820_entries / e820_table (at most 128)."""
    validate_e820(entries)
    if len(entries) > bp.E820_MAX_ENTRIES_ZEROPAGE:
        raise LayoutError(f"e820: {len(entries)} entries; the zero page holds at most "
                          f"{bp.E820_MAX_ENTRIES_ZEROPAGE}")
    zp[bp.BP_E820_ENTRIES] = len(entries)
    table = pack_table(entries)
    zp[bp.BP_E820_TABLE : bp.BP_E820_TABLE + len(table)] = table
