"""What a virtio-blk device reads and writes: a raw image file, or a throwaway overlay on one.

:class:`RawImage` is the file itself (read-only or read-write). :class:`ThrowawayImage`
reads the file but keeps every write in a private, unlinked temporary file (QEMU's
``snapshot=on``): a bitmap of sectors says which ones were written, and the image file is
opened read-only, so it is never modified.
"""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile
from pathlib import Path

from vmboot.devices.virtio.spec import SECTOR_SIZE
from vmboot.errors import BootConfigError

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_ZERO_CHUNK = 1 << 20
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long)
_libc.fallocate.restype = ctypes.c_int


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate ``[offset, offset + length)`` of a file (reads then return zeros).
    False when the file system does not support it."""
    if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS):
        return False
    raise OSError(err, os.strerror(err))


class RawImage:
    """A raw disk image file; ``size`` is its length rounded down to whole sectors."""

    def __init__(self, path: str | Path, read_only: bool) -> None:
        self.path = Path(path)
        self.read_only = read_only
        try:
            self.fd = os.open(self.path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as e:
            raise BootConfigError(f"disk {str(path)!r}: cannot open it "
                                  f"{'read-only' if read_only else 'read-write'}: {e.strerror}"
                                  + ("" if read_only else "; add ',ro' to use it read-only")) from None
        size = os.fstat(self.fd).st_size
        if size < SECTOR_SIZE:
            os.close(self.fd)
            raise BootConfigError(f"disk {str(path)!r}: {size} bytes is smaller than one "
                                  f"{SECTOR_SIZE}-byte sector")
        self.size = size - size % SECTOR_SIZE
        self.can_discard = not read_only

    def readv(self, buffers: list[memoryview], offset: int) -> int:
        return os.preadv(self.fd, buffers, offset)

    def writev(self, buffers: list[memoryview], offset: int) -> int:
        return os.pwritev(self.fd, buffers, offset)

    def flush(self) -> None:
        if not self.read_only:
            os.fsync(self.fd)

    def write_zeroes(self, offset: int, length: int, unmap: bool) -> None:
        if unmap and self.can_discard and punch_hole(self.fd, offset, length):
            return
        zeros = bytes(min(length, _ZERO_CHUNK))
        while length > 0:
            n = min(length, len(zeros))
            os.pwrite(self.fd, zeros[:n], offset)
            offset += n
            length -= n

    def discard(self, offset: int, length: int) -> bool:
        if not self.can_discard:
            return False
        self.can_discard = punch_hole(self.fd, offset, length)
        return self.can_discard

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def identity(self) -> dict[str, int]:
        """What says the image file is still the one it was: device, inode, size and
        modification time (a snapshot records it; a restore refuses a file that differs)."""
        st = os.fstat(self.fd)
        return {"device": st.st_dev, "inode": st.st_ino, "size": st.st_size,
                "mtime_ns": st.st_mtime_ns}


class ThrowawayImage(RawImage):
    """Reads from the image file, writes to a private overlay that vanishes with the VM."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, read_only=True)
        self.read_only = False
        self.can_discard = True
        fd, name = tempfile.mkstemp(prefix="vmboot-throwaway-")
        os.unlink(name)
        self.overlay = fd
        os.ftruncate(fd, self.size)
        self.written = bytearray(-(-self.size // SECTOR_SIZE // 8) or 1)
        """One bit a sector: set when the sector lives in the overlay."""

    def _is_written(self, sector: int) -> bool:
        return bool(self.written[sector >> 3] >> (sector & 7) & 1)

    def _mark(self, offset: int, length: int) -> None:
        for sector in range(offset // SECTOR_SIZE, -(-(offset + length) // SECTOR_SIZE)):
            self.written[sector >> 3] |= 1 << (sector & 7)

    def readv(self, buffers: list[memoryview], offset: int) -> int:
        total = sum(b.nbytes for b in buffers)
        data = bytearray(total)
        got = os.preadv(self.fd, [memoryview(data)], offset)
        first, last = offset // SECTOR_SIZE, (offset + total) // SECTOR_SIZE
        sector = first
        while sector < last:
            if not self._is_written(sector):
                sector += 1
                continue
            run = sector
            while run < last and self._is_written(run):
                run += 1
            start, end = sector * SECTOR_SIZE - offset, run * SECTOR_SIZE - offset
            data[start:end] = os.pread(self.overlay, end - start, sector * SECTOR_SIZE)
            sector = run
        done = 0
        for b in buffers:
            b[:] = data[done:done + b.nbytes]
            done += b.nbytes
        return got

    def writev(self, buffers: list[memoryview], offset: int) -> int:
        n = os.pwritev(self.overlay, buffers, offset)
        self._mark(offset, n)
        return n

    def flush(self) -> None:
        """Nothing to make durable: the overlay dies with the VM."""

    def write_zeroes(self, offset: int, length: int, unmap: bool) -> None:
        self.writev([memoryview(bytes(length))], offset)

    def overlay_runs(self) -> list[tuple[int, bytes]]:
        """The written sectors, as (first sector, contents) of each run of them."""
        runs: list[tuple[int, bytes]] = []
        sectors = self.size // SECTOR_SIZE
        sector = 0
        while sector < sectors:
            if not self.written[sector >> 3]:
                sector = (sector | 7) + 1
                continue
            if not self._is_written(sector):
                sector += 1
                continue
            end = sector
            while end < sectors and self._is_written(end):
                end += 1
            runs.append((sector, os.pread(self.overlay, (end - sector) * SECTOR_SIZE,
                                          sector * SECTOR_SIZE)))
            sector = end
        return runs

    def load_overlay(self, runs: list[tuple[int, bytes]]) -> None:
        """Replace the overlay with ``runs`` (from :meth:`overlay_runs`), checked first."""
        sectors = self.size // SECTOR_SIZE
        for sector, data in runs:
            if len(data) % SECTOR_SIZE or not 0 <= sector <= sectors - len(data) // SECTOR_SIZE:
                raise BootConfigError(f"throwaway disk {str(self.path)!r}: a saved run of "
                                      f"{len(data)} bytes at sector {sector} does not fit the "
                                      f"{sectors}-sector disk in whole sectors")
        os.ftruncate(self.overlay, 0)
        os.ftruncate(self.overlay, self.size)
        self.written = bytearray(len(self.written))
        for sector, data in runs:
            os.pwrite(self.overlay, data, sector * SECTOR_SIZE)
            self._mark(sector * SECTOR_SIZE, len(data))

    def discard(self, offset: int, length: int) -> bool:
        self.write_zeroes(offset, length, True)
        return True

    def close(self) -> None:
        super().close()
        if self.overlay >= 0:
            os.close(self.overlay)
            self.overlay = -1
