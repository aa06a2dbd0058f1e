"""Initramfs images: a pure-Python newc cpio writer and reader, and compression the kernel
can unpack (the compressors are :mod:`vmboot.compression`). (The image ``vmboot exec``
boots is built in :mod:`vmboot.execute.image`.)

Modules:

- :mod:`~vmboot.initramfs.newc`: the wire header (:class:`NewcHeader`) and format limits;
- :mod:`~vmboot.initramfs.entry`: :class:`Entry` (one member) and guest-path rules;
- :mod:`~vmboot.initramfs.writer`: :func:`write_cpio` / :func:`cpio_bytes` and the
  reproducibility rules (order, mtime, inode numbers, nlink, device numbers);
- :mod:`~vmboot.initramfs.builders`: entries from a directory tree, from host→guest
  pairs, from memory; :func:`build_initramfs` with compression;
- :mod:`~vmboot.initramfs.reader`: :func:`read_cpio`, concatenated archives included.

Merging files into an existing initramfs needs no rewrite: the kernel unpacks
concatenated archives in order, a later member replacing an earlier one, so
``base + build_initramfs(extra)`` is a valid image.
"""

from __future__ import annotations

from vmboot.compression.compress import compress
from vmboot.compression.formats import COMPRESSIONS, Compression
from vmboot.compression.initramfs import decompress, detect_compression
from vmboot.initramfs.builders import (
    build_initramfs,
    complete_tree,
    entries_from_files,
    entries_from_memory,
    entries_from_tree,
    write_initramfs,
)
from vmboot.initramfs.entry import Entry, EntryKind, normalize_guest_path
from vmboot.initramfs.newc import NewcHeader
from vmboot.initramfs.reader import read_cpio
from vmboot.initramfs.writer import CpioWriter, cpio_bytes, default_mtime, write_cpio

__all__ = [
    "COMPRESSIONS",
    "Compression",
    "CpioWriter",
    "Entry",
    "EntryKind",
    "NewcHeader",
    "build_initramfs",
    "complete_tree",
    "compress",
    "cpio_bytes",
    "decompress",
    "default_mtime",
    "detect_compression",
    "entries_from_files",
    "entries_from_memory",
    "entries_from_tree",
    "normalize_guest_path",
    "read_cpio",
    "write_cpio",
    "write_initramfs",
]
