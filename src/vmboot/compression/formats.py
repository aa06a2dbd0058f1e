"""The compressed formats vmboot knows: their names and magic numbers, defined once.

:data:`MAGICS` is the one table of magic numbers in vmboot (the kernel's decompressors and
``scripts/extract-vmlinux`` recognise the same ones). :data:`FORMATS` are the formats vmboot
decompresses (:mod:`vmboot.compression.decompress`), :data:`COMPRESSIONS` those it writes
(:mod:`vmboot.compression.compress`, for an initramfs).
"""

from __future__ import annotations

import struct
from typing import Final, Literal, get_args

from vmboot.units import MiB

Format = Literal["gzip", "xz", "lzma", "bzip2", "lz4", "zstd"]
FORMATS: Final[tuple[str, ...]] = get_args(Format)
"""The formats :func:`vmboot.compression.decompress.decompress` reads."""

Compression = Literal["none", "gzip", "lz4", "zstd"]
COMPRESSIONS: Final[tuple[str, ...]] = get_args(Compression)
"""How vmboot can write an initramfs (``none``: as is)."""

LZ4_BLOCK_SIZE = struct.Struct("<I")
"""The little-endian 32-bit number that starts an LZ4 legacy frame and each of its blocks."""
LZ4_LEGACY_MAGIC = 0x184C2102
"""The little-endian magic of an LZ4 legacy frame (``lz4 -l``)."""
LZ4_LEGACY_MAGIC_BYTES = LZ4_BLOCK_SIZE.pack(LZ4_LEGACY_MAGIC)
LZ4_LEGACY_BLOCK = 8 * MiB
"""Uncompressed bytes per block of an LZ4 legacy frame, at most
(``LZ4_DEFAULT_UNCOMPRESSED_CHUNK_SIZE`` in the kernel)."""

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAGICS: Final[tuple[tuple[str, bytes], ...]] = (
    ("gzip", GZIP_MAGIC),
    ("xz", b"\xfd7zXZ\x00"),
    ("bzip2", b"BZh"),
    ("lzma", b"\x5d\x00\x00"),
    ("lzo", b"\x89LZO\x00\r\n\x1a\n"),
    ("lz4", LZ4_LEGACY_MAGIC_BYTES),
    ("lz4-frame", b"\x04\x22\x4d\x18"),
    ("zstd", ZSTD_MAGIC),
)
"""(name, magic) of every compressed format vmboot recognises; the names of those it
decompresses are :data:`FORMATS`."""

EXTRA_HINT = "lz4 and zstandard are dependencies of vmboot: reinstall it (pip install vmboot)"
"""How to get the optional modules that LZ4 and zstd need."""


def detect_format(data: bytes | bytearray | memoryview) -> str | None:
    """The name in :data:`MAGICS` whose magic ``data`` starts with, or None."""
    head = bytes(data[:16])
    for name, magic in MAGICS:
        if head.startswith(magic):
            return name
    return None
