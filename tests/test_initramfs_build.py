"""Builders, validation, reproducibility rules, streaming and compression of vmboot.initramfs."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import require_tool
from vmboot.compression.formats import LZ4_LEGACY_BLOCK, LZ4_LEGACY_MAGIC_BYTES
from vmboot.errors import InitramfsError, VmbootError
from vmboot.initramfs import (
    Entry,
    EntryKind,
    NewcHeader,
    build_initramfs,
    complete_tree,
    compress,
    cpio_bytes,
    decompress,
    default_mtime,
    detect_compression,
    entries_from_files,
    entries_from_memory,
    normalize_guest_path,
    read_cpio,
    write_cpio,
)
from vmboot.initramfs.newc import HEADER_SIZE, TRAILER_HEADER

# -- the wire header ------------------------------------------------------------------------


def test_header_packs_upper_case_hex_and_round_trips() -> None:
    h = NewcHeader(ino=0xABC, mode=0o100644, uid=1, gid=2, nlink=1, mtime=0xDEADBEEF, filesize=5,
                   devmajor=0, devminor=0, rdevmajor=0, rdevminor=0, namesize=6)
    raw = h.pack()
    assert len(raw) == HEADER_SIZE
    assert raw == b"070701" b"00000ABC" b"000081A4" b"00000001" b"00000002" b"00000001" b"DEADBEEF" \
        b"00000005" + b"00000000" * 4 + b"00000006" b"00000000"
    assert NewcHeader.unpack(raw) == h


def test_header_refuses_values_that_do_not_fit() -> None:
    with pytest.raises(InitramfsError, match=r"mtime=4294967296 .*0xffffffff"):
        NewcHeader(0, 0, 0, 0, 1, 1 << 32, 0, 0, 0, 0, 0, 1)


def test_header_unpack_errors_name_offset_and_field() -> None:
    good = TRAILER_HEADER.pack()
    with pytest.raises(InitramfsError, match="offset 0: magic b'070707'"):
        NewcHeader.unpack(b"070707" + good[6:])
    with pytest.raises(InitramfsError, match="field uid is b'0000000G'"):
        NewcHeader.unpack(good[:22] + b"0000000G" + good[30:])
    with pytest.raises(InitramfsError, match="truncated"):
        NewcHeader.unpack(good[:50])


def test_empty_archive_is_one_trailer_block() -> None:
    data = cpio_bytes([])
    assert len(data) == 512
    assert data.startswith(TRAILER_HEADER.pack() + b"TRAILER!!!\0")
    assert read_cpio(data) == []


# -- paths and entry validation -------------------------------------------------------------


@pytest.mark.parametrize(("raw", "normal"), [
    ("/init", "init"), ("usr//bin/./x/", "usr/bin/x"), ("./a", "a"), ("a b/c'd", "a b/c'd"),
])
def test_paths_are_normalised(raw: str, normal: str) -> None:
    assert normalize_guest_path(raw) == normal


@pytest.mark.parametrize(("raw", "message"), [
    ("../etc/passwd", r"contains '\.\.'"),
    ("a/../../b", r"contains '\.\.'"),
    ("/", "archive root"),
    ("", "archive root"),
    ("a\0b", "NUL"),
    ("x" * 256, "256 bytes .*at most 255"),
    ("/".join(["d" * 200] * 21), "with its NUL .*at most 4096"),
])
def test_bad_paths_are_refused_with_the_path_in_the_message(raw: str, message: str) -> None:
    with pytest.raises(InitramfsError, match=message):
        Entry.file(raw, b"")


def test_entry_validation_names_the_entry_and_the_valid_range() -> None:
    with pytest.raises(InitramfsError, match=r"'dev/x': rdev_major=4096 .*0\.\.4095"):
        Entry.char_device("dev/x", 4096, 0)
    with pytest.raises(InitramfsError, match=r"'dev/x': rdev_minor=1048576"):
        Entry.block_device("dev/x", 1, 1 << 20)
    with pytest.raises(InitramfsError, match=r"'f': mode 0o100644 has bits outside permissions"):
        Entry.file("f", b"", 0o100644)
    with pytest.raises(InitramfsError, match=r"'l': symlink target '' is unusable"):
        Entry.symlink("l", "")
    with pytest.raises(InitramfsError, match=r"'f': uid=-1"):
        Entry.file("f", b"", uid=-1)
    with pytest.raises(InitramfsError, match="only a regular file has contents"):
        Entry("d", EntryKind.DIRECTORY, 0o755, data=b"x")
    with pytest.raises(InitramfsError, match="cannot read host file"):
        Entry.host_file("f", "/nonexistent/file")


def test_duplicates_and_non_directory_parents_are_refused() -> None:
    with pytest.raises(InitramfsError, match=r"'a/b' occurs 2 times"):
        write_cpio([Entry.file("a/b", b"1"), Entry.file("/a//b", b"2")], io.BytesIO())
    with pytest.raises(InitramfsError, match=r"'a/b': its parent 'a' is a file"):
        complete_tree([Entry.file("a", b""), Entry.file("a/b", b"")])


def test_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert default_mtime() == 0
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234")
    assert read_cpio(cpio_bytes([Entry.file("f", b"")]))[0].mtime == 1234
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(InitramfsError, match=r"SOURCE_DATE_EPOCH='yesterday'.*decimal seconds"):
        cpio_bytes([])
    assert read_cpio(cpio_bytes([Entry.file("f", b"", mtime=7)], mtime=9))[0].mtime == 7


# -- builders -------------------------------------------------------------------------------


def test_memory_builder_adds_parents_and_sorts_depth_first() -> None:
    entries = entries_from_memory({"z/file": b"1", "a-b": "text", "a/b/c": b"3"})
    assert [(e.path, e.kind) for e in entries] == [
        ("a", EntryKind.DIRECTORY), ("a/b", EntryKind.DIRECTORY), ("a/b/c", EntryKind.FILE),
        ("a-b", EntryKind.FILE), ("z", EntryKind.DIRECTORY), ("z/file", EntryKind.FILE),
    ]
    assert entries[3].data == b"text"
    back = read_cpio(cpio_bytes(entries))
    assert [(e.path, e.ino, e.nlink) for e in back] == [
        ("a", 0, 3), ("a/b", 1, 2), ("a/b/c", 2, 1), ("a-b", 3, 1), ("z", 4, 2), ("z/file", 5, 1)]


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-c]{1,2}(/[a-c]{1,2}){0,2}", fullmatch=True), st.binary(max_size=9),
                       min_size=1, max_size=8), st.randoms())
def test_output_does_not_depend_on_input_order(files: dict[str, bytes], rnd: object) -> None:
    # Drop paths that would need to be both a file and a directory.
    names = sorted(files)
    usable = {n: files[n] for n in names if not any(o.startswith(n + "/") for o in names)}
    items = list(usable.items())
    shuffled = items[:]
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert cpio_bytes(entries_from_memory(dict(items))) == cpio_bytes(entries_from_memory(dict(shuffled)))


def test_host_file_pairs(tmp_path: Path) -> None:
    (tmp_path / "prog").write_bytes(b"#!/bin/sh\necho hi\n")
    (tmp_path / "prog").chmod(0o750)
    (tmp_path / "link-to-prog").symlink_to("prog")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "data").write_bytes(b"data")
    (tree / "rel").symlink_to("sub/data")
    entries = entries_from_files([(tmp_path / "prog", "/usr/local/bin/prog"),
                                  (tmp_path / "link-to-prog", "/bin/followed"),
                                  (tree, "/opt/tree")])
    by_path = {e.path: e for e in read_cpio(cpio_bytes(entries))}
    assert by_path["usr/local/bin/prog"].data == b"#!/bin/sh\necho hi\n"
    assert by_path["usr/local/bin/prog"].mode == 0o750
    assert by_path["bin/followed"].kind is EntryKind.FILE  # a symlink given directly is followed
    assert by_path["opt/tree/rel"].target == "sub/data"    # links inside a tree stay links
    assert by_path["opt/tree/sub/data"].data == b"data"
    assert {"usr", "usr/local", "usr/local/bin", "bin", "opt", "opt/tree", "opt/tree/sub"} <= set(by_path)
    assert all(e.uid == 0 and e.gid == 0 and e.mtime == 0 for e in by_path.values())
    with pytest.raises(InitramfsError, match="/nonexistent"):
        entries_from_files([(Path("/nonexistent"), "x")])


def test_large_host_files_are_streamed_not_loaded(tmp_path: Path) -> None:
    big = tmp_path / "big"
    size = 3 * (1 << 20) + 5
    with open(big, "wb") as f:
        f.truncate(size)  # sparse: zeros
        f.seek(size - 1)
        f.write(b"!")
    writes: list[int] = []

    class Sink:
        def write(self, data: bytes, /) -> int:
            writes.append(len(data))
            return len(data)

    total = write_cpio([Entry.host_file("big", big)], Sink())
    assert max(writes) <= 1 << 20  # never more than one copy chunk at a time
    assert total == sum(writes) and total % 512 == 0


def test_a_host_file_that_changes_size_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"12345678")
    entry = Entry.host_file("f", f)
    f.write_bytes(b"1234")
    with pytest.raises(InitramfsError, match=r"'f': wrote 4 bytes of contents, but its header says 8"):
        cpio_bytes([entry])
    f.write_bytes(b"123456789")
    with pytest.raises(InitramfsError, match="grew past 8 bytes"):
        cpio_bytes([entry])


def test_concatenated_archives_read_as_one_with_later_members_last() -> None:
    base = cpio_bytes(entries_from_memory({"etc/a": b"old", "init": b"x"}))
    extra = cpio_bytes(entries_from_memory({"etc/a": b"new", "etc/b": b"b"}))
    merged = read_cpio(base + b"\0" * 4 + extra)
    assert [e.path for e in merged] == ["etc", "etc/a", "init", "etc", "etc/a", "etc/b"]
    assert [e.data for e in merged if e.path == "etc/a"] == [b"old", b"new"]
    with pytest.raises(InitramfsError, match="without a TRAILER!!!"):
        read_cpio(base[:HEADER_SIZE + 6])  # exactly the first member, "etc\0" plus 2 bytes of padding


def test_reader_errors_are_vmboot_errors() -> None:
    with pytest.raises(VmbootError, match="offset 0: magic b'hello!'"):
        read_cpio(b"hello! this is not cpio")


# -- compression ----------------------------------------------------------------------------

ARCHIVE = cpio_bytes(entries_from_memory({"bin/x": os.urandom(3000) + b"\0" * 20000, "init": b"#!/bin/sh\n"}))
TOOL_DECOMPRESS = {"gzip": ["gzip", "-dc"], "lz4": ["lz4", "-dc"], "zstd": ["zstd", "-dc"]}


@pytest.mark.parametrize("method", ["gzip", "lz4", "zstd"])
def test_compressed_images_decompress_to_the_same_archive(method: str) -> None:
    packed = build_initramfs(entries_from_memory({"bin/x": os.urandom(3000) + b"\0" * 20000}),
                             compression=method)
    assert detect_compression(packed) == method
    raw = build_initramfs(entries_from_memory({"bin/x": b""}))
    assert detect_compression(raw) == "none"
    packed = compress(ARCHIVE, method)
    assert decompress(packed) == ARCHIVE
    assert read_cpio(packed) == read_cpio(ARCHIVE)
    tool = TOOL_DECOMPRESS[method]
    require_tool(tool[0], tool[0])
    done = subprocess.run(tool, input=packed, capture_output=True, check=True)
    assert done.stdout == ARCHIVE


def test_gzip_output_is_reproducible() -> None:
    a, b = compress(ARCHIVE, "gzip"), compress(ARCHIVE, "gzip")
    assert a == b
    assert a[4:8] == b"\0\0\0\0"  # header mtime 0
    assert gzip.decompress(a) == ARCHIVE


def test_lz4_legacy_frame_layout_and_block_limit() -> None:
    data = os.urandom(1000) * (LZ4_LEGACY_BLOCK // 1000 + 300)  # a bit more than one block
    packed = compress(data, "lz4")
    assert packed[:4] == LZ4_LEGACY_MAGIC_BYTES == b"\x02\x21\x4c\x18"
    sizes = []
    offset = 4
    while offset < len(packed):
        size = int.from_bytes(packed[offset:offset + 4], "little")
        sizes.append(size)
        offset += 4 + size
    assert offset == len(packed) and len(sizes) == 2
    assert decompress(packed) == data
    if shutil.which("lz4"):
        assert subprocess.run(["lz4", "-dc"], input=packed, capture_output=True, check=True).stdout == data


def test_unknown_compression_and_missing_library(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InitramfsError, match=r"'xz' is unknown \(valid: none, gzip, lz4, zstd\)"):
        build_initramfs([], compression="xz")
    import builtins

    real_import = builtins.__import__

    def no_zstd(name: str, *args: object, **kwargs: object) -> object:
        if name == "zstandard":
            raise ImportError("no zstandard")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_zstd)
    with pytest.raises(InitramfsError, match=r"needs the Python module 'zstandard'.*reinstall it"):
        compress(b"x", "zstd")
