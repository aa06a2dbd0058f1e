"""virtio-blk requests against real image files, driven through the transport on a MemoryVM."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest

from virtio_support import DATA, Rig, rig
from vmboot.devices.virtio import spec
from vmboot.devices.virtio.block import BlockDevice, Disk
from vmboot.devices.virtio.driver import notify
from vmboot.errors import BootConfigError

SECTORS = 64
HEADER = DATA
STATUS = DATA + 0x100
BUF = DATA + 0x1000


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(SECTORS * 512))
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _request(r: Rig, kind: int, sector: int, out: bytes = b"", in_len: int = 0,
             extra_writable: list[tuple[int, int]] | None = None) -> tuple[int, int]:
    """Send one request; (status byte, used length)."""
    mem = r.vm.memory
    mem.write(HEADER, struct.pack("<IIQ", kind, 0, sector))
    mem.write(STATUS, b"\xee")
    readable = [(HEADER, 16)]
    if out:
        mem.write(BUF, out)
        readable.append((BUF, len(out)))
    writable = list(extra_writable or [])
    if in_len:
        writable.append((BUF, in_len))
    writable.append((STATUS, 1))
    head = r.queues[0].add_chain(readable, writable)
    notify(r.transport, 0)
    used = r.queues[0].take_used()
    assert used and used[-1][0] == head
    return mem.read(STATUS, 1)[0], used[-1][1]


def test_config_space(image: Path) -> None:
    r = rig(BlockDevice(Disk(image)))
    assert r.transport.mmio_read(spec.MmioReg.CONFIG, 8) == SECTORS
    assert r.device.has_feature(spec.BLK_F_FLUSH)
    assert not r.device.has_feature(spec.BLK_F_RO)


def test_read_write_flush(image: Path) -> None:
    r = rig(BlockDevice(Disk(image)))
    data = os.urandom(1024)
    assert _request(r, spec.BLK_T_OUT, 4, out=data) == (spec.BLK_S_OK, 1)
    assert _request(r, spec.BLK_T_FLUSH, 0) == (spec.BLK_S_OK, 1)
    assert image.read_bytes()[4 * 512:6 * 512] == data
    r.vm.memory.write(BUF, bytes(1024))
    assert _request(r, spec.BLK_T_IN, 4, in_len=1024) == (spec.BLK_S_OK, 1025)
    assert r.vm.memory.read(BUF, 1024) == data


def test_read_scattered_over_several_buffers(image: Path) -> None:
    r = rig(BlockDevice(Disk(image)))
    second = BUF + 0x10000
    status, length = _request(r, spec.BLK_T_IN, 1, in_len=512, extra_writable=[(second, 512)])
    assert (status, length) == (spec.BLK_S_OK, 1025)
    raw = image.read_bytes()
    assert r.vm.memory.read(second, 512) == raw[512:1024]
    assert r.vm.memory.read(BUF, 512) == raw[1024:1536]


def test_read_only_disk_refuses_writes_and_file_is_unchanged(image: Path) -> None:
    before = _digest(image)
    r = rig(BlockDevice(Disk(image, read_only=True)))
    assert r.device.has_feature(spec.BLK_F_RO)
    assert _request(r, spec.BLK_T_OUT, 0, out=bytes(512))[0] == spec.BLK_S_IOERR
    assert _request(r, spec.BLK_T_WRITE_ZEROES, 0,
                    out=struct.pack("<QII", 0, 8, 0))[0] == spec.BLK_S_IOERR
    assert _digest(image) == before
    assert not r.needs_reset


def test_throwaway_disk_reads_its_writes_and_never_touches_the_file(image: Path) -> None:
    before = _digest(image)
    original = image.read_bytes()
    r = rig(BlockDevice(Disk(image, throwaway=True)))
    data = os.urandom(512)
    assert _request(r, spec.BLK_T_OUT, 3, out=data)[0] == spec.BLK_S_OK
    assert _request(r, spec.BLK_T_FLUSH, 0)[0] == spec.BLK_S_OK
    assert _request(r, spec.BLK_T_IN, 2, in_len=1536)[0] == spec.BLK_S_OK
    assert r.vm.memory.read(BUF, 1536) == original[1024:1536] + data + original[2048:2560]
    assert _digest(image) == before
    r.device.close()  # type: ignore[attr-defined]
    assert _digest(image) == before


def test_out_of_range_and_misaligned_requests_fail(image: Path) -> None:
    r = rig(BlockDevice(Disk(image)))
    assert _request(r, spec.BLK_T_IN, SECTORS, in_len=512)[0] == spec.BLK_S_IOERR
    assert _request(r, spec.BLK_T_IN, SECTORS - 1, in_len=1024)[0] == spec.BLK_S_IOERR
    assert _request(r, spec.BLK_T_IN, 0, in_len=100)[0] == spec.BLK_S_IOERR
    assert _request(r, spec.BLK_T_IN, (1 << 64) - 1, in_len=512)[0] == spec.BLK_S_IOERR
    assert _request(r, 0x7777, 0)[0] == spec.BLK_S_UNSUPP
    assert not r.needs_reset
    assert r.device.errors == 5  # type: ignore[attr-defined]


def test_get_id_returns_the_serial(image: Path) -> None:
    r = rig(BlockDevice(Disk(image, serial="disk-42")))
    status, length = _request(r, spec.BLK_T_GET_ID, 0, in_len=20)
    assert status == spec.BLK_S_OK and length == 21
    assert r.vm.memory.read(BUF, 20) == b"disk-42".ljust(20, b"\0")


def test_write_zeroes_and_discard(image: Path) -> None:
    r = rig(BlockDevice(Disk(image)))
    assert _request(r, spec.BLK_T_WRITE_ZEROES, 8, out=struct.pack("<QII", 8, 16, 0))[0] == 0
    assert image.read_bytes()[8 * 512:24 * 512] == bytes(16 * 512)
    status = _request(r, spec.BLK_T_DISCARD, 0, out=struct.pack("<QII", 32, 8, 0))[0]
    assert status in (spec.BLK_S_OK, spec.BLK_S_UNSUPP)
    assert _request(r, spec.BLK_T_DISCARD, 0, out=struct.pack("<QII", SECTORS, 8, 0))[0] == \
        spec.BLK_S_IOERR


def test_request_without_status_byte_needs_reset(image: Path) -> None:
    r = rig(BlockDevice(Disk(image)))
    r.vm.memory.write(HEADER, struct.pack("<IIQ", spec.BLK_T_IN, 0, 0))
    r.queues[0].add_chain([(HEADER, 16)], [])
    notify(r.transport, 0)
    assert r.needs_reset


def test_short_header_needs_reset(image: Path) -> None:
    r = rig(BlockDevice(Disk(image)))
    r.queues[0].add_chain([(HEADER, 8)], [(STATUS, 1)])
    notify(r.transport, 0)
    assert r.needs_reset


@pytest.mark.parametrize("text,expected", [
    ("a.img", Disk("a.img")),
    ("a.img,ro", Disk("a.img", read_only=True)),
    ("a.img,throwaway,serial=xyz", Disk("a.img", throwaway=True, serial="xyz")),
])
def test_disk_parse(text: str, expected: Disk) -> None:
    assert Disk.parse(text) == expected


@pytest.mark.parametrize("text", [",ro", "a.img,rw", "a.img,ro,throwaway", "a.img,serial=" + "x" * 21])
def test_disk_parse_rejects(text: str) -> None:
    with pytest.raises(BootConfigError):
        Disk.parse(text)


def test_missing_file_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(BootConfigError, match="cannot open"):
        BlockDevice(Disk(tmp_path / "absent.img"))
