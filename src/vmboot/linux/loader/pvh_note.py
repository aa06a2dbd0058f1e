"""The PVH entry note of an ELF kernel: where a PVH kernel says its 32-bit entry is.

A PVH kernel (Xen ``docs/misc/pvh.pandoc``; Linux ``arch/x86/platform/pvh/head.S``)
declares its 32-bit physical entry point in an ELF note named "Xen" of type
``XEN_ELFNOTE_PHYS32_ENTRY`` (18; Xen ``public/elfnote.h``). How a vCPU enters it is
:mod:`vmboot.linux.configurator.pvh`.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmboot.elf import ElfFile
from vmboot.errors import KernelFormatError
from vmboot.units import GiB

XEN_ELFNOTE_NAME = "Xen"
XEN_ELFNOTE_PHYS32_ENTRY = 18
"""Xen ``public/elfnote.h``: "Physical entry point into the kernel" (32-bit protected mode)."""
PVH_NOTE_DESC_SIZES = (4, 8)
"""Numeric Xen notes are 4 or 8 bytes (elfnote.h); Linux uses 8 (``_ASM_PTR``)."""
PVH_ENTRY_LIMIT = 4 * GiB
"""The PVH entry is reached in 32-bit mode: it must lie below 4 GiB."""


@dataclass(frozen=True, slots=True)
class PvhNote:
    """The XEN_ELFNOTE_PHYS32_ENTRY note: the entry address and where it was found."""

    entry: int
    desc_size: int
    source: str


def find_pvh_note(elf: ElfFile) -> PvhNote | None:
    """The PVH entry note of ``elf``, or None if it has none.

    Notes of other owners or types (GNU build ID, Linux, other Xen notes) are skipped. A
    PHYS32_ENTRY note whose descriptor is not 4 or 8 bytes, or whose address is not a
    32-bit one, raises :class:`~vmboot.errors.KernelFormatError`.
    """
    for note in elf.notes():
        if note.name != XEN_ELFNOTE_NAME or note.type != XEN_ELFNOTE_PHYS32_ENTRY:
            continue
        size = len(note.desc)
        if size not in PVH_NOTE_DESC_SIZES:
            raise KernelFormatError(
                f"{elf.name}: PVH note (name {XEN_ELFNOTE_NAME!r}, type "
                f"{XEN_ELFNOTE_PHYS32_ENTRY}) in {note.source} has a {size}-byte descriptor; "
                f"the entry address must be 4 or 8 bytes"
            )
        entry = int.from_bytes(note.desc, "little")
        if entry >= PVH_ENTRY_LIMIT:
            raise KernelFormatError(
                f"{elf.name}: PVH entry {entry:#x} (note in {note.source}) is not below 4 GiB; "
                f"the PVH entry runs in 32-bit mode"
            )
        return PvhNote(entry, size, note.source)
    return None
