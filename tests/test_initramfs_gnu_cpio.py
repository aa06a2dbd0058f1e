"""vmboot's newc writer and reader against GNU cpio (Debian package cpio, 2.13).

Which fields match, and how: GNU ``cpio -o -H newc --reproducible`` (= ``--renumber-inodes
--ignore-devno``) numbers inodes 0, 1, 2... in archive order and writes dev 0:0, as
vmboot does. It takes mode, uid, gid, mtime and nlink from the file system; vmboot takes
them from the tree too when asked (``preserve_owner``, ``preserve_mtime``) and derives a
directory's nlink as 2 + its subdirectories, which equals st_nlink on ext4/tmpfs/overlay
(checked below as a precondition). File lists are fed to GNU cpio in vmboot's order.
With that, every byte matches: header text (upper-case hex), name and data padding,
symlink bodies without NUL, trailer, and the 512-byte block padding.
"""

from __future__ import annotations

import os
import stat
import string
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import require_tool, shared_kernel_file
from vmboot.initramfs import Entry, EntryKind, cpio_bytes, entries_from_tree, read_cpio


@pytest.fixture(autouse=True)
def gnu_cpio() -> None:
    require_tool("cpio", "cpio")

FIXED_MTIME = 1_600_000_000


def gnu_cpio_archive(root: Path, entries: list[Entry]) -> bytes:
    names = b"".join(os.fsencode(e.path) + b"\0" for e in entries)
    done = subprocess.run(["cpio", "-o", "-H", "newc", "--reproducible", "--null", "--quiet"],
                          input=names, cwd=root, capture_output=True, check=True)
    return done.stdout


def cpio_listing(archive: bytes) -> list[str]:
    done = subprocess.run(["cpio", "-t", "--quiet"], input=archive, capture_output=True, check=True)
    return done.stdout.decode("utf-8", "surrogateescape").splitlines()


def assert_dir_nlink_matches_fs(root: Path, entries: list[Entry]) -> None:
    for e in entries:
        if e.kind is EntryKind.DIRECTORY:
            subdirs = sum(1 for x in entries
                          if x.kind is EntryKind.DIRECTORY and x.path.rpartition("/")[0] == e.path)
            fs_nlink = os.lstat(root / e.path).st_nlink
            if fs_nlink != 2 + subdirs:
                pytest.skip(f"this file system reports directory nlink {fs_nlink}, not 2+subdirs")


def make_sample_tree(root: Path) -> None:
    (root / "bin").mkdir()
    (root / "etc" / "deep" / "er").mkdir(parents=True)
    (root / "empty").mkdir(mode=0o700)
    # sizes around the 4-byte padding, names of lengths hitting every name-padding case
    for size in range(9):
        (root / "etc" / f"f{'x' * size}").write_bytes(bytes(range(size)))
    (root / "bin" / "tool").write_bytes(b"\x7fELF" + b"\0" * 1000)
    (root / "bin" / "tool").chmod(0o4755)
    (root / "etc" / "deep" / "er" / "sticky").write_text("s")
    (root / "etc" / "deep" / "er" / "sticky").chmod(0o1644)
    (root / "bin" / "sh").symlink_to("tool")
    (root / "abs").symlink_to("/etc/deep/er/sticky")
    (root / "dangling").symlink_to("nowhere/at/all")
    (root / "naïve ünïcode name").write_text("utf-8 name")
    (root / os.fsdecode(b"bad-\xff-bytes")).write_text("non-utf-8 name")
    os.mknod(root / "console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
    os.mknod(root / "vda", 0o660 | stat.S_IFBLK, os.makedev(254, 0))
    os.mknod(root / "big-numbers", 0o644 | stat.S_IFCHR, os.makedev(4095, (1 << 20) - 1))
    os.mkfifo(root / "fifo", 0o644)


def set_mtimes(root: Path, mtime: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (mtime, mtime), follow_symlinks=False)
    os.utime(root, (mtime, mtime))


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="device nodes need root (mknod)")


@needs_root
def test_sample_tree_is_byte_identical_to_gnu_cpio(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    make_sample_tree(root)
    entries = entries_from_tree(root, preserve_owner=True, preserve_mtime=True)
    assert_dir_nlink_matches_fs(root, entries)
    mine = cpio_bytes(entries)
    assert mine == gnu_cpio_archive(root, entries)
    assert len(mine) % 512 == 0


@needs_root
def test_default_mtime_matches_gnu_cpio_on_a_tree_with_that_mtime(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    make_sample_tree(root)
    set_mtimes(root, FIXED_MTIME)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(FIXED_MTIME))
    entries = entries_from_tree(root)  # mtime from SOURCE_DATE_EPOCH, owner root (we are root)
    assert all(e.mtime is None for e in entries)
    assert cpio_bytes(entries) == gnu_cpio_archive(root, entries)


@needs_root
def test_cpio_lists_and_extracts_what_was_written(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    make_sample_tree(root)
    entries = entries_from_tree(root, preserve_mtime=True)
    archive = cpio_bytes(entries)
    assert cpio_listing(archive) == [e.path for e in entries]

    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["cpio", "-i", "-d", "--quiet", "--preserve-modification-time", "--no-absolute-filenames"],
                   input=archive, cwd=out, check=True)
    for e in entries:
        src, dst = root / e.path, out / e.path
        s, d = os.lstat(src), os.lstat(dst)
        assert stat.S_IFMT(d.st_mode) == stat.S_IFMT(s.st_mode), e.path
        if e.kind is not EntryKind.SYMLINK:
            assert stat.S_IMODE(d.st_mode) == stat.S_IMODE(s.st_mode), e.path
        if e.kind is EntryKind.FILE:
            assert dst.read_bytes() == src.read_bytes(), e.path
            assert d.st_mtime == int(s.st_mtime), e.path  # cpio keeps whole seconds
        elif e.kind is EntryKind.SYMLINK:
            assert os.readlink(dst) == os.readlink(src), e.path
        elif e.kind in (EntryKind.CHAR_DEVICE, EntryKind.BLOCK_DEVICE):
            assert d.st_rdev == s.st_rdev, e.path


@needs_root
def test_reader_reads_gnu_cpio_archives_back(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    make_sample_tree(root)
    entries = entries_from_tree(root, preserve_owner=True, preserve_mtime=True)
    back = read_cpio(gnu_cpio_archive(root, entries))
    assert [e.path for e in back] == [e.path for e in entries]
    for mine, theirs in zip(entries, back, strict=True):
        assert (theirs.kind, theirs.mode, theirs.uid, theirs.gid, theirs.mtime) == (
            mine.kind, mine.mode, mine.uid, mine.gid, mine.mtime)
        assert (theirs.target, theirs.rdev_major, theirs.rdev_minor) == (
            mine.target, mine.rdev_major, mine.rdev_minor)
        if mine.kind is EntryKind.FILE:
            assert mine.source is not None
            assert theirs.data == mine.source.read_bytes()
    # Writing what was read reproduces GNU cpio's archive exactly (ino/nlink/dev kept).
    assert cpio_bytes(back) == gnu_cpio_archive(root, entries)


@pytest.mark.parametrize("name", ["tiny-initramfs-min.cpio", "tiny-initramfs.cpio", "tiny-initramfs.cpio.gz"])
def test_reader_lists_the_shared_test_initramfs_like_cpio(name: str) -> None:
    data = shared_kernel_file(name).read_bytes()
    raw = read_cpio(data)
    plain = data if not name.endswith(".gz") else __import__("gzip").decompress(data)
    listing = [line for line in cpio_listing(plain) if line != "."]  # the reader skips the root entry
    assert [e.path for e in raw] == listing
    init = next(e for e in raw if e.path == "init")
    assert init.kind is EntryKind.FILE and init.mode == 0o755 and init.data
    if name != "tiny-initramfs-min.cpio":
        assert init.data == shared_kernel_file("tiny-init.sh").read_bytes()
        sh = next(e for e in raw if e.path == "bin/sh")
        assert sh.kind is EntryKind.SYMLINK and sh.target == "busybox"


# -- property: random trees ------------------------------------------------------------------

NAME_CHARS = string.ascii_letters + string.digits + "._- é"
names = st.text(alphabet=NAME_CHARS, min_size=1, max_size=20).filter(lambda n: n not in (".", ".."))


@st.composite
def trees(draw: st.DrawFn, depth: int = 0) -> dict[str, object]:
    children = draw(st.dictionaries(names, st.none(), max_size=4 if depth < 2 else 0))
    tree: dict[str, object] = {}
    for name in children:
        kind = draw(st.sampled_from(["file", "link", "dir"] if depth < 2 else ["file", "link"]))
        if kind == "file":
            tree[name] = (draw(st.binary(max_size=70)), draw(st.sampled_from([0o600, 0o644, 0o755, 0o4711])))
        elif kind == "link":
            tree[name] = draw(st.text(alphabet=NAME_CHARS + "/", min_size=1, max_size=30))
        else:
            tree[name] = draw(trees(depth + 1))
    return tree


def materialise(root: Path, tree: dict[str, object]) -> None:
    for name, node in tree.items():
        path = root / name
        if isinstance(node, tuple):
            path.write_bytes(node[0])
            path.chmod(node[1])
        elif isinstance(node, str):
            path.symlink_to(node)
        else:
            assert isinstance(node, dict)
            path.mkdir()
            materialise(path, node)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees(), mtime=st.integers(0, 0xFFFF_FFFF))
def test_random_trees_match_gnu_cpio_and_read_back(tmp_path_factory: pytest.TempPathFactory,
                                                   tree: dict[str, object], mtime: int) -> None:
    root = tmp_path_factory.mktemp("tree")
    materialise(root, tree)
    set_mtimes(root, mtime)
    entries = entries_from_tree(root, preserve_owner=True, preserve_mtime=True)
    assert_dir_nlink_matches_fs(root, entries)
    mine = cpio_bytes(entries)
    assert mine == gnu_cpio_archive(root, entries)
    back = read_cpio(mine)
    def summary(es: list[Entry]) -> list[tuple[str, EntryKind, int, str]]:
        return [(e.path, e.kind, e.mode, e.target) for e in es]

    assert summary(back) == summary(entries)
    for e, b in zip(entries, back, strict=True):
        if e.kind is EntryKind.FILE:
            assert e.source is not None and b.data == e.source.read_bytes()
