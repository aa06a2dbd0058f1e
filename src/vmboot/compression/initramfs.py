"""Reading an initramfs that may be compressed: sniff its format, decompress it bounded."""

from __future__ import annotations

from vmboot.compression.compress import check_compression
from vmboot.compression.decompress import decompress as bounded_decompress
from vmboot.compression.formats import COMPRESSIONS, Compression, detect_format
from vmboot.errors import InitramfsError
from vmboot.units import GiB

INITRAMFS_LIMIT = 2 * GiB
"""Default output limit when vmboot reads a compressed initramfs. The kernel unpacks an
initramfs into guest RAM, so a genuine one is smaller than any guest vmboot would boot it
in; 2 GiB leaves room for large ones and still stops a decompression bomb before it takes
the host's memory."""


def detect_compression(data: bytes | bytearray | memoryview) -> Compression:
    """Which of :data:`~vmboot.compression.formats.COMPRESSIONS` ``data`` starts with
    (``none`` for anything else)."""
    fmt = detect_format(data)
    if fmt is not None and fmt in COMPRESSIONS:
        return check_compression(fmt)
    return "none"


def decompress(data: bytes | bytearray | memoryview, name: str = "<initramfs>",
               limit: int = INITRAMFS_LIMIT) -> bytes:
    """The archive inside a gzip, LZ4-legacy or zstd compressed ``data`` (as is if
    uncompressed), at most ``limit`` bytes of it: more raises
    :class:`~vmboot.errors.DecompressionLimitError`, corrupt data :class:`InitramfsError`."""
    method = detect_compression(data)
    if method == "none":
        return bytes(data)
    return bounded_decompress(data, method, limit=limit, name=name, what="initramfs",
                              error=InitramfsError, strict_end=True,
                              raise_hint="pass limit= to vmboot.initramfs.decompress")
