"""``load_kernel``: recognise a kernel file's format and load it."""

from __future__ import annotations

from vmboot.compression.formats import MAGICS
from vmboot.elf import ELF_MAGIC, describe_elf_ident
from vmboot.errors import KernelFormatError
from vmboot.linux import bootparam as bp
from vmboot.linux.kernel import Kernel
from vmboot.linux.loader.bzimage import BzImage
from vmboot.linux.loader.elf_kernel import ElfKernel
from vmboot.linux.loader.source import KernelSource, read_source

LinuxKernel = BzImage | ElfKernel
"""The concrete kernel types :func:`load_kernel` makes, for code that needs one of them;
everything else uses the :class:`~vmboot.linux.kernel.Kernel` protocol it returns."""
ELF64_X86_64 = "ELF 64-bit little-endian x86-64"

ACCEPTED = "a bzImage (boot protocol header 'HdrS' at 0x202) or an ELF64 x86-64 vmlinux"


def describe_file(data: bytes) -> str:
    """What a file that is not a bootable kernel looks like, for error messages."""
    if not data:
        return "an empty file"
    elf = describe_elf_ident(data[:64])
    if elf is not None:
        return f"an {elf} file"
    for name, magic in MAGICS:
        if data.startswith(magic):
            return f"{name}-compressed data (a compressed kernel or initramfs? decompress it first)"
    if data[:2] == b"MZ":
        return "a PE/COFF (EFI) executable without a Linux boot protocol header"
    if data[:6] in (b"070701", b"070702"):
        return "a cpio archive (an initramfs, not a kernel)"
    printable = sum(32 <= c < 127 or c in (9, 10, 13) for c in data[:256])
    if printable >= min(len(data), 256) * 0.95:
        return "a text file"
    return f"unrecognised data starting with {data[:8].hex(' ')}"


def load_kernel(source: KernelSource) -> Kernel:
    """Load a kernel from a path, a binary file object or bytes, whatever its format.

    bzImages are recognised by the boot protocol magic "HdrS" at 0x202
    (:class:`BzImage`); ELF64 little-endian x86-64 files are vmlinux kernels
    (:class:`~vmboot.linux.loader.elf_kernel.ElfKernel`), as is a file that starts with the ELF
    magic but is too short to say more (it is refused as a truncated ELF file).
    """
    data, name = read_source(source)
    end = bp.SETUP_HEADER_JUMP_END + len(bp.HEADER_MAGIC)
    if data[bp.SETUP_HEADER_JUMP_END:end] == bp.HEADER_MAGIC:
        return BzImage(data, name)
    elf = describe_elf_ident(data[:64])
    if (elf is not None and elf.startswith(ELF64_X86_64)) or (
            elf is None and data.startswith(ELF_MAGIC)):
        return ElfKernel(data, name)
    raise KernelFormatError(f"{name}: is {describe_file(data)}; vmboot accepts {ACCEPTED}")
