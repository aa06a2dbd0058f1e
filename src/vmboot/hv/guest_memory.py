"""Guest RAM backed by one ``mmap``, with bounds-checked access by guest-physical address.

Both the memory-only VM and the KVM VM use this class: KVM registers the same
mapping with ``KVM_SET_USER_MEMORY_REGION``, so what the host writes here is
what the guest sees. The mapping is anonymous and private by default; ``shared=True``
backs it with a memfd mapped ``MAP_SHARED``, so another process (a vhost-user device
backend such as virtiofsd) can map the same pages from :attr:`GuestMemory.fd`; and
(:meth:`GuestMemory.from_file`, for a restored snapshot) it can be a private copy-on-write
mapping of a file: a page is read from the file when the guest first touches it, many
guests share the page cache, and their writes never reach the file.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Iterable
from pathlib import Path

from vmboot.errors import GuestMemoryError
from vmboot.hv.memory_map import MemoryRegion, ram_regions

_MADVISE_MIN = 256 << 10
"""Zeroing at least this many bytes drops pages with madvise instead of writing zeros."""


class GuestMemory:
    """Guest RAM: ``regions`` of guest-physical space mapped onto one host mapping."""

    def __init__(self, memory_bytes: int, shared: bool = False, *,
                 _file: tuple[int, int] | None = None) -> None:
        self.regions: tuple[MemoryRegion, ...] = ram_regions(memory_bytes)
        self._spans = tuple((r.gpa, r.end, r.offset) for r in self.regions)
        """The regions as plain (start, end, offset) numbers, for :meth:`offset_of`."""
        self.size = memory_bytes
        self._fd: int | None = None
        # MAP_NORESERVE: a 4 GiB guest costs nothing until its pages are touched.
        noreserve = getattr(mmap, "MAP_NORESERVE", 0)
        if shared and _file is not None:
            raise GuestMemoryError("guest memory: shared=True makes a memfd, and a snapshot's "
                                   "RAM is a private mapping of its file; use one or the other")
        self.file_backed = _file is not None
        """Pages come from a file (MADV_DONTNEED would bring back the file's bytes, not zeros)."""
        if shared:
            self._fd = os.memfd_create("vmboot-guest-ram", os.MFD_CLOEXEC)
            try:
                os.ftruncate(self._fd, memory_bytes)
                self._map: mmap.mmap | None = mmap.mmap(self._fd, memory_bytes,
                                                        flags=mmap.MAP_SHARED | noreserve)
            except BaseException:
                os.close(self._fd)
                raise
        elif _file is None:
            self._map = mmap.mmap(-1, memory_bytes,
                                  flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | noreserve)
        else:
            fd, offset = _file
            self._map = mmap.mmap(fd, memory_bytes, flags=mmap.MAP_PRIVATE | noreserve,
                                  offset=offset, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._view: memoryview | None = memoryview(self._map)

    @classmethod
    def from_file(cls, fd: int, offset: int, memory_bytes: int) -> GuestMemory:
        """RAM whose initial contents are ``memory_bytes`` of file ``fd`` from ``offset``.

        The mapping is MAP_PRIVATE: the guest's writes are its own (copy-on-write) and the
        file is never modified; ``fd`` may be read-only and may be closed afterwards.
        ``offset`` must be a multiple of :data:`mmap.ALLOCATIONGRANULARITY`.
        """
        if offset % mmap.ALLOCATIONGRANULARITY:
            raise GuestMemoryError(
                f"guest memory: file offset {offset:#x} is not a multiple of the mapping "
                f"granularity {mmap.ALLOCATIONGRANULARITY:#x}"
            )
        return cls(memory_bytes, _file=(fd, offset))

    @property
    def shared(self) -> bool:
        """True when the RAM is a memfd other processes can map (:attr:`fd`)."""
        return self._fd is not None

    @property
    def fd(self) -> int:
        """The memfd behind shared RAM (its offsets are the host offsets of :meth:`offset_of`)."""
        if self._fd is None:
            raise GuestMemoryError("guest memory: this RAM is private (made without shared=True), "
                                   "so no other process can map it")
        return self._fd

    @property
    def host_address(self) -> int:
        """This process's virtual address of the mapping's first byte."""
        anchor = ctypes.c_char.from_buffer(self.mapping)
        try:
            return ctypes.addressof(anchor)
        finally:
            del anchor  # release the buffer export so the mapping can be closed later

    # -- lifetime -----------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._map is None

    def close(self) -> None:
        """Unmap guest RAM. Views handed out earlier must have been released."""
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def mapping(self) -> mmap.mmap:
        """The host mapping (for registering with a hypervisor)."""
        if self._map is None:
            raise GuestMemoryError("guest memory: used after the VM was closed")
        return self._map

    def host_usage(self) -> dict[str, int]:
        """What the host spends on this mapping now, from ``/proc/self/smaps``, in bytes:
        ``Rss`` (pages present), ``Private_Dirty`` (pages written: this guest's own) and
        ``Shared_Clean`` / ``Private_Clean`` (file pages read, shared with the page cache)."""
        anchor = ctypes.c_char.from_buffer(self.mapping)
        try:
            start = f"{ctypes.addressof(anchor):x}-"
        finally:
            del anchor
        usage: dict[str, int] = {}
        inside = False
        for line in Path("/proc/self/smaps").read_text().splitlines():
            head = line.split(maxsplit=1)[0] if line else ""
            if "-" in head and not head.endswith(":"):
                if inside:
                    break
                inside = head.startswith(start)
            elif inside and head.endswith(":") and line.endswith(" kB"):
                usage[head[:-1]] = int(line.split()[1]) * 1024
        return usage

    # -- address translation ------------------------------------------------------------------
    def offset_of(self, gpa: int, length: int) -> int:
        """Host offset of guest-physical ``[gpa, gpa + length)``; raise if any byte is not RAM.

        Called for every ring and buffer access of every virtio request: the common case
        (plain integers inside a region) is checked first, in few operations."""
        if type(gpa) is int and type(length) is int and gpa >= 0 and length >= 0:
            for start, end, offset in self._spans:
                if start <= gpa and gpa + length <= end:
                    return offset + (gpa - start)
        return self._offset_checked(gpa, length)

    def _offset_checked(self, gpa: int, length: int) -> int:
        """:meth:`offset_of` for any argument: the error names what is wrong."""
        if not isinstance(gpa, int) or not isinstance(length, int):
            raise GuestMemoryError(
                f"guest memory: address and length must be integers, got {gpa!r}, {length!r}"
            )
        if length < 0:
            raise GuestMemoryError(f"guest memory: negative length {length} at {gpa:#x}")
        if gpa < 0:
            raise GuestMemoryError(f"guest memory: negative guest-physical address {gpa:#x}")
        for region in self.regions:
            if region.gpa <= gpa and gpa + length <= region.end:
                return region.offset + (gpa - region.gpa)
        valid = ", ".join(f"[{r.gpa:#x}, {r.end:#x})" for r in self.regions)
        raise GuestMemoryError(
            f"guest memory: [{gpa:#x}, {gpa + length:#x}) ({length} bytes) is not inside guest RAM;"
            f" RAM is {valid}"
        )

    def contains(self, gpa: int, length: int) -> bool:
        """True if every byte of ``[gpa, gpa + length)`` is guest RAM."""
        try:
            self.offset_of(gpa, length)
        except GuestMemoryError:
            return False
        return True

    # -- access -------------------------------------------------------------------------------
    def _mv(self) -> memoryview:
        if self._view is None:
            raise GuestMemoryError("guest memory: used after the VM was closed")
        return self._view

    def read(self, gpa: int, length: int) -> bytes:
        """Copy ``length`` bytes from guest-physical ``gpa``."""
        off = self.offset_of(gpa, length)
        return bytes(self._mv()[off : off + length])

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` to guest-physical ``gpa``; nothing is written unless all of it fits."""
        src = memoryview(data).cast("B")
        off = self.offset_of(gpa, src.nbytes)
        self._mv()[off : off + src.nbytes] = src

    def zero(self, gpa: int, length: int) -> None:
        """Zero ``length`` bytes at guest-physical ``gpa``.

        Whole pages are dropped with ``madvise(MADV_DONTNEED)``: the kernel gives a private
        anonymous mapping fresh zero pages on the next touch, so zeroing a large kernel's
        ``init_size`` costs no page faults and no memset (KVM follows through its MMU
        notifiers, as it does for QEMU's RAM discard). Shared RAM uses ``MADV_REMOVE``,
        which frees the memfd's pages themselves (DONTNEED would only unmap them).
        """
        off = self.offset_of(gpa, length)
        end = off + length
        mapping = self.mapping
        first_page = -(-off // mmap.PAGESIZE) * mmap.PAGESIZE
        last_page = end // mmap.PAGESIZE * mmap.PAGESIZE
        if (length >= _MADVISE_MIN and last_page > first_page and hasattr(mapping, "madvise")
                and not self.file_backed):
            self._fill_zero(off, first_page)
            advice = mmap.MADV_REMOVE if self._fd is not None else mmap.MADV_DONTNEED
            mapping.madvise(advice, first_page, last_page - first_page)
            self._fill_zero(last_page, end)
        else:
            self._fill_zero(off, end)

    def _fill_zero(self, start: int, end: int) -> None:
        mv = self._mv()
        chunk = 1 << 20
        pos = start
        while pos < end:
            n = min(chunk, end - pos)
            mv[pos : pos + n] = bytes(n)
            pos += n

    def view(self, gpa: int, length: int) -> memoryview:
        """A zero-copy, writable view of ``[gpa, gpa + length)``. Release it before closing."""
        off = self.offset_of(gpa, length)
        return self._mv()[off : off + length]

    def read_u64s(self, gpa: int, count: int) -> list[int]:
        """Read ``count`` little-endian 64-bit words (page-table entries, stack slots)."""
        raw = self.read(gpa, 8 * count)
        return list(memoryview(raw).cast("Q"))

    def ram_ranges(self) -> Iterable[tuple[int, int]]:
        """``(start, end)`` guest-physical pairs of RAM."""
        return [(r.gpa, r.end) for r in self.regions]
