"""The one bounded decompressor for everything vmboot unpacks on the host.

Kernel payloads (a bzImage's compressed ``vmlinux.bin``) and initramfs archives come from
files a user hands to vmboot, so they are untrusted: a few kilobytes of gzip can expand to
gigabytes (a decompression bomb). Every format is therefore decompressed in a streaming
way with a hard limit on the output, checked as it grows:

- gzip: :func:`zlib.decompressobj` with ``max_length``;
- xz, lzma, bzip2: the standard library decompressors with ``max_length``;
- zstd: a ``zstandard`` decompressobj fed 128 bytes of input at a time, which bounds each step's
  output (``zstandard``, a dependency of vmboot);
- LZ4 legacy frames (``lz4 -l``, what the kernel's ``lib/decompress_unlz4.c`` reads):
  blocks of at most 8 MiB of output each, with a running total (python-lz4).

Going over the limit raises :class:`~vmboot.errors.DecompressionLimitError`; data that does
not decompress raises the caller's error type (``error=``), so a kernel payload keeps
raising :class:`~vmboot.errors.KernelFormatError` and an initramfs
:class:`~vmboot.errors.InitramfsError`.

Two ends of stream exist. ``strict_end=False`` (kernel payloads) stops after the first
stream and ignores what follows: the kernel build appends the uncompressed size to most
payloads. ``strict_end=True`` (initramfs) reads concatenated gzip members, zstd frames and
LZ4 frames, skips NUL padding between gzip members and zstd frames as the kernel does, and
refuses anything else.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from typing import TYPE_CHECKING

from vmboot.compression.formats import (
    EXTRA_HINT,
    FORMATS,
    GZIP_MAGIC,
    LZ4_BLOCK_SIZE,
    LZ4_LEGACY_BLOCK,
    LZ4_LEGACY_MAGIC,
    ZSTD_MAGIC,
)
from vmboot.errors import DecompressionLimitError, VmbootError
from vmboot.units import MiB

if TYPE_CHECKING:
    import zstandard

CHUNK = 4 * MiB
"""Output produced per step of a streaming decompressor (bounds the overshoot of the limit)."""
SMALL_PIECE = 256 * 1024
"""Decompressor outputs shorter than this are gathered in one buffer before joining."""
GZIP_WBITS = 16 + zlib.MAX_WBITS
ZSTD_INPUT_STEP = 128
"""Input bytes fed to the zstd decompressor per step: its API has no output limit, but a zstd
block holds at most 128 KiB and takes at least 4 bytes (an RLE block), so one step yields at
most 4 MiB and the limit is overshot by no more than that."""
_U32 = LZ4_BLOCK_SIZE


def decompress(
    data: bytes | bytearray | memoryview,
    fmt: str,
    *,
    limit: int,
    name: str,
    what: str,
    error: type[VmbootError],
    raise_hint: str,
    strict_end: bool = False,
) -> bytes:
    """``data`` decompressed as ``fmt`` (one of :data:`FORMATS`), at most ``limit`` bytes.

    ``name`` (the file) and ``what`` ("payload", "initramfs") make the error messages;
    ``raise_hint`` says how the user raises the limit. Corrupt or truncated data raises
    ``error``; more than ``limit`` bytes of output raises
    :class:`~vmboot.errors.DecompressionLimitError`.
    """
    raw = bytes(data)
    job = _Job(fmt, limit, name, what, error, raise_hint)
    if fmt == "lz4":
        return _lz4_legacy(raw, job, strict_end)
    if fmt == "zstd":
        return _zstd(raw, job, strict_end)
    try:
        if fmt == "gzip":
            return _gzip(raw, job, strict_end)
        if fmt == "xz":
            return _stream(lzma.LZMADecompressor(lzma.FORMAT_XZ), raw, job)
        if fmt == "lzma":
            return _stream(lzma.LZMADecompressor(lzma.FORMAT_ALONE), raw, job)
        if fmt == "bzip2":
            return _stream(bz2.BZ2Decompressor(), raw, job)
    except (zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
        raise error(f"{name}: {fmt} {what} does not decompress: {exc}") from exc
    raise error(f"{name}: {what} compression {fmt!r} is not supported; supported: "
                f"{', '.join(FORMATS)}")


class _Job:
    """The parameters of one decompression, and the checks that use them."""

    def __init__(self, fmt: str, limit: int, name: str, what: str, error: type[VmbootError],
                 raise_hint: str) -> None:
        if limit < 0:
            raise ValueError(f"decompression limit {limit} is negative")
        self.fmt, self.limit, self.name, self.what = fmt, limit, name, what
        self.error, self.raise_hint = error, raise_hint
        self.pieces: list[bytes | bytearray] = []
        """Output so far: whole blocks as the decompressor returned them (no copy)..."""
        self.small = bytearray()
        """...and small outputs gathered here (zstd's 128-byte steps yield many), so the list
        never holds millions of tiny objects."""
        self.size = 0

    def room(self) -> int:
        """How many more bytes to ask for: up to one past the limit, so going over shows."""
        return max(1, min(CHUNK, self.limit + 1 - self.size))

    def add(self, piece: bytes) -> None:
        if self.size + len(piece) > self.limit:
            raise DecompressionLimitError(
                f"{self.name}: the {self.fmt} {self.what} decompresses to more than "
                f"{self.limit} bytes ({self.limit / MiB:.0f} MiB), the limit for a {self.what}; "
                f"a decompression bomb? If the file is genuine, raise the limit: "
                f"{self.raise_hint}"
            )
        self.size += len(piece)
        if len(piece) >= SMALL_PIECE:
            self._flush_small()
            self.pieces.append(piece)
            return
        self.small += piece
        if len(self.small) >= CHUNK:
            self._flush_small()

    def _flush_small(self) -> None:
        if self.small:
            self.pieces.append(self.small)  # handed over, not copied
            self.small = bytearray()

    def result(self) -> bytes:
        """The output so far, in one piece (large blocks are copied once, into it)."""
        self._flush_small()
        out = b"".join(self.pieces)
        self.pieces = [out]
        return out

    def corrupt(self, detail: str) -> VmbootError:
        return self.error(f"{self.name}: {self.fmt} {self.what} does not decompress: {detail}")


def _drain(decomp: lzma.LZMADecompressor | bz2.BZ2Decompressor, data: bytes, job: _Job) -> None:
    """Feed ``data`` to an lzma/bz2 decompressor and collect its output to the stream's end."""
    buf = data
    while not decomp.eof:
        piece = decomp.decompress(buf, max_length=job.room())
        buf = b""
        job.add(piece)
        if not piece and decomp.needs_input:
            raise job.corrupt("the data ends before the end of the compressed stream")


def _drain_gzip_member(data: bytes, job: _Job) -> bytes:
    """Decompress one gzip member of ``data``; the bytes after it."""
    decomp = zlib.decompressobj(GZIP_WBITS)
    buf = data
    while not decomp.eof:
        piece = decomp.decompress(buf, job.room())
        job.add(piece)
        buf = decomp.unconsumed_tail
        if not piece and not buf:
            raise job.corrupt("the data ends before the end of the compressed stream")
    return decomp.unused_data


def _stream(decomp: lzma.LZMADecompressor | bz2.BZ2Decompressor, data: bytes, job: _Job) -> bytes:
    _drain(decomp, data, job)
    return job.result()


def _gzip(data: bytes, job: _Job, strict_end: bool) -> bytes:
    rest = data
    while True:
        rest = _drain_gzip_member(rest, job)
        if not strict_end:
            return job.result()
        rest = rest.lstrip(b"\0")  # NUL padding between members, as the kernel allows
        if not rest:
            return job.result()
        if not rest.startswith(GZIP_MAGIC):
            raise job.corrupt(f"{len(rest)} bytes after the last gzip member are not a gzip member")


def _zstd(data: bytes, job: _Job, strict_end: bool) -> bytes:
    try:
        import zstandard
    except ImportError as exc:
        raise job.error(f"{job.name}: a zstd {job.what} needs the Python module 'zstandard', "
                        f"which is not installed: {EXTRA_HINT}") from exc
    rest = data
    try:
        while True:
            rest = _zstd_frame(zstandard.ZstdDecompressor().decompressobj(), rest, job)
            if not strict_end:
                return job.result()
            rest = rest.lstrip(b"\0")
            if not rest:
                return job.result()
            if not rest.startswith(ZSTD_MAGIC):
                raise job.corrupt(f"{len(rest)} bytes after the last zstd frame are not a frame")
    except zstandard.ZstdError as exc:
        raise job.corrupt(str(exc)) from exc


def _zstd_frame(decomp: zstandard.ZstdDecompressionObj, data: bytes, job: _Job) -> bytes:
    """Decompress one zstd frame of ``data``, fed ZSTD_INPUT_STEP bytes at a time; the bytes
    after it."""
    for pos in range(0, len(data), ZSTD_INPUT_STEP):
        job.add(decomp.decompress(data[pos : pos + ZSTD_INPUT_STEP]))
        if decomp.eof:
            return bytes(decomp.unused_data)
    raise job.corrupt("the data ends before the end of the zstd frame")


def _lz4_legacy(data: bytes, job: _Job, strict_end: bool) -> bytes:
    """Magic, then (u32 compressed size, LZ4 block) until the data ends; a repeated magic
    starts a concatenated frame."""
    try:
        import lz4.block
    except ImportError as exc:
        raise job.error(f"{job.name}: an LZ4 {job.what} needs the Python module 'lz4', "
                        f"which is not installed: {EXTRA_HINT}") from exc
    if len(data) < _U32.size or _U32.unpack_from(data, 0)[0] != LZ4_LEGACY_MAGIC:
        raise job.corrupt(f"not an LZ4 legacy frame (magic {LZ4_LEGACY_MAGIC:#x})")
    pos = _U32.size
    view = memoryview(data)
    while pos + _U32.size <= len(data):
        size = _U32.unpack_from(data, pos)[0]
        if size == LZ4_LEGACY_MAGIC:  # concatenated frames
            pos += _U32.size
            continue
        if size == 0 or pos + _U32.size + size > len(data):
            if not strict_end:
                break  # the kernel build appends the uncompressed size; stop at anything odd
            raise job.corrupt(f"LZ4 block at offset {pos:#x}: size {size} runs past the end "
                              f"({len(data)} bytes)")
        block = view[pos + _U32.size : pos + _U32.size + size]
        # A block decodes to at most 8 MiB, so the running total overshoots by at most that.
        try:
            job.add(lz4.block.decompress(block, uncompressed_size=LZ4_LEGACY_BLOCK))
        except DecompressionLimitError:
            raise
        except Exception as exc:  # lz4 raises LZ4BlockError, a bare Exception subclass
            raise job.corrupt(f"LZ4 block at {job.what} offset {pos:#x} ({size} bytes) is "
                              f"corrupt: {exc}") from exc
        pos += _U32.size + size
    if strict_end and pos != len(data):
        raise job.corrupt(f"{len(data) - pos} stray bytes at offset {pos:#x}")
    return job.result()
