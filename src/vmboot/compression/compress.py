"""Compress an initramfs the way the kernel's decompressors (CONFIG_RD_*) expect.

- ``none``: the archive as is. Fastest to unpack under an emulating hypervisor.
- ``gzip`` (RD_GZIP): stdlib gzip, level 9, header mtime 0 and no file name, so the
  output is reproducible.
- ``lz4`` (RD_LZ4): the LZ4 *legacy* frame that ``lz4 -l`` writes and
  ``lib/decompress_unlz4.c`` reads: the little-endian magic 0x184C2102, then blocks of
  at most 8 MiB of input, each one an LZ4 block prefixed by its compressed size as a
  32-bit little-endian number. No end mark, no checksums. Needs ``lz4`` (python-lz4).
- ``zstd`` (RD_ZSTD): a zstd frame, level 19. Needs ``zstandard``.

The vmboot tiny test kernel has RD_GZIP and RD_LZ4 only. The two libraries are
dependencies of vmboot.
"""

from __future__ import annotations

import gzip
import io
from types import ModuleType
from typing import Protocol

from vmboot.compression.formats import (
    COMPRESSIONS,
    EXTRA_HINT,
    LZ4_BLOCK_SIZE,
    LZ4_LEGACY_BLOCK,
    LZ4_LEGACY_MAGIC_BYTES,
    Compression,
)
from vmboot.errors import InitramfsError

GZIP_LEVEL = 9
ZSTD_LEVEL = 19
LZ4_HC_LEVEL = 9
"""``lz4 -l -9``'s level; any level decodes the same."""

class ByteSink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class Compressor(Protocol):
    """A sink that compresses what is written into another sink; :meth:`close` finishes it."""

    def write(self, data: bytes, /) -> object: ...

    def close(self) -> None: ...


def check_compression(method: str) -> Compression:
    """``method`` as a :data:`Compression`, or :class:`InitramfsError` listing the valid ones."""
    if method not in COMPRESSIONS:
        raise InitramfsError(
            f"initramfs compression {method!r} is unknown (valid: {', '.join(COMPRESSIONS)})"
        )
    return method  # type: ignore[return-value]


def _import(module: str, method: str) -> ModuleType:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise InitramfsError(
            f"initramfs compression {method!r} needs the Python module {module!r}, "
            f"which is not installed: {EXTRA_HINT}"
        ) from None


class _Passthrough:
    def __init__(self, out: ByteSink) -> None:
        self._out = out

    def write(self, data: bytes, /) -> int:
        self._out.write(data)
        return len(data)

    def close(self) -> None:
        pass


class _SinkFile:
    """``out`` with the ``flush`` that :class:`gzip.GzipFile` expects of a file object."""

    def __init__(self, out: ByteSink) -> None:
        self._out = out

    def write(self, data: bytes, /) -> object:
        return self._out.write(data)

    def flush(self) -> None:
        pass


class Lz4LegacyWriter:
    """Writes the LZ4 legacy frame (see the module docstring) into ``out``."""

    def __init__(self, out: ByteSink) -> None:
        self._block = _import("lz4.block", "lz4")
        self._out = out
        self._pending = bytearray()
        self._out.write(LZ4_LEGACY_MAGIC_BYTES)

    def _emit(self, chunk: bytes) -> None:
        packed: bytes = self._block.compress(
            chunk, mode="high_compression", compression=LZ4_HC_LEVEL, store_size=False
        )
        self._out.write(LZ4_BLOCK_SIZE.pack(len(packed)) + packed)

    def write(self, data: bytes, /) -> int:
        self._pending += data
        while len(self._pending) >= LZ4_LEGACY_BLOCK:
            self._emit(bytes(self._pending[:LZ4_LEGACY_BLOCK]))
            del self._pending[:LZ4_LEGACY_BLOCK]
        return len(data)

    def close(self) -> None:
        if self._pending:
            self._emit(bytes(self._pending))
            self._pending.clear()


class _ZstdWriter:
    def __init__(self, out: ByteSink) -> None:
        zstandard = _import("zstandard", "zstd")
        self._writer = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(out, closefd=False)

    def write(self, data: bytes, /) -> int:
        self._writer.write(data)
        return len(data)

    def close(self) -> None:
        self._writer.close()


def open_compressor(method: str, out: ByteSink) -> Compressor:
    """A :class:`Compressor` for ``method`` writing into ``out`` (which it never closes)."""
    method = check_compression(method)
    if method == "gzip":
        sink = _SinkFile(out)
        return gzip.GzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=sink, mtime=0)
    if method == "lz4":
        return Lz4LegacyWriter(out)
    if method == "zstd":
        return _ZstdWriter(out)
    return _Passthrough(out)


def compress(data: bytes, method: str) -> bytes:
    """``data`` compressed with ``method``."""
    out = io.BytesIO()
    comp = open_compressor(method, out)
    comp.write(data)
    comp.close()
    return out.getvalue()
