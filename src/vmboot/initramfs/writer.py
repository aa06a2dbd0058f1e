"""Write entries as a newc cpio archive, byte for byte the way GNU cpio does.

Reproducibility rules (the same entries always give the same bytes):

- **order**: members are written in the order given. The builders
  (:mod:`vmboot.initramfs.builders`) sort depth-first, siblings by name bytes, so a
  directory always precedes its contents and input order does not matter.
- **mtime**: an entry's own ``mtime``, else the archive's ``mtime`` argument, else
  ``$SOURCE_DATE_EPOCH`` (decimal seconds), else 0. Never the wall clock.
- **ino**: an entry's own ``ino``, else its 0-based position in the archive. This is
  what ``cpio --reproducible`` (``--renumber-inodes``) writes when no file is
  hard-linked. Hard links are not written: every member is its own inode.
- **nlink**: an entry's own ``nlink``, else 1, except a directory's, which is 2 plus
  the number of its direct subdirectories in the archive (what ext4, tmpfs and overlayfs
  report, so ``cpio`` reading such a tree writes the same).
- **dev** (the filesystem's device number): the entry's ``dev_major``/``dev_minor``,
  0 by default, as ``--reproducible`` (``--ignore-devno``) writes.
- **uid/gid/mode**: as given; builders default to root:root.
- **symlinks** carry their target without a trailing NUL (GNU cpio; gen_init_cpio adds
  one; the kernel accepts both).
- **check** is 0; after ``TRAILER!!!`` the archive is padded with NULs to 512 bytes.

The kernel accepts several archives concatenated (each with its own trailer, NUL
padding allowed in between; it forgets hard-link inode numbers at each trailer), and a
later member replaces an earlier one of the same name. So adding files to an existing
initramfs needs no rewrite: append a second archive.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from vmboot.errors import InitramfsError
from vmboot.initramfs.entry import Entry, EntryKind, parent_of
from vmboot.initramfs.newc import (
    ARCHIVE_BLOCK,
    FIELD_MAX,
    TRAILER_HEADER,
    TRAILER_NAME,
    NewcHeader,
    padding,
)
from vmboot.units import MiB

SOURCE_DATE_EPOCH = "SOURCE_DATE_EPOCH"
COPY_CHUNK = MiB
"""Host files are copied into the archive this many bytes at a time."""
DIRECTORY_BASE_NLINK = 2
"""A directory's own name plus its ``.``; each subdirectory's ``..`` adds one."""


class ByteSink(Protocol):
    """Anything with ``write(bytes)``: a file, ``io.BytesIO``, a compressor."""

    def write(self, data: bytes, /) -> object: ...


def default_mtime(environ: Mapping[str, str] | None = None) -> int:
    """``$SOURCE_DATE_EPOCH`` if set (must be decimal seconds within 0..2**32-1), else 0."""
    env = os.environ if environ is None else environ
    text = env.get(SOURCE_DATE_EPOCH)
    if text is None or text == "":
        return 0
    if not text.isdigit() or int(text) > FIELD_MAX:
        raise InitramfsError(
            f"${SOURCE_DATE_EPOCH}={text!r} is not a usable timestamp "
            f"(valid: decimal seconds 0..{FIELD_MAX})"
        )
    return int(text)


class CpioWriter:
    """Write members one by one; :meth:`finish` adds the trailer and the block padding."""

    def __init__(self, out: ByteSink) -> None:
        self._out = out
        self.offset = 0
        """Bytes written so far."""

    def _put(self, data: bytes) -> None:
        if data:
            self._out.write(data)
            self.offset += len(data)

    def _pad(self) -> None:
        self._put(b"\0" * padding(self.offset))

    def write_member(self, header: NewcHeader, name: bytes, body: Iterable[bytes]) -> None:
        """One member; ``body`` must yield exactly ``header.filesize`` bytes."""
        if header.namesize != len(name) + 1:
            raise InitramfsError(f"cpio member {name!r}: namesize {header.namesize} != {len(name) + 1}")
        self._put(header.pack())
        self._put(name + b"\0")
        self._pad()
        written = 0
        for chunk in body:
            written += len(chunk)
            self._put(chunk)
        if written != header.filesize:
            raise InitramfsError(
                f"cpio member {os.fsdecode(name)!r}: wrote {written} bytes of contents, "
                f"but its header says {header.filesize} (did the host file change while archiving?)"
            )
        self._pad()

    def finish(self) -> None:
        """Write ``TRAILER!!!`` and pad the archive to a multiple of 512 bytes."""
        self.write_member(TRAILER_HEADER, TRAILER_NAME.encode(), ())
        self._put(b"\0" * (-self.offset % ARCHIVE_BLOCK))


def _body(entry: Entry) -> Iterator[bytes]:
    if entry.kind is EntryKind.SYMLINK:
        yield os.fsencode(entry.target)
    elif entry.data is not None:
        yield entry.data
    elif entry.source is not None:
        try:
            with open(entry.source, "rb") as f:
                remaining = entry.source_size
                while remaining > 0:
                    chunk = f.read(min(COPY_CHUNK, remaining))
                    if not chunk:
                        break
                    remaining -= len(chunk)
                    yield chunk
                if remaining == 0 and f.read(1):
                    raise InitramfsError(
                        f"cpio entry {entry.path!r}: host file {entry.source} grew past "
                        f"{entry.source_size} bytes while archiving"
                    )
        except OSError as e:
            raise InitramfsError(
                f"cpio entry {entry.path!r}: cannot read host file {entry.source}: {e.strerror}"
            ) from None


def check_unique(entries: Sequence[Entry]) -> None:
    """:class:`InitramfsError` naming the first guest path that occurs twice."""
    counts = Counter(e.path for e in entries)
    dups = sorted(p for p, n in counts.items() if n > 1)
    if dups:
        raise InitramfsError(
            f"cpio entry {dups[0]!r} occurs {counts[dups[0]]} times (valid: each guest path once)"
            + (f"; other duplicates: {dups[1:6]}" if len(dups) > 1 else "")
        )


def header_for(entry: Entry, *, ino: int, nlink: int, mtime: int) -> NewcHeader:
    """The header of ``entry`` with the given defaults for fields it leaves open."""
    return NewcHeader(
        ino=entry.ino if entry.ino is not None else ino,
        mode=entry.st_mode,
        uid=entry.uid,
        gid=entry.gid,
        nlink=entry.nlink if entry.nlink is not None else nlink,
        mtime=entry.mtime if entry.mtime is not None else mtime,
        filesize=entry.size,
        devmajor=entry.dev_major,
        devminor=entry.dev_minor,
        rdevmajor=entry.rdev_major,
        rdevminor=entry.rdev_minor,
        namesize=len(os.fsencode(entry.path)) + 1,
    )


def write_cpio(entries: Sequence[Entry], out: ByteSink, *, mtime: int | None = None) -> int:
    """Write ``entries`` (in this order) and the trailer to ``out``; returns the bytes written.

    Host files are streamed in :data:`COPY_CHUNK` pieces, so archives much larger than
    memory are fine when ``out`` is a file.
    """
    check_unique(entries)
    archive_mtime = default_mtime() if mtime is None else mtime
    subdirs = Counter(parent_of(e.path) for e in entries if e.kind is EntryKind.DIRECTORY)
    writer = CpioWriter(out)
    for index, entry in enumerate(entries):
        nlink = DIRECTORY_BASE_NLINK + subdirs[entry.path] if entry.kind is EntryKind.DIRECTORY else 1
        header = header_for(entry, ino=index, nlink=nlink, mtime=archive_mtime)
        writer.write_member(header, os.fsencode(entry.path), _body(entry))
    writer.finish()
    return writer.offset


def cpio_bytes(entries: Sequence[Entry], *, mtime: int | None = None) -> bytes:
    """The archive :func:`write_cpio` would write, as bytes."""
    chunks: list[bytes] = []

    class _Collect:
        def write(self, data: bytes, /) -> int:
            chunks.append(data)
            return len(data)

    write_cpio(entries, _Collect(), mtime=mtime)
    return b"".join(chunks)
