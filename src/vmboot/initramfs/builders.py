"""Make entry lists from a host directory tree, from (host path, guest path) pairs, or from
memory, and write them as a (compressed) initramfs.

Every builder returns a *complete, sorted* list (see :func:`complete_tree`): missing
parent directories are added (mode 0755, root:root), each guest path occurs once, and
the order is depth-first with siblings sorted by name bytes. So the same set of inputs
gives the same archive whatever order it came in.

Ownership defaults to root:root and mtimes to the archive's default (0 or
``$SOURCE_DATE_EPOCH``); ``preserve_owner`` / ``preserve_mtime`` keep the host's.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from vmboot.compression.compress import open_compressor
from vmboot.errors import InitramfsError
from vmboot.initramfs.entry import (
    DEFAULT_DIR_MODE,
    DEFAULT_FILE_MODE,
    Entry,
    EntryKind,
    normalize_guest_path,
    parent_of,
    sort_key,
)
from vmboot.initramfs.newc import FIELD_MAX
from vmboot.initramfs.writer import ByteSink, check_unique, write_cpio

HostPath = str | os.PathLike[str]


def complete_tree(entries: Iterable[Entry], *, dir_mode: int = DEFAULT_DIR_MODE) -> list[Entry]:
    """``entries`` plus their missing parent directories, checked and sorted depth-first.

    Raises :class:`InitramfsError` for a guest path given twice, or for an entry whose
    parent is given as something other than a directory.
    """
    given = list(entries)
    check_unique(given)
    by_path = {e.path: e for e in given}
    added: dict[str, Entry] = {}
    for entry in given:
        parent = parent_of(entry.path)
        while parent and parent not in added:
            existing = by_path.get(parent)
            if existing is not None:
                if existing.kind is not EntryKind.DIRECTORY:
                    raise InitramfsError(
                        f"cpio entry {entry.path!r}: its parent {parent!r} is a "
                        f"{existing.kind.name.lower()} (valid: a directory)"
                    )
                break
            added[parent] = Entry.directory(parent, dir_mode)
            parent = parent_of(parent)
    return sorted([*given, *added.values()], key=lambda e: sort_key(e.path))


def _mtime_of(st: os.stat_result, where: str) -> int:
    mtime = int(st.st_mtime)
    if not 0 <= mtime <= FIELD_MAX:
        raise InitramfsError(f"{where}: mtime {mtime} does not fit in a newc header (valid: 0..{FIELD_MAX})")
    return mtime


def _entry_for(host: Path, guest: str, st: os.stat_result, *, preserve_owner: bool,
               preserve_mtime: bool) -> Entry | None:
    where = f"host file {host}"
    uid, gid = (st.st_uid, st.st_gid) if preserve_owner else (0, 0)
    mtime = _mtime_of(st, where) if preserve_mtime else None
    perms = stat.S_IMODE(st.st_mode)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return Entry(guest, EntryKind.FILE, perms, uid, gid, mtime=mtime, source=host, source_size=st.st_size)
    if stat.S_ISDIR(mode):
        return Entry(guest, EntryKind.DIRECTORY, perms, uid, gid, mtime=mtime)
    if stat.S_ISLNK(mode):
        return Entry(guest, EntryKind.SYMLINK, perms, uid, gid, mtime=mtime, target=os.readlink(host))
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = EntryKind.CHAR_DEVICE if stat.S_ISCHR(mode) else EntryKind.BLOCK_DEVICE
        return Entry(guest, kind, perms, uid, gid, mtime=mtime,
                     rdev_major=os.major(st.st_rdev), rdev_minor=os.minor(st.st_rdev))
    if stat.S_ISFIFO(mode):
        return Entry(guest, EntryKind.FIFO, perms, uid, gid, mtime=mtime)
    if stat.S_ISSOCK(mode):
        return Entry(guest, EntryKind.SOCKET, perms, uid, gid, mtime=mtime)
    return None


def _walk(root: Path, prefix: str, out: list[Entry], *, preserve_owner: bool, preserve_mtime: bool) -> None:
    try:
        children = sorted(os.scandir(root), key=lambda d: os.fsencode(d.name))
    except OSError as e:
        raise InitramfsError(f"host directory {root}: cannot list it: {e.strerror}") from None
    for child in children:
        host = Path(child.path)
        guest = f"{prefix}/{child.name}" if prefix else child.name
        st = child.stat(follow_symlinks=False)
        entry = _entry_for(host, guest, st, preserve_owner=preserve_owner, preserve_mtime=preserve_mtime)
        if entry is None:
            continue
        out.append(entry)
        if entry.kind is EntryKind.DIRECTORY:
            _walk(host, guest, out, preserve_owner=preserve_owner, preserve_mtime=preserve_mtime)


def entries_from_tree(root: HostPath, prefix: str = "", *, preserve_owner: bool = False,
                      preserve_mtime: bool = False) -> list[Entry]:
    """Everything below the host directory ``root``, placed under guest directory ``prefix``.

    Symlinks are archived as symlinks (never followed); device nodes, FIFOs and sockets
    as themselves. Hard links become independent copies. ``root`` itself becomes
    ``prefix``'s entry (with ``root``'s mode) unless ``prefix`` is the archive root.
    """
    top = Path(root)
    try:
        st = top.stat()
    except OSError as e:
        raise InitramfsError(f"host directory {top}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InitramfsError(f"host path {top} is not a directory (valid: a directory to archive)")
    guest_prefix = normalize_guest_path(prefix) if prefix.strip("/.") else ""
    out: list[Entry] = []
    if guest_prefix:
        top_entry = _entry_for(top, guest_prefix, st, preserve_owner=preserve_owner,
                               preserve_mtime=preserve_mtime)
        assert top_entry is not None  # a directory always has an entry
        out.append(top_entry)
    _walk(top, guest_prefix, out, preserve_owner=preserve_owner, preserve_mtime=preserve_mtime)
    return complete_tree(out)


def entries_from_files(pairs: Iterable[tuple[HostPath, str]], *, preserve_owner: bool = False,
                       preserve_mtime: bool = False) -> list[Entry]:
    """Each host path at its guest path; a host directory brings its whole tree.

    A host symlink given directly is followed (its target's contents are copied); links
    inside a directory tree stay links.
    """
    out: list[Entry] = []
    for host, guest in pairs:
        path = Path(host)
        try:
            st = path.stat()
        except OSError as e:
            raise InitramfsError(f"host file {path} (for guest {guest!r}): {e.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            out.extend(entries_from_tree(path, guest, preserve_owner=preserve_owner,
                                         preserve_mtime=preserve_mtime))
            continue
        entry = _entry_for(path, guest, st, preserve_owner=preserve_owner, preserve_mtime=preserve_mtime)
        if entry is None:
            raise InitramfsError(f"host file {path} (for guest {guest!r}) has an unknown file type")
        out.append(entry)
    return complete_tree(_dedupe_dirs(out))


def _dedupe_dirs(entries: Sequence[Entry]) -> list[Entry]:
    """Keep the first of identical directory entries (two trees sharing a parent prefix)."""
    seen: set[str] = set()
    out: list[Entry] = []
    for e in entries:
        if e.kind is EntryKind.DIRECTORY and e.path in seen:
            continue
        seen.add(e.path)
        out.append(e)
    return out


def entries_from_memory(files: Mapping[str, bytes | str], mode: int = DEFAULT_FILE_MODE) -> list[Entry]:
    """A regular file per guest path with the given contents (``str`` is written as UTF-8)."""
    return complete_tree(
        Entry.file(path, data.encode() if isinstance(data, str) else data, mode)
        for path, data in files.items()
    )


def write_initramfs(entries: Sequence[Entry], out: ByteSink, *, compression: str = "none",
                    mtime: int | None = None) -> None:
    """Write ``entries`` as a newc archive, compressed with ``compression``, into ``out``."""
    comp = open_compressor(compression, out)
    write_cpio(entries, comp, mtime=mtime)
    comp.close()


def build_initramfs(entries: Sequence[Entry], *, compression: str = "none",
                    mtime: int | None = None) -> bytes:
    """:func:`write_initramfs` into memory."""
    out = io.BytesIO()
    write_initramfs(entries, out, compression=compression, mtime=mtime)
    return out.getvalue()
