"""The PVH boot ABI as the PVH probe reads it (Xen ``public/arch-x86/hvm/start_info.h``,
``public/elfnote.h``; Linux ``arch/x86/platform/pvh/head.S``).

Kept here until :mod:`vmboot.linux` names these itself; the probe's assembly gets them
through the generated ``probe_defs.inc``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from vmboot.linux.configurator.e820 import E820Entry
from vmboot.linux.loader import pvh_note

XEN_ELFNOTE_PHYS32_ENTRY = pvh_note.XEN_ELFNOTE_PHYS32_ENTRY
"""ELF note (name "Xen") holding the 32-bit physical entry point of a PVH kernel."""
XEN_ELFNOTE_NAME = pvh_note.XEN_ELFNOTE_NAME.encode()
HVM_START_MAGIC = 0x336EC578
"""``XEN_HVM_START_MAGIC_VALUE``: "xEn3" with the 0x80 bit of the "E" set."""

# struct hvm_start_info
HVM_MAGIC = 0
HVM_VERSION = 4
HVM_FLAGS = 8
HVM_NR_MODULES = 12
HVM_MODLIST_PADDR = 16
HVM_CMDLINE_PADDR = 24
HVM_RSDP_PADDR = 32
HVM_MEMMAP_PADDR = 40
"""Version 1 and later."""
HVM_MEMMAP_ENTRIES = 48
HVM_START_INFO_SIZE_V1 = 56

# struct hvm_modlist_entry
HVM_MODLIST_ENTRY_SIZE = 32
HVM_MOD_PADDR = 0
HVM_MOD_SIZE = 8
HVM_MOD_CMDLINE_PADDR = 16

# struct hvm_memmap_table_entry
HVM_MEMMAP_ENTRY_SIZE = 24
HVM_MEMMAP_ADDR = 0
HVM_MEMMAP_SIZE = 8
HVM_MEMMAP_TYPE = 16

_MEMMAP_ENTRY = struct.Struct("<QQII")
assert _MEMMAP_ENTRY.size == HVM_MEMMAP_ENTRY_SIZE


def pack_memmap(entries: Sequence[E820Entry]) -> bytes:
    """``struct hvm_memmap_table_entry`` array (addr, size, type, reserved = 0)."""
    return b"".join(_MEMMAP_ENTRY.pack(e.addr, e.size, int(e.type), 0) for e in entries)
