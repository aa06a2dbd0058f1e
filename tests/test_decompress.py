"""vmboot.compression: every format round-trips, a decompression bomb stops at the limit
without the whole output ever being held, and corrupt data keeps its callers' error types."""

from __future__ import annotations

import gzip
import tracemalloc

import pytest

import fuzz_support  # noqa: F401  (puts the repository root on sys.path for ``fuzz``)

# isort: split
from fuzz.seeds import PACKERS

from vmboot.compression.decompress import CHUNK, ZSTD_INPUT_STEP, decompress
from vmboot.compression.formats import FORMATS
from vmboot.compression.kernel_payload import decompress_payload
from vmboot.errors import DecompressionLimitError, InitramfsError, KernelFormatError
from vmboot.initramfs import compress
from vmboot.initramfs import decompress as decompress_initramfs

MiB = 1 << 20
BOMB_SIZE = 64 * MiB
LIMIT = 1 * MiB
MAX_STEP_OUTPUT = 8 * MiB
"""The most one step can produce past the limit: an 8 MiB LZ4 block (zstd: 128 bytes of
4-byte RLE blocks of 128 KiB, see ZSTD_INPUT_STEP; the others stop at CHUNK)."""
ZSTD_RLE_BLOCK = 4
ZSTD_BLOCK_MAX = 128 * 1024
DATA = bytes(range(256)) * 3000 + b"tail"


def test_every_format_has_a_packer() -> None:
    assert sorted(PACKERS) == sorted(FORMATS)


def run(data: bytes, fmt: str, limit: int, strict_end: bool = False) -> bytes:
    return decompress(data, fmt, limit=limit, name="f.bin", what="payload",
                      error=KernelFormatError, raise_hint="pass limit=", strict_end=strict_end)


@pytest.mark.parametrize("strict_end", [False, True], ids=["payload", "initramfs"])
@pytest.mark.parametrize("fmt", sorted(PACKERS))
def test_round_trip(fmt: str, strict_end: bool) -> None:
    packed = PACKERS[fmt](DATA)
    assert run(packed, fmt, len(DATA), strict_end) == DATA  # exactly the limit is fine
    with pytest.raises(DecompressionLimitError):
        run(packed, fmt, len(DATA) - 1, strict_end)


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    zeros = bytes(BOMB_SIZE)
    return {fmt: pack(zeros) for fmt, pack in PACKERS.items()}


@pytest.mark.parametrize("fmt", sorted(PACKERS))
def test_bomb_is_refused_without_holding_its_output(fmt: str, bombs: dict[str, bytes]) -> None:
    bomb = bombs[fmt]
    assert len(bomb) < BOMB_SIZE // 100
    tracemalloc.start()
    try:
        with pytest.raises(DecompressionLimitError) as info:
            run(bomb, fmt, LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "f.bin" in message and fmt in message and str(LIMIT) in message
    assert "pass limit=" in message
    # an unbounded decoder holds all 64 MiB; this one stops within a step of the limit
    assert peak < LIMIT + MAX_STEP_OUTPUT + 2 * CHUNK + len(bomb)
    assert ZSTD_INPUT_STEP // ZSTD_RLE_BLOCK * ZSTD_BLOCK_MAX <= MAX_STEP_OUTPUT


def test_initramfs_bomb_and_round_trip(bombs: dict[str, bytes]) -> None:
    for fmt in ("gzip", "lz4", "zstd"):
        with pytest.raises(DecompressionLimitError, match=r"initramfs .* more than 1048576"):
            decompress_initramfs(bombs[fmt], "initrd.img", limit=LIMIT)
        assert decompress_initramfs(compress(DATA, fmt)) == DATA


def test_payload_bomb_uses_the_payload_limit(bombs: dict[str, bytes]) -> None:
    with pytest.raises(DecompressionLimitError, match=r"vmlinuz: the xz payload"):
        decompress_payload(bombs["xz"], "vmlinuz", limit=LIMIT)


@pytest.mark.parametrize("fmt", ["gzip", "lz4", "zstd"])
def test_corrupt_initramfs_raises_initramfs_error(fmt: str) -> None:
    packed = compress(DATA, fmt)
    with pytest.raises(InitramfsError, match=rf"{fmt} initramfs does not decompress"):
        decompress_initramfs(packed[:8] + b"\xff" * 64)
    with pytest.raises(InitramfsError):
        decompress_initramfs(packed + b"garbage")  # trailing data in an initramfs


@pytest.mark.parametrize("fmt", sorted(PACKERS))
def test_corrupt_or_truncated_payload_raises_kernel_format_error(fmt: str) -> None:
    packed = PACKERS[fmt](DATA)
    # A payload's LZ4 frame ends at anything odd (the kernel build appends its size), so a
    # truncated one shows only with strict_end.
    with pytest.raises(KernelFormatError, match=rf"f.bin: {fmt} payload does not decompress"):
        run(packed[: len(packed) // 2], fmt, LIMIT, strict_end=fmt == "lz4")
    with pytest.raises(KernelFormatError, match=rf"f.bin: {fmt} payload does not decompress"):
        run(packed[:6] + b"\xa5" * 300, fmt, LIMIT, strict_end=fmt == "lz4")


def test_concatenated_gzip_members_in_an_initramfs() -> None:
    two = gzip.compress(b"first") + b"\0" * 16 + gzip.compress(b"second")
    assert decompress_initramfs(two) == b"firstsecond"
    assert decompress_payload(two, "k") == b"first"  # a payload stops after its stream
