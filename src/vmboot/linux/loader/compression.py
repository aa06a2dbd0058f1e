"""Recognise how a bzImage's payload is compressed, by its magic bytes."""

from __future__ import annotations

# (name, magic) as the kernel's decompressors and scripts/extract-vmlinux recognise them.
PAYLOAD_MAGICS: tuple[tuple[str, bytes], ...] = (
    ("gzip", b"\x1f\x8b\x08"),
    ("xz", b"\xfd7zXZ\x00"),
    ("bzip2", b"BZh"),
    ("lzma", b"\x5d\x00\x00"),
    ("lzo", b"\x89LZO\x00\r\n\x1a\n"),
    ("lz4", b"\x02\x21\x4c\x18"),
    ("lz4-frame", b"\x04\x22\x4d\x18"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("none (ELF)", b"\x7fELF"),
)
"""Known payload formats; the kernel's LZ4 payload uses the legacy frame (``lz4 -l``)."""


def detect_compression(payload: bytes | memoryview) -> str:
    """The payload's format name (see :data:`PAYLOAD_MAGICS`), or ``"unknown"``."""
    head = bytes(payload[:16])
    for name, magic in PAYLOAD_MAGICS:
        if head.startswith(magic):
            return name
    return "unknown"
