"""The probe report protocol: the I/O ports a probe kernel writes to, and its record keys.

A probe reports a stream of records over two 32-bit I/O ports:

- ``OUT PORT_KEY, key`` starts a record; ``key = kind << 16 | index`` (``kind`` is a
  :class:`Key`, ``index`` numbers repeated records such as one per GiB);
- each ``OUT PORT_DATA, word`` appends a little-endian 32-bit word to the record's value
  (a 64-bit value is two words, low first; a pair of 64-bit values is four).

The record :attr:`Key.DONE` ends the report; its value is the number of records sent
before it, so the host can tell that none was lost. The assembly sources never spell
these numbers: :mod:`vmboot.probes.build` generates ``probe_defs.inc`` from this module
(and from :mod:`vmboot.linux.bootparam`), so the guest and the host cannot disagree.
"""

from __future__ import annotations

import enum

PORT_BASE = 0x0580
"""First port of the probe's range: free on a PC (and away from QEMU's fw_cfg at 0x510)."""
PORT_KEY = PORT_BASE
PORT_DATA = PORT_BASE + 4
PORT_COUNT = 8
"""The probe owns ``[PORT_BASE, PORT_BASE + PORT_COUNT)``."""
WORD_SIZE = 4
"""Every OUT of the protocol is 32 bits wide."""
KEY_INDEX_BITS = 16
KEY_INDEX_MASK = (1 << KEY_INDEX_BITS) - 1

PROBE_MAGIC = 0x50424D56
"""``"VMBP"`` little-endian: the first word of the :attr:`Key.HELLO` record."""
PROTOCOL_VERSION = 1


class EntryKind(enum.IntEnum):
    """Which entry point of a probe image the guest came in through (the HELLO record)."""

    BZIMAGE64 = 1
    """The bzImage 64-bit entry, protected-mode start + 0x200."""
    ELF64 = 2
    """An ELF vmlinux's ``e_entry``, in 64-bit mode with a zero page."""
    PVH32 = 3
    """The PVH entry (XEN_ELFNOTE_PHYS32_ENTRY): 32-bit protected mode, paging off."""


class Key(enum.IntEnum):
    """Record kinds. Values are ``[u64]`` unless noted."""

    HELLO = 0x01
    """``[PROBE_MAGIC | PROTOCOL_VERSION << 32, EntryKind]``."""
    ENTRY_ADDR = 0x02
    """Where the entry label is, by RIP-relative LEA (absolute in the 32-bit probe)."""
    IMAGE_START = 0x03
    """Where the image's first loaded byte is, by RIP-relative LEA."""
    IMAGE_END = 0x04
    ENTRY_SP = 0x05
    """RSP (ESP) at entry."""
    ENTRY_FLAGS = 0x06
    """RFLAGS at entry."""
    ENTRY_RSI = 0x07
    """RSI at entry: the zero page (64-bit entries)."""
    ENTRY_RBX = 0x08
    """EBX at entry: hvm_start_info (PVH)."""

    EFER = 0x10
    CR0 = 0x11
    CR3 = 0x12
    CR4 = 0x13

    SEL_CS = 0x20
    SEL_DS = 0x21
    SEL_ES = 0x22
    SEL_SS = 0x23
    GDT_BASE = 0x28
    GDT_LIMIT = 0x29
    GDT_DESC = 0x2A
    """Index = selector: the raw 8-byte descriptor the GDT holds there."""

    BP_MAGIC = 0x30
    """The u32 at zero page + 0x202 ("HdrS")."""
    BP_VERSION = 0x31

    CMDLINE_PTR = 0x40
    CMDLINE_LEN = 0x41
    CMDLINE_SUM = 0x42

    INITRD_ADDR = 0x48
    INITRD_SIZE = 0x49
    INITRD_SUM = 0x4A
    INITRD_UNMAPPED = 0x4B
    """Sent instead of INITRD_SUM when the initrd lies outside the identity map."""

    E820_COUNT = 0x50
    E820_SUM = 0x51

    MAP_GIB = 0x58
    """How many leading GiB translate (walking the page tables from CR3)."""
    MAP_IDENTITY_PAGES = 0x59
    """How many 2 MiB-aligned addresses in those GiB translate to themselves."""
    MAP_SAMPLE = 0x5A
    """Index = GiB: ``[virtual address, physical address it translates to]``."""

    TOUCH = 0x60
    """Index = n: ``[address, 1 if a pattern written there read back (then restored)]``."""
    TOUCH_COUNT = 0x61

    STACK_CALL = 0x68
    """1 if a CALL pushed the right return address and RET came back."""
    STACK_SP_IN_CALL = 0x69

    PVH_MAGIC = 0x70
    PVH_VERSION = 0x71
    PVH_FLAGS = 0x72
    PVH_NR_MODULES = 0x73
    PVH_MODLIST = 0x74
    PVH_MODULE_ADDR = 0x75
    PVH_MODULE_SIZE = 0x76
    PVH_MODULE_SUM = 0x77
    PVH_CMDLINE_PTR = 0x78
    PVH_CMDLINE_LEN = 0x79
    PVH_CMDLINE_SUM = 0x7A
    PVH_RSDP = 0x7B
    PVH_MEMMAP_ADDR = 0x7C
    PVH_MEMMAP_ENTRIES = 0x7D
    PVH_MEMMAP_SUM = 0x7E

    DONE = 0xFF
    """The last record; value: the number of records sent before it."""


MAP_SAMPLE_OFFSET = 0x2345678
"""Offset inside each GiB of the address the probe translates as that GiB's sample."""
MAX_STRING = 1 << 20
"""The probe stops looking for a command line's NUL after this many bytes."""
MAX_PVH_MODULES = 8
SELECTOR_INDEX_MASK = 0xFFF8
"""A selector without its RPL and TI bits: the GDT offset of its descriptor, and the index of
the :attr:`Key.GDT_DESC` record that carries that descriptor."""
"""The PVH probe reports at most this many modules."""


def make_key(kind: Key, index: int = 0) -> int:
    return (int(kind) << KEY_INDEX_BITS) | index


def split_key(key: int) -> tuple[int, int]:
    return key >> KEY_INDEX_BITS, key & KEY_INDEX_MASK
