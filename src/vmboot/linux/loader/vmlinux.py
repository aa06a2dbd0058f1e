"""The uncompressed kernel inside a bzImage, for symbol lookups (kallsyms, ORC).

Decompression itself is :func:`vmboot.compression.kernel_payload.decompress_payload`
(bounded); this module finds the payload of a bzImage or passes a vmlinux through.
"""

from __future__ import annotations

from vmboot.compression.kernel_payload import decompress_payload
from vmboot.elf import ELF_MAGIC
from vmboot.errors import KernelFormatError
from vmboot.linux.loader.bzimage import BzImage


def uncompressed_kernel(image: bytes, name: str = "<kernel>") -> bytes:
    """The vmlinux (ELF) inside a bzImage, or ``image`` itself if it already is ELF."""
    if image[: len(ELF_MAGIC)] == ELF_MAGIC:
        return image
    kernel = BzImage(image, name)
    payload = kernel.compressed_payload()
    if payload is None:
        raise KernelFormatError(f"{name}: the setup header has no payload_offset/payload_length "
                                f"(boot protocol < 2.08); cannot find the compressed kernel")
    return decompress_payload(payload, name)
