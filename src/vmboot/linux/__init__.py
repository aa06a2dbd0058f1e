"""The Linux/x86 boot protocol: load a kernel, lay it out in guest RAM, enter it in 64-bit mode.

Authority: the kernel's Documentation/arch/x86/boot.rst and
arch/x86/include/uapi/asm/bootparam.h (offsets in :mod:`vmboot.linux.bootparam`).
"""

from vmboot.linux.configurator.e820 import E820Entry, E820Type, default_e820_map
from vmboot.linux.configurator.plan import BootPlan, EntryPlan
from vmboot.linux.configurator.pvh import PvhBootPlan
from vmboot.linux.kernel import Kernel, KernelFormat
from vmboot.linux.loader.bzimage import BzImage, KernelImage, load_bzimage
from vmboot.linux.loader.detect import LinuxKernel, load_kernel
from vmboot.linux.loader.elf_kernel import ElfKernel, load_elf_kernel
from vmboot.linux.loader.setup_header import SetupHeader
from vmboot.linux.options import BootOptions

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
