"""A bzImage's payload (the compressed ``vmlinux.bin``): recognise its format, decompress it.

The payload (``setup_header.payload_offset`` / ``payload_length``, boot protocol 2.08+)
is an ELF file stripped of its symbol table but with its sections and notes (kallsyms, ORC,
the PVH note). Formats: gzip, xz, lzma and bzip2 (standard library), LZ4 legacy frames
(python-lz4), zstd (zstandard), all through the bounded
:func:`vmboot.compression.decompress.decompress`. LZO and LZ4 frames are not supported (the
kernel never writes LZ4 frames; LZO has no maintained Python binding).
"""

from __future__ import annotations

from vmboot.compression.decompress import decompress
from vmboot.compression.formats import FORMATS, detect_format
from vmboot.elf import ELF_MAGIC
from vmboot.errors import KernelFormatError
from vmboot.units import GiB

ELF_PAYLOAD = "none (ELF)"
"""The name of an uncompressed (ELF) payload."""
UNKNOWN = "unknown"

PAYLOAD_LIMIT = 1 * GiB
"""Default output limit for a kernel payload. Real ``vmlinux.bin`` files are tens of MiB
(a distro kernel's ``init_size`` is around 50-100 MiB), so 1 GiB never refuses a genuine
kernel, while a payload crafted to expand without end stops there instead of exhausting
the host's memory."""


def detect_compression(payload: bytes | memoryview) -> str:
    """The payload's format name (see :data:`~vmboot.compression.formats.MAGICS`),
    :data:`ELF_PAYLOAD` for an uncompressed vmlinux, or ``"unknown"``."""
    if bytes(payload[: len(ELF_MAGIC)]) == ELF_MAGIC:
        return ELF_PAYLOAD
    return detect_format(payload) or UNKNOWN


def decompress_payload(payload: bytes | memoryview, name: str = "<payload>",
                       limit: int = PAYLOAD_LIMIT) -> bytes:
    """Decompress a bzImage payload in whatever format its magic says (at most ``limit``
    bytes; an uncompressed ELF payload is returned as is)."""
    kind = detect_compression(payload)
    if kind == ELF_PAYLOAD:
        return bytes(payload)
    if kind not in FORMATS:
        raise KernelFormatError(f"{name}: payload compression {kind!r} is not supported; "
                                f"supported: {', '.join(FORMATS)}")
    return decompress(payload, kind, limit=limit, name=name, what="payload",
                      error=KernelFormatError,
                      raise_hint="pass limit= to vmboot.compression.decompress_payload")
