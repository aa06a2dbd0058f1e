"""Recognise how a bzImage's payload is compressed, by its magic bytes (the table is
:data:`vmboot.decompress.MAGICS`)."""

from __future__ import annotations

from vmboot.decompress import detect_format
from vmboot.elf import ELF_MAGIC

ELF_PAYLOAD = "none (ELF)"
"""The name of an uncompressed (ELF) payload."""
UNKNOWN = "unknown"


def detect_compression(payload: bytes | memoryview) -> str:
    """The payload's format name (see :data:`vmboot.decompress.MAGICS`), :data:`ELF_PAYLOAD`
    for an uncompressed vmlinux, or ``"unknown"``."""
    if bytes(payload[: len(ELF_MAGIC)]) == ELF_MAGIC:
        return ELF_PAYLOAD
    return detect_format(payload) or UNKNOWN
