"""The Linux/x86 boot protocol: load a kernel, lay it out in guest RAM, enter it in 64-bit mode.

Authority: the kernel's Documentation/arch/x86/boot.rst and
arch/x86/include/uapi/asm/bootparam.h (offsets in :mod:`vmboot.linux.bootparam`).

The names below are imported when first used (PEP 562): a process that only needs
:mod:`vmboot.linux.options` (a restore reads no kernel) does not load the loaders and
the decompressors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmboot.lazy_names import names_from

if TYPE_CHECKING:
    from vmboot.linux.configurator.e820 import E820Entry, E820Type, default_e820_map
    from vmboot.linux.configurator.plan import BootPlan, EntryPlan
    from vmboot.linux.configurator.pvh import PvhBootPlan
    from vmboot.linux.kernel import Kernel, KernelFormat
    from vmboot.linux.loader.bzimage import BzImage, KernelImage, load_bzimage
    from vmboot.linux.loader.detect import LinuxKernel, load_kernel
    from vmboot.linux.loader.elf_kernel import ElfKernel, load_elf_kernel
    from vmboot.linux.loader.setup_header import SetupHeader
    from vmboot.linux.options import BootOptions

_HOMES = {
    "E820Entry": "configurator.e820", "E820Type": "configurator.e820",
    "default_e820_map": "configurator.e820",
    "BootPlan": "configurator.plan", "EntryPlan": "configurator.plan",
    "PvhBootPlan": "configurator.pvh",
    "Kernel": "kernel", "KernelFormat": "kernel",
    "BzImage": "loader.bzimage", "KernelImage": "loader.bzimage",
    "load_bzimage": "loader.bzimage",
    "LinuxKernel": "loader.detect", "load_kernel": "loader.detect",
    "ElfKernel": "loader.elf_kernel", "load_elf_kernel": "loader.elf_kernel",
    "SetupHeader": "loader.setup_header",
    "BootOptions": "options",
}
"""Each public name's module under ``vmboot.linux``."""

__all__ = [
    "BootOptions",
    "BootPlan",
    "BzImage",
    "E820Entry",
    "E820Type",
    "ElfKernel",
    "EntryPlan",
    "Kernel",
    "KernelFormat",
    "KernelImage",
    "LinuxKernel",
    "PvhBootPlan",
    "SetupHeader",
    "default_e820_map",
    "load_bzimage",
    "load_elf_kernel",
    "load_kernel",
]


__getattr__ = names_from(__name__, _HOMES)
