"""The snapshot file: a header, a JSON manifest with all saved state, then guest memory.

::

    offset 0               header (:data:`HEADER`, 80 bytes, little-endian)
                             magic "VMBOOTSN", format version, flags (0),
                             manifest offset and length, memory offset and length,
                             SHA-256 of the header's other fields and the manifest
    offset 80              manifest: UTF-8 JSON (boot facts, host facts, vCPU, VM and
                             device state); see :mod:`vmboot.snapshot.manifest`
    memory offset          guest RAM, byte for byte as the guest's memory mapping
                             (page-aligned, so it can be mmapped; zero pages are holes)

The checksum covers the state, not the memory: checking it costs microseconds, and a
restore never has to read pages the guest does not touch.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmboot.errors import SnapshotError, SnapshotFormatError
from vmboot.hv.guest_memory import GuestMemory

MAGIC = b"VMBOOTSN"
FORMAT_VERSION = 1
"""Bumped whenever the layout or the manifest's meaning changes; other versions are refused."""
HEADER = struct.Struct("<8sIIQQQQ32s")
"""magic, version, flags, manifest offset, manifest length, memory offset, memory length, sha256."""
HEADER_FIELDS = struct.Struct("<8sIIQQQQ")
MEMORY_ALIGNMENT = max(mmap.ALLOCATIONGRANULARITY, mmap.PAGESIZE)
"""Guest memory starts at a multiple of this in the file, so it can be mmapped."""
MAX_MANIFEST_BYTES = 64 << 20
"""A manifest larger than this is refused as damaged (real ones are tens of KiB)."""
_SCAN_CHUNK = 2 << 20


def _align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def state_checksum(fields: bytes, manifest: bytes) -> bytes:
    h = hashlib.sha256(fields)
    h.update(manifest)
    return h.digest()


def write_snapshot_file(path: str | os.PathLike[str], manifest: dict[str, Any],
                        memory: GuestMemory) -> int:
    """Write ``manifest`` and ``memory`` to ``path`` (atomically: a new file renamed over it).

    Zero pages are not written (the file is sparse). Returns the bytes of memory written.
    """
    body = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
    memory_offset = _align_up(HEADER.size + len(body), MEMORY_ALIGNMENT)
    fields = HEADER_FIELDS.pack(MAGIC, FORMAT_VERSION, 0, HEADER.size, len(body),
                                 memory_offset, memory.size)
    header = fields + state_checksum(fields, body)
    import tempfile  # only a save needs it, and a restore is timed from process start

    target = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                        dir=target.parent)
    except OSError as e:
        raise SnapshotError(f"snapshot {target}: cannot create it: {e.strerror}") from None
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o644)
        os.pwrite(fd, header + body, 0)
        written = _write_memory(fd, memory, memory_offset)
        os.ftruncate(fd, memory_offset + memory.size)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, target)
    except OSError as e:
        raise SnapshotError(f"snapshot {target}: writing failed: {e.strerror}; nothing was "
                            "replaced") from None
    finally:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
    return written


def _write_memory(fd: int, memory: GuestMemory, file_offset: int) -> int:
    """Copy the non-zero pages of ``memory`` to ``fd`` at ``file_offset`` + their offset."""
    page = mmap.PAGESIZE
    zero_chunk = bytes(_SCAN_CHUNK)
    zero_page = bytes(page)
    view = memoryview(memory.mapping)
    written = 0
    try:
        for start in range(0, memory.size, _SCAN_CHUNK):
            chunk = view[start : start + _SCAN_CHUNK]
            if chunk == zero_chunk[: len(chunk)]:
                continue
            run_start: int | None = None
            for off in range(0, len(chunk) + page, page):
                nonzero = off < len(chunk) and chunk[off : off + page] != zero_page
                if nonzero and run_start is None:
                    run_start = off
                elif not nonzero and run_start is not None:
                    data = chunk[run_start:off]
                    os.pwrite(fd, data, file_offset + start + run_start)
                    written += len(data)
                    run_start = None
    finally:
        view.release()
    return written


@dataclass
class SnapshotFile:
    """An opened, checked snapshot: its manifest, and an fd to map its memory from."""

    path: Path
    fd: int
    manifest: dict[str, Any]
    memory_offset: int
    memory_length: int

    def map_memory(self) -> GuestMemory:
        """The guest's RAM, mapped privately (copy-on-write) from the file."""
        return GuestMemory.from_file(self.fd, self.memory_offset, self.memory_length)

    def copy_memory_shared(self) -> GuestMemory:
        """The guest's RAM in a new memfd (``GuestMemory(shared=True)``), for a machine whose
        RAM another process maps (virtiofsd): a private mapping of the file would hide the
        guest's writes from it. Only the file's data extents are copied (zero pages are
        holes, and stay unallocated)."""
        memory = GuestMemory(self.memory_length, shared=True)
        try:
            end = self.memory_offset + self.memory_length
            at = self.memory_offset
            while at < end:
                try:
                    data = os.lseek(self.fd, at, os.SEEK_DATA)
                except OSError:  # ENXIO: no data after ``at``
                    break
                if data >= end:
                    break
                hole = min(os.lseek(self.fd, data, os.SEEK_HOLE), end)
                _copy_range(self.fd, data, memory, data - self.memory_offset, hole - data)
                at = hole
        except BaseException:
            memory.close()
            raise
        return memory

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> SnapshotFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


COPY_CHUNK = 16 << 20
"""Bytes read from the file at a time when guest memory is copied into a memfd."""


def _copy_range(src: int, src_offset: int, memory: GuestMemory, dst_offset: int,
                count: int) -> None:
    """``count`` bytes of file ``src`` from ``src_offset`` into ``memory``'s mapping at
    ``dst_offset`` (read straight into the mapping)."""
    view = memoryview(memory.mapping)
    try:
        while count:
            n = os.preadv(src, [view[dst_offset:dst_offset + min(count, COPY_CHUNK)]], src_offset)
            if n <= 0:
                raise SnapshotFormatError(f"snapshot: guest memory ends early, at file offset "
                                          f"{src_offset}: the file is truncated")
            src_offset, dst_offset, count = src_offset + n, dst_offset + n, count - n
    finally:
        view.release()


def open_snapshot(path: str | os.PathLike[str]) -> SnapshotFile:
    """Open ``path`` read-only and check its header, sizes and checksum; parse the manifest.

    Raises :class:`SnapshotFormatError` saying what is wrong: not a snapshot, another
    format version, truncated, or a state that does not match its checksum.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SnapshotFormatError(f"snapshot {p}: cannot open: {e.strerror}") from None
    try:
        return _check(p, fd)
    except BaseException:
        os.close(fd)
        raise


def _check(p: Path, fd: int) -> SnapshotFile:
    size = os.fstat(fd).st_size
    raw = os.pread(fd, HEADER.size, 0)
    if len(raw) < HEADER.size:
        raise SnapshotFormatError(f"snapshot {p}: {size} bytes, shorter than the {HEADER.size}-byte "
                                  "header: truncated or not a vmboot snapshot")
    magic, version, flags, m_off, m_len, mem_off, mem_len, digest = HEADER.unpack(raw)
    if magic != MAGIC:
        raise SnapshotFormatError(f"snapshot {p}: magic {magic!r} is not {MAGIC!r}: not a vmboot "
                                  "snapshot")
    if version != FORMAT_VERSION:
        raise SnapshotFormatError(
            f"snapshot {p}: format version {version}; this vmboot reads version "
            f"{FORMAT_VERSION} only: take the snapshot again with this vmboot"
        )
    if flags != 0:
        raise SnapshotFormatError(f"snapshot {p}: header flags {flags:#x}; none are defined")
    if m_off != HEADER.size or not 0 < m_len <= MAX_MANIFEST_BYTES:
        raise SnapshotFormatError(f"snapshot {p}: manifest at {m_off} length {m_len} is not at "
                                  f"{HEADER.size} with 1..{MAX_MANIFEST_BYTES} bytes: damaged")
    if mem_off % MEMORY_ALIGNMENT or mem_off < m_off + m_len:
        raise SnapshotFormatError(f"snapshot {p}: memory offset {mem_off:#x} is not page-aligned "
                                  "after the manifest: damaged")
    if size < mem_off + mem_len:
        raise SnapshotFormatError(
            f"snapshot {p}: {size} bytes, but the header says guest memory ends at "
            f"{mem_off + mem_len}: the file is truncated"
        )
    body = os.pread(fd, m_len, m_off)
    if state_checksum(raw[: HEADER_FIELDS.size], body) != digest:
        raise SnapshotFormatError(
            f"snapshot {p}: the header and manifest do not match their SHA-256 checksum: the "
            "file is corrupted; take the snapshot again"
        )
    try:
        manifest = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SnapshotFormatError(f"snapshot {p}: the manifest is not JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise SnapshotFormatError(f"snapshot {p}: the manifest is not a JSON object")
    return SnapshotFile(p, fd, manifest, mem_off, mem_len)
