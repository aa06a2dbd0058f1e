"""kallsyms decoding across table layouts (<= 6.1, 6.2 with seqs_of_names, 6.4+ reordered with
two-byte lengths), absolute per-CPU offsets, and bzImage payload decompression in every format."""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct

import pytest

import fuzz_support  # noqa: F401  (puts the repository root on sys.path for ``fuzz``)
from vmboot.compression.formats import LZ4_LEGACY_MAGIC
from vmboot.compression.kernel_payload import decompress_payload
from vmboot.debug.kallsyms import decode_kallsyms
from vmboot.errors import KernelFormatError, SymbolSourceError

TEXT = 0xFFFF_FFFF_8100_0000


def build_kallsyms(symbols: list[tuple[int, str, str]], layout: str,
                   absolute_percpu: bool = False) -> bytes:
    """The shared encoder, with 4 KiB of zeros after the tables (as these tests always had)."""
    from fuzz.seeds import build_kallsyms as encode_kallsyms  # after fuzz_support set sys.path

    return encode_kallsyms(symbols, layout, absolute_percpu, TEXT, tail_zeros=4096)


def sample_symbols(count: int, long_name: bool = False, percpu: bool = False) -> list[tuple[int, str, str]]:
    syms = []
    if percpu:
        syms += [(0, "A", "fixed_percpu_data"), (0x1000, "A", "cpu_debug_store")]
    for i in range(count):
        kind = "tTdDrRwW"[i % 8]
        syms.append((TEXT + 0x10 * i, kind, f"do_sys_thing{i}_init"))
    if long_name:
        syms.append((TEXT + 0x10 * count, "T", "kernel" + "x" * 200))
    return syms


@pytest.mark.parametrize("layout", ["6.1", "6.2", "6.4"])
@pytest.mark.parametrize("count", [300, 1000])
def test_layouts_decode_exactly(layout: str, count: int) -> None:
    syms = sample_symbols(count, long_name=layout == "6.4")
    ks = decode_kallsyms(build_kallsyms(syms, layout), "synthetic")
    assert len(ks) == len(syms)
    assert [(int(ks.addresses[i]), chr(ks.types[i]), ks.name(i)) for i in range(len(ks))] == syms
    assert ks.tables.big_lengths == (layout == "6.4")
    table = ks.function_table("synthetic")
    assert all(table.lookup(a).name == n for a, k, n in syms if k in "tTwW")


def test_absolute_percpu_offsets() -> None:
    syms = sample_symbols(600, percpu=True)
    ks = decode_kallsyms(build_kallsyms(syms, "6.2", absolute_percpu=True), "synthetic")
    assert ks.tables.absolute_percpu
    assert [(int(ks.addresses[i]), ks.name(i)) for i in range(len(ks))] == [(a, n) for a, _, n in syms]


def test_no_token_table_is_a_symbol_source_error() -> None:
    with pytest.raises(SymbolSourceError, match=r"no kallsyms token table found"):
        decode_kallsyms(b"\0" * 4096, "blob")


def test_token_table_without_consistent_names_is_an_error() -> None:
    data = bytearray(build_kallsyms(sample_symbols(300), "6.1"))
    num_syms = data.find(struct.pack("<II", 300, 0))
    data[num_syms + 8] = 0x7F  # the first name's length byte: the names no longer meet the markers
    with pytest.raises(SymbolSourceError, match=r"found 1 kallsyms token table"):
        decode_kallsyms(bytes(data), "blob")


# -- payload decompression --------------------------------------------------------------------
PAYLOAD = b"\x7fELF" + bytes(range(256)) * 4000


def lz4_legacy(data: bytes) -> bytes:
    import lz4.block

    out = bytearray(struct.pack("<I", LZ4_LEGACY_MAGIC))
    for pos in range(0, len(data), 8 << 20):
        block = lz4.block.compress(data[pos : pos + (8 << 20)], store_size=False)
        out += struct.pack("<I", len(block)) + block
    out += struct.pack("<I", len(data))  # the kernel build appends the size
    return bytes(out)


def zstd(data: bytes) -> bytes:
    import zstandard

    return bytes(zstandard.ZstdCompressor().compress(data))


@pytest.mark.parametrize("pack", [
    gzip.compress,
    lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
    lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
    bz2.compress,
    lz4_legacy,
    zstd,
], ids=["gzip", "xz", "lzma", "bzip2", "lz4-legacy", "zstd"])
def test_payload_formats_round_trip(pack: object) -> None:
    assert callable(pack)
    assert decompress_payload(pack(PAYLOAD) + b"\x10\x20\x30\x00", "payload") == PAYLOAD


def test_unsupported_and_corrupt_payloads() -> None:
    with pytest.raises(KernelFormatError, match=r"compression 'lzo' is not supported"):
        decompress_payload(b"\x89LZO\x00\r\n\x1a\n" + b"\0" * 32, "k")
    with pytest.raises(KernelFormatError, match=r"gzip payload does not decompress"):
        decompress_payload(b"\x1f\x8b\x08" + b"\xff" * 64, "k")
    with pytest.raises(KernelFormatError, match=r"LZ4 block at payload offset 0x4"):
        decompress_payload(struct.pack("<II", LZ4_LEGACY_MAGIC, 16) + b"\xff" * 16, "k")
