"""virtio-blk (virtio 1.2 section 5.2) backed by a raw image file.

Requests are served on the I/O thread straight between the file and guest RAM
(``preadv``/``pwritev`` into views of the guest's buffers). Offered: ``FLUSH`` (fsync),
``RO``, ``SEG_MAX``/``SIZE_MAX``, ``BLK_SIZE``, ``GET_ID`` (the disk's serial), and, on a
writable disk, ``DISCARD`` (hole punching when the host file system can) and
``WRITE_ZEROES``. A request that is malformed, out of range, or writes a read-only disk
completes with ``VIRTIO_BLK_S_IOERR`` (or ``UNSUPP`` for an unknown type); only a broken
ring or chain makes the device need a reset.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from vmboot.devices.virtio import spec
from vmboot.devices.virtio.device import VirtioDevice
from vmboot.devices.virtio.disk_image import RawImage, ThrowawayImage
from vmboot.devices.virtio.queue import DescriptorChain, QueueError, gather, scatter, views
from vmboot.errors import BootConfigError, DeviceStateError, SnapshotMismatchError

log = logging.getLogger("vmboot.devices.virtio")

QUEUE_SIZE = 256
SEG_MAX = QUEUE_SIZE - 2
"""Data segments a request may have (the chain also holds the header and the status)."""
SIZE_MAX = 1 << 20
"""Largest data segment, in bytes."""
MAX_DISCARD_SECTORS = (32 << 20) // spec.SECTOR_SIZE
MAX_DISCARD_SEGMENTS = 1
SERIAL_MAX = spec.BLK_ID_BYTES
MAX_SAVED_OVERLAY = 16 << 20
"""Bytes of a throwaway disk's overlay a snapshot holds (in its manifest)."""
_HEADER = struct.Struct("<IIQ")
_DISCARD = struct.Struct("<QII")


@dataclass(frozen=True)
class Disk:
    """A disk for a guest: a raw image ``path``; ``read_only``; ``throwaway`` (writes go to a
    private overlay, the file is never modified); ``serial`` (what GET_ID returns, at most
    20 bytes)."""

    path: str | Path
    read_only: bool = False
    throwaway: bool = False
    serial: str | None = None

    def __post_init__(self) -> None:
        if self.serial is not None:
            raw = self.serial.encode()
            if len(raw) > SERIAL_MAX or b"\0" in raw:
                raise BootConfigError(f"disk {str(self.path)!r}: serial {self.serial!r} is "
                                      f"{len(raw)} bytes; at most {SERIAL_MAX}, without NUL")
        if self.read_only and self.throwaway:
            raise BootConfigError(f"disk {str(self.path)!r}: read-only and throwaway together; "
                                  "choose one (throwaway already leaves the file unchanged)")

    @classmethod
    def parse(cls, text: str) -> Disk:
        """``PATH[,ro][,throwaway][,serial=ID]`` (the ``--disk`` syntax)."""
        path, *options = text.split(",")
        if not path:
            raise BootConfigError(f"--disk {text!r}: no path before the options; expected "
                                  "PATH[,ro][,throwaway][,serial=ID]")
        ro = throwaway = False
        serial = None
        for opt in options:
            if opt == "ro":
                ro = True
            elif opt == "throwaway":
                throwaway = True
            elif opt.startswith("serial="):
                serial = opt[len("serial="):]
            else:
                raise BootConfigError(f"--disk {text!r}: unknown option {opt!r}; expected ro, "
                                      "throwaway or serial=ID")
        return cls(path, read_only=ro, throwaway=throwaway, serial=serial)

    def open(self) -> RawImage:
        return ThrowawayImage(self.path) if self.throwaway else RawImage(self.path, self.read_only)


class BlockDevice(VirtioDevice):
    device_id: ClassVar[spec.DeviceId] = spec.DeviceId.BLOCK
    name: ClassVar[str] = "block"

    def __init__(self, disk: Disk) -> None:
        self.disk = disk
        self.image = disk.open()
        features = ((1 << spec.BLK_F_FLUSH) | (1 << spec.BLK_F_SEG_MAX)
                    | (1 << spec.BLK_F_SIZE_MAX) | (1 << spec.BLK_F_BLK_SIZE))
        if disk.read_only:
            features |= 1 << spec.BLK_F_RO
        else:
            features |= (1 << spec.BLK_F_DISCARD) | (1 << spec.BLK_F_WRITE_ZEROES)
        super().__init__((QUEUE_SIZE,), features)
        self.serial = (disk.serial or "").encode()
        self.errors = 0
        """Requests completed with an error status."""

    @property
    def capacity(self) -> int:
        """Size in 512-byte sectors."""
        return self.image.size // spec.SECTOR_SIZE

    def config_bytes(self) -> bytes:
        return struct.pack(
            "<QII4xI8xBxHIIIIIB3x",
            self.capacity, SIZE_MAX, SEG_MAX, spec.SECTOR_SIZE,
            0, 1,  # writeback, num_queues
            MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS, 1,
            MAX_DISCARD_SECTORS, 1, 1,
        )

    def close(self) -> None:
        self.image.close()

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.disk.path), "read_only": self.disk.read_only,
                "throwaway": self.disk.throwaway, "serial": self.disk.serial,
                "capacity_sectors": self.capacity, "errors": self.errors}

    # -- requests ---------------------------------------------------------------------------
    def process_queue(self, index: int) -> bool:
        return self.serve_each(index, self._serve)

    def _serve(self, chain: DescriptorChain) -> int:
        """Do one request; the bytes written into the chain (data and the status byte)."""
        memory = self.memory
        assert memory is not None
        if not chain.writable or chain.writable[-1].length < 1:
            raise QueueError(f"virtio-blk: request {chain.head} has no device-writable status byte")
        status_buf = chain.writable[-1]
        status_address = status_buf.address + status_buf.length - 1
        data_in = list(chain.writable)
        last = data_in[-1]
        data_in[-1] = type(last)(last.address, last.length - 1)
        header = gather(memory, chain.readable, _HEADER.size)
        if len(header) < _HEADER.size:
            raise QueueError(f"virtio-blk: request {chain.head} has a {len(header)}-byte header; "
                             f"{_HEADER.size} expected")
        kind, _, sector = _HEADER.unpack(header)
        data_out = _skip(chain, _HEADER.size)
        try:
            status, length = self._execute(kind, sector, data_out, data_in)
        except OSError as e:
            log.warning("virtio-blk %s: request type %d at sector %d failed: %s",
                        self.disk.path, kind, sector, e.strerror)
            status, length = spec.BLK_S_IOERR, 0
        if status != spec.BLK_S_OK:
            self.errors += 1
        memory.write(status_address, bytes([status]))
        return length + 1

    def _in_range(self, sector: int, length: int) -> bool:
        return length % spec.SECTOR_SIZE == 0 and sector * spec.SECTOR_SIZE + length <= self.image.size

    def _execute(self, kind: int, sector: int, data_out: list[Any], data_in: list[Any]) -> tuple[int, int]:
        memory = self.memory
        assert memory is not None
        if kind == spec.BLK_T_IN:
            length = sum(b.length for b in data_in)
            if not self._in_range(sector, length) or data_out:
                return spec.BLK_S_IOERR, 0
            bufs = views(memory, data_in)
            try:
                got = self.image.readv(bufs, sector * spec.SECTOR_SIZE)
            finally:
                for v in bufs:
                    v.release()
            return (spec.BLK_S_OK if got == length else spec.BLK_S_IOERR), got
        if kind == spec.BLK_T_OUT:
            length = sum(b.length for b in data_out)
            if self.disk.read_only or not self._in_range(sector, length) or any(
                    b.length for b in data_in):
                return spec.BLK_S_IOERR, 0
            bufs = views(memory, data_out)
            try:
                put = self.image.writev(bufs, sector * spec.SECTOR_SIZE)
            finally:
                for v in bufs:
                    v.release()
            return (spec.BLK_S_OK if put == length else spec.BLK_S_IOERR), 0
        if kind == spec.BLK_T_FLUSH:
            self.image.flush()
            return spec.BLK_S_OK, 0
        if kind == spec.BLK_T_GET_ID:
            room = sum(b.length for b in data_in)
            if room < 1:
                return spec.BLK_S_IOERR, 0
            data = self.serial.ljust(spec.BLK_ID_BYTES, b"\0")[:min(room, spec.BLK_ID_BYTES)]
            return spec.BLK_S_OK, scatter(memory, data_in, data)
        if kind in (spec.BLK_T_DISCARD, spec.BLK_T_WRITE_ZEROES):
            if self.disk.read_only:
                return spec.BLK_S_IOERR, 0
            raw = gather(memory, data_out, _DISCARD.size * MAX_DISCARD_SEGMENTS + 1)
            if not raw or len(raw) % _DISCARD.size or len(raw) > _DISCARD.size * MAX_DISCARD_SEGMENTS:
                return spec.BLK_S_IOERR, 0
            for start, count, flags in _DISCARD.iter_unpack(raw):
                length = count * spec.SECTOR_SIZE
                if count > MAX_DISCARD_SECTORS or not self._in_range(start, length):
                    return spec.BLK_S_IOERR, 0
                offset = start * spec.SECTOR_SIZE
                if kind == spec.BLK_T_DISCARD:
                    if not self.image.discard(offset, length):
                        return spec.BLK_S_UNSUPP, 0
                else:
                    self.image.write_zeroes(offset, length,
                                            bool(flags & spec.BLK_WRITE_ZEROES_FLAG_UNMAP))
            return spec.BLK_S_OK, 0
        return spec.BLK_S_UNSUPP, 0

    # -- state ------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return "throwaway" if self.disk.throwaway else "ro" if self.disk.read_only else "rw"

    def state(self) -> dict[str, Any]:
        """Counters, the image file's identity, and a throwaway disk's written sectors.

        A read-write image is flushed first: the snapshot pairs the guest's memory with the
        file as it is now, and a restore refuses the file once it has changed."""
        self.image.flush()
        out = {**super().state(), "errors": self.errors, "mode": self.mode,
               "image": self.image.identity()}
        if isinstance(self.image, ThrowawayImage):
            runs = self.image.overlay_runs()
            size = sum(len(data) for _, data in runs)
            if size > MAX_SAVED_OVERLAY:
                raise DeviceStateError(
                    f"throwaway disk {str(self.disk.path)!r}: the guest wrote {size} bytes, more "
                    f"than the {MAX_SAVED_OVERLAY} a snapshot holds; snapshot before the guest "
                    "writes that much, or use a read-write copy of the image")
            out["overlay"] = [[sector, data.hex()] for sector, data in runs]
        return out

    def check_state(self, state: dict[str, Any]) -> None:
        path = str(self.disk.path)
        if state.get("mode") != self.mode:
            raise DeviceStateError(f"disk {path!r}: saved as a {state.get('mode')} disk, given "
                                   f"as {self.mode}; give the disk as it was when saved")
        saved, now = state.get("image"), self.image.identity()
        if saved != now:
            changed = ", ".join(k for k in now if not isinstance(saved, dict) or saved.get(k) != now[k])
            raise SnapshotMismatchError(
                f"disk {path!r}: the image file is not the one the snapshot was taken with "
                f"({changed} changed); the guest's memory holds that file's state. Restore with "
                "the file as it was (a read-write disk can be restored until something writes "
                "it: use throwaway to restore many times)")
        overlay = state.get("overlay")
        if self.disk.throwaway and (not isinstance(overlay, list) or not all(
                isinstance(r, list) and len(r) == 2 and isinstance(r[0], int)
                and isinstance(r[1], str) for r in overlay)):
            raise DeviceStateError(f"disk {path!r} state: overlay is not a list of "
                                   "[sector, hex] runs")

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.errors = int(state.get("errors", 0))
        if isinstance(self.image, ThrowawayImage):
            try:
                runs = [(int(sector), bytes.fromhex(data)) for sector, data in state["overlay"]]
            except ValueError:
                raise DeviceStateError(f"disk {str(self.disk.path)!r} state: an overlay run is "
                                       "not hex") from None
            try:
                self.image.load_overlay(runs)
            except BootConfigError as e:
                raise DeviceStateError(str(e)) from None


def _skip(chain: DescriptorChain, count: int) -> list[Any]:
    """The readable buffers after their first ``count`` bytes."""
    out = []
    for b in chain.readable:
        if count >= b.length:
            count -= b.length
            continue
        out.append(type(b)(b.address + count, b.length - count))
        count = 0
    return out
