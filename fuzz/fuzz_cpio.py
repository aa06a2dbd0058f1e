"""newc cpio reader (plain, concatenated, gzip/lz4/zstd), and a write/read round trip."""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

from fuzz.harness import Target, atheris_main
from fuzz.seeds import cpio_offsets, cpio_seeds
from vmboot.errors import VmbootError
from vmboot.initramfs import cpio_bytes, read_cpio


def _offsets() -> list[int]:
    offs: set[int] = set()
    for s in cpio_seeds():
        offs.update(cpio_offsets(s))
    return sorted(offs)


def _key(e: object) -> tuple[object, ...]:
    return tuple(getattr(e, k) for k in ("path", "kind", "mode", "uid", "gid", "data", "target",
                                         "rdev_major", "rdev_minor"))


def one_input(data: bytes) -> None:
    entries = read_cpio(data)
    for e in entries:
        _ = e.st_mode, e.size
    try:
        again = cpio_bytes(entries, mtime=0)
    except VmbootError:
        return  # e.g. a name twice (concatenated archives): the writer refuses duplicates
    assert [_key(e) for e in read_cpio(again)] == [_key(e) for e in entries]


TARGET = Target("cpio", one_input, lambda: list(cpio_seeds()), _offsets, max_len=1 << 16,
                description="read_cpio (+ decompression) and cpio_bytes round trip")

if __name__ == "__main__":
    atheris_main(TARGET)
