"""The uncompressed kernel inside a bzImage, for symbol lookups (kallsyms, ORC).

Decompression itself lives in :mod:`vmboot.linux.loader.payload` (bounded, see
:mod:`vmboot.decompress`); this module finds the payload of a bzImage or passes a vmlinux
through.
"""

from __future__ import annotations

from vmboot.decompress import LZ4_LEGACY_MAGIC
from vmboot.elf import ELF_MAGIC
from vmboot.errors import KernelFormatError
from vmboot.linux.loader.bzimage import BzImage
from vmboot.linux.loader.payload import decompress_payload

__all__ = ["LZ4_LEGACY_MAGIC", "decompress_payload", "uncompressed_kernel"]


def uncompressed_kernel(image: bytes, name: str = "<kernel>") -> bytes:
    """The vmlinux (ELF) inside a bzImage, or ``image`` itself if it already is ELF."""
    if image[:4] == ELF_MAGIC:
        return image
    kernel = BzImage(image, name)
    payload = kernel.compressed_payload()
    if payload is None:
        raise KernelFormatError(f"{name}: the setup header has no payload_offset/payload_length "
                                f"(boot protocol < 2.08); cannot find the compressed kernel")
    return decompress_payload(payload, name)
