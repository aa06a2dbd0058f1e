"""What the user may choose about a boot: command line, initrd, and where things go."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vmboot.errors import BootConfigError
from vmboot.linux.choices import ENTRY_CHOICES as ENTRY_CHOICES
from vmboot.linux.choices import EntryChoice as EntryChoice
from vmboot.linux.choices import EntryMode as EntryMode
from vmboot.linux.choices import cmdline_bytes
from vmboot.linux.configurator import layout

if TYPE_CHECKING:
    from vmboot.linux.configurator.e820 import E820Entry

InitrdSource = bytes | bytearray | memoryview | str | os.PathLike[str]
PVH_START_INFO_GPA = 0x6000
"""Default home of ``struct hvm_start_info`` and the module list (as Firecracker's PVH_INFO_START)."""
START_INFO_ALIGN = 8
"""``struct hvm_start_info`` holds 64-bit fields: keep it naturally aligned."""


@dataclass(frozen=True)
class BootOptions:
    """Choices for :meth:`BzImage.prepare`. ``None`` means "vmboot decides".

    - ``cmdline``: the kernel command line (str is UTF-8 encoded; no NUL bytes).
    - ``load_addr``: protected-mode load address (default: ``default_load_address()``
      aligned up to ``kernel_alignment`` for a relocatable kernel).
    - ``initrd``: bytes or a path; ``initrd_gpa`` places it (default: as high as allowed).
    - ``zero_page_gpa``, ``cmdline_gpa`` (default zero page + 4 KiB), ``stack_top_gpa``
      (default RAM end - 4 KiB, 16-byte aligned), ``paging_base``: where boot structures go.
    - ``address_space_gib``: how many GiB the boot page tables identity-map (1..512).
    - ``e820``: the memory map given to the kernel (default: :func:`default_e820_map`).
    - ``entry``: which entry point to use, when the kernel has more than one: ``"auto"``
      (a bzImage: ``"bzimage64"``; an ELF vmlinux: ``"pvh"`` if it has a PVH note, else
      ``"elf64"``), or one of ``"bzimage64"``, ``"elf64"``, ``"pvh"``.
    - ``start_info_gpa``: PVH only: where ``struct hvm_start_info`` goes; the module list
      follows it, the memory map starts at the next page.
    """

    cmdline: str | bytes = ""
    load_addr: int | None = None
    initrd: InitrdSource | None = None
    initrd_gpa: int | None = None
    zero_page_gpa: int = layout.ZERO_PAGE_GPA
    cmdline_gpa: int | None = None
    stack_top_gpa: int | None = None
    paging_base: int = layout.PAGING_BASE
    address_space_gib: int = layout.ADDRESS_SPACE_GIB
    e820: Sequence[E820Entry] | None = field(default=None)
    entry: EntryChoice = "auto"
    start_info_gpa: int = PVH_START_INFO_GPA

    def cmdline_bytes(self) -> bytes:
        return cmdline_bytes(self.cmdline)

    def initrd_bytes(self) -> bytes | None:
        if self.initrd is None:
            return None
        if isinstance(self.initrd, bytes | bytearray | memoryview):
            return bytes(self.initrd)
        path = Path(self.initrd)
        try:
            return path.read_bytes()
        except OSError as e:
            raise BootConfigError(f"initrd {path}: cannot read it: {e.strerror or e}") from e

    def initrd_size(self) -> int:
        """Size of the initrd in bytes (0 without one), without reading a file's contents."""
        if self.initrd is None:
            return 0
        if isinstance(self.initrd, bytes | bytearray | memoryview):
            return memoryview(self.initrd).nbytes
        path = Path(self.initrd)
        try:
            return path.stat().st_size
        except OSError as e:
            raise BootConfigError(f"initrd {path}: cannot read it: {e.strerror or e}") from e

    def check_scalars(self) -> None:
        """Type and range checks that need no kernel and no VM."""
        if self.entry not in ENTRY_CHOICES:
            raise BootConfigError(
                f"entry: {self.entry!r} is not one of {', '.join(map(repr, ENTRY_CHOICES))}"
            )
        for name in ("load_addr", "initrd_gpa", "zero_page_gpa", "cmdline_gpa", "stack_top_gpa",
                     "paging_base", "start_info_gpa"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
                raise BootConfigError(
                    f"{name}: {value!r} is not a guest-physical address (an integer 0..2**64-1)"
                )
        for name in ("zero_page_gpa", "paging_base"):
            value = getattr(self, name)
            if value % 0x1000:
                raise BootConfigError(f"{name}: {value:#x} is not 4 KiB aligned")
        if self.start_info_gpa % START_INFO_ALIGN:
            raise BootConfigError(
                f"start_info_gpa: {self.start_info_gpa:#x} is not {START_INFO_ALIGN}-byte aligned"
            )
        gib = self.address_space_gib
        if not isinstance(gib, int) or not 1 <= gib <= layout.MAX_ADDRESS_SPACE_GIB:
            raise BootConfigError(
                f"address_space_gib: {gib!r} is outside 1..{layout.MAX_ADDRESS_SPACE_GIB}"
            )
        if self.stack_top_gpa is not None and self.stack_top_gpa % layout.STACK_ALIGN:
            raise BootConfigError(
                f"stack_top_gpa: {self.stack_top_gpa:#x} is not {layout.STACK_ALIGN}-byte aligned "
                f"(the x86-64 ABI wants a 16-byte aligned stack)"
            )
