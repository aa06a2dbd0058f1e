"""Read newc cpio archives back into :class:`~vmboot.initramfs.entry.Entry` objects.

Like the kernel's ``init/initramfs.c``, the reader accepts several archives
concatenated, with NUL padding between them, and returns the members of all of them in
order (a name may then occur more than once; in the kernel the later one wins). A
compressed archive (gzip, LZ4 legacy, zstd) is decompressed first.

Entries named ``.`` (what ``find . | cpio -o`` writes first) describe the unpack root
itself, which an :class:`Entry` cannot name; they are skipped.
"""

from __future__ import annotations

import os

from vmboot.compression.initramfs import decompress, detect_compression
from vmboot.errors import InitramfsError
from vmboot.initramfs.entry import PERMISSION_BITS, Entry, EntryKind
from vmboot.initramfs.newc import HEADER_SIZE, TRAILER_NAME, NewcHeader, padding

ROOT_NAMES = (".", "./", "/")


def _member_at(buf: memoryview, offset: int) -> tuple[NewcHeader, str, memoryview, int]:
    """(header, name, body, offset of the next member) for the member at ``offset``."""
    header = NewcHeader.unpack(buf, offset)
    name_start = offset + HEADER_SIZE
    name_end = name_start + header.namesize
    body_start = name_end + padding(name_end - offset)
    body_end = body_start + header.filesize
    if header.namesize == 0 or body_end > len(buf):
        raise InitramfsError(
            f"cpio member at offset {offset}: namesize {header.namesize} / filesize {header.filesize} "
            f"run past the end of the archive ({len(buf)} bytes)"
        )
    raw_name = bytes(buf[name_start:name_end])
    if raw_name[-1:] != b"\0":
        raise InitramfsError(f"cpio member at offset {offset}: name {raw_name!r} is not NUL-terminated")
    name = os.fsdecode(raw_name[:-1])
    return header, name, buf[body_start:body_end], body_end + padding(body_end - offset)


def _entry(header: NewcHeader, name: str, body: memoryview, offset: int) -> Entry:
    kind = EntryKind.from_mode(header.mode, f"cpio member {name!r} at offset {offset}")
    data: bytes | None = None
    target = ""
    is_device = kind in (EntryKind.CHAR_DEVICE, EntryKind.BLOCK_DEVICE)
    if kind is EntryKind.FILE:
        data = bytes(body)
    elif kind is EntryKind.SYMLINK:
        raw = bytes(body)
        target = os.fsdecode(raw[:-1] if raw.endswith(b"\0") else raw)  # gen_init_cpio stores the NUL
    elif header.filesize:
        raise InitramfsError(
            f"cpio member {name!r} at offset {offset}: a {kind.name.lower()} with "
            f"{header.filesize} bytes of contents (valid: 0)"
        )
    return Entry(
        name, kind, header.mode & PERMISSION_BITS, header.uid, header.gid, header.mtime,
        data=data, target=target,
        rdev_major=header.rdevmajor if is_device else 0,
        rdev_minor=header.rdevminor if is_device else 0,
        ino=header.ino, nlink=header.nlink, dev_major=header.devmajor, dev_minor=header.devminor,
    )


def read_cpio(data: bytes | bytearray | memoryview) -> list[Entry]:
    """Every member of the (possibly concatenated, possibly compressed) newc archive ``data``."""
    if detect_compression(data) != "none":
        data = decompress(data)
    buf = memoryview(data)
    entries: list[Entry] = []
    offset = 0
    in_archive = False
    while offset < len(buf):
        if not in_archive:
            # Between archives: skip NUL padding, as the kernel does.
            while offset < len(buf) and buf[offset] == 0:
                offset += 1
            if offset == len(buf):
                break
        header, name, body, next_offset = _member_at(buf, offset)
        in_archive = True
        if name == TRAILER_NAME:
            in_archive = False
        elif name not in ROOT_NAMES:
            entries.append(_entry(header, name, body, offset))
        offset = next_offset
    if in_archive:
        raise InitramfsError(f"cpio archive ends at offset {len(buf)} without a {TRAILER_NAME} member")
    return entries
