"""The uncompressed kernel inside a bzImage: find the payload and decompress it.

The payload (``setup_header.payload_offset`` / ``payload_length``, boot protocol 2.08+)
is the compressed ``vmlinux.bin`` — an ELF file stripped of its symbol table but with its
sections, which is where kallsyms and the ORC tables live. Formats: gzip, xz, lzma and
bzip2 (standard library), LZ4 legacy frames (python-lz4), zstd (zstandard). LZO is not
supported (no maintained Python binding); such a payload raises :class:`KernelFormatError`.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib

from vmboot.elf import ELF_MAGIC
from vmboot.errors import KernelFormatError
from vmboot.linux.bzimage import KernelImage
from vmboot.linux.compression import detect_compression

LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK_MAX = 8 << 20
"""Each block of an LZ4 legacy frame decompresses to at most 8 MiB."""
GZIP_WBITS = 16 + zlib.MAX_WBITS
_U32 = struct.Struct("<I")


def decompress_lz4_legacy(data: bytes | memoryview, name: str = "<payload>") -> bytes:
    """An LZ4 legacy frame (``lz4 -l``): magic, then (u32 size, block) until the data ends."""
    try:
        import lz4.block
    except ImportError as exc:
        raise KernelFormatError(f"{name}: LZ4 payload needs python-lz4 "
                                f"(pip install 'vmboot[compression]')") from exc
    buf = memoryview(data)
    if len(buf) < _U32.size or _U32.unpack_from(buf, 0)[0] != LZ4_LEGACY_MAGIC:
        raise KernelFormatError(f"{name}: not an LZ4 legacy frame (magic {LZ4_LEGACY_MAGIC:#x})")
    out = bytearray()
    pos = _U32.size
    while pos + _U32.size <= len(buf):
        size = _U32.unpack_from(buf, pos)[0]
        if size == LZ4_LEGACY_MAGIC:  # concatenated frames
            pos += _U32.size
            continue
        if size == 0 or pos + _U32.size + size > len(buf):
            break  # the kernel build appends the uncompressed size; stop at anything odd
        block = bytes(buf[pos + _U32.size : pos + _U32.size + size])
        try:
            out += lz4.block.decompress(block, uncompressed_size=LZ4_LEGACY_BLOCK_MAX)
        except Exception as exc:  # lz4 raises LZ4BlockError, a bare Exception subclass
            raise KernelFormatError(f"{name}: LZ4 block at payload offset {pos:#x} "
                                    f"({size} bytes) is corrupt: {exc}") from exc
        pos += _U32.size + size
    return bytes(out)


def decompress_payload(payload: bytes | memoryview, name: str = "<payload>") -> bytes:
    """Decompress a bzImage payload in whatever format its magic says."""
    kind = detect_compression(payload)
    data = bytes(payload)
    try:
        if kind == "gzip":
            return zlib.decompressobj(GZIP_WBITS).decompress(data)
        if kind == "xz":
            return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(data)
        if kind == "lzma":
            return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(data)
        if kind == "bzip2":
            return bz2.BZ2Decompressor().decompress(data)
        if kind == "lz4":
            return decompress_lz4_legacy(data, name)
        if kind == "zstd":
            try:
                import zstandard
            except ImportError as exc:
                raise KernelFormatError(f"{name}: zstd payload needs zstandard "
                                        f"(pip install 'vmboot[compression]')") from exc
            return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))
        if kind == "none (ELF)":
            return data
    except (zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
        raise KernelFormatError(f"{name}: {kind} payload does not decompress: {exc}") from exc
    raise KernelFormatError(f"{name}: payload compression {kind!r} is not supported; "
                            f"supported: gzip, xz, lzma, bzip2, lz4, zstd")


def uncompressed_kernel(image: bytes, name: str = "<kernel>") -> bytes:
    """The vmlinux (ELF) inside a bzImage, or ``image`` itself if it already is ELF."""
    if image[:4] == ELF_MAGIC:
        return image
    kernel = KernelImage(image, name)
    payload = kernel.compressed_payload()
    if payload is None:
        raise KernelFormatError(f"{name}: the setup header has no payload_offset/payload_length "
                                f"(boot protocol < 2.08); cannot find the compressed kernel")
    return decompress_payload(payload, name)
