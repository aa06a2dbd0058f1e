"""Virtio device state for snapshots, on a MemoryVM: each device's own state round-trips
through JSON into a fresh device, and a state that does not fit is refused before anything
is set."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from virtio_support import DATA, Rig, rig
from vmboot.devices.virtio import spec
from vmboot.devices.virtio.block import BlockDevice, Disk
from vmboot.devices.virtio.console import ConsoleDevice, ConsolePort
from vmboot.devices.virtio.driver import notify
from vmboot.devices.virtio.mmio import STATE_VERSION, MmioTransport
from vmboot.devices.virtio.rng import RngDevice
from vmboot.errors import DeviceStateError, SnapshotMismatchError
from vmboot.net.backend import Chunk

SECTORS = 64
HEADER = DATA
STATUS = DATA + 0x100
BUF = DATA + 0x1000


def _write(r: Rig, sector: int, data: bytes) -> None:
    mem = r.vm.memory
    mem.write(HEADER, struct.pack("<IIQ", spec.BLK_T_OUT, 0, sector))
    mem.write(BUF, data)
    r.queues[0].add_chain([(HEADER, 16), (BUF, len(data))], [(STATUS, 1)])
    notify(r.transport, 0)
    assert mem.read(STATUS, 1) == bytes([spec.BLK_S_OK])


def _read(r: Rig, sector: int) -> bytes:
    mem = r.vm.memory
    mem.write(HEADER, struct.pack("<IIQ", spec.BLK_T_IN, 0, sector))
    r.queues[0].add_chain([(HEADER, 16)], [(BUF, 512), (STATUS, 1)])
    notify(r.transport, 0)
    assert mem.read(STATUS, 1) == bytes([spec.BLK_S_OK])
    return mem.read(BUF, 512)


def _json(state: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(state))
    return loaded


def _fresh(r: Rig, device: Any) -> MmioTransport:
    return MmioTransport(device, r.vm.memory, 0xD0000000, 5, "restored")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(SECTORS * 512))
    return path


def test_a_throwaway_overlay_is_saved_and_each_restore_gets_its_own(image: Path) -> None:
    base = image.read_bytes()
    r = rig(BlockDevice(Disk(image, throwaway=True)))
    _write(r, 3, b"s" * 512)
    state = _json(r.transport.state())
    assert [run[0] for run in state["device"]["overlay"]] == [3]
    first = _fresh(r, BlockDevice(Disk(image, throwaway=True)))
    first.restore(state)
    r.transport = first
    assert _read(r, 3) == b"s" * 512
    _write(r, 5, b"a" * 512)  # lands in the first restored device's overlay only
    second = _fresh(r, BlockDevice(Disk(image, throwaway=True)))
    second.restore(state)
    r.transport = second
    assert _read(r, 3) == b"s" * 512
    assert _read(r, 5) == base[5 * 512:6 * 512]
    assert image.read_bytes() == base


def test_a_changed_image_file_is_refused_before_anything_is_set(image: Path) -> None:
    r = rig(BlockDevice(Disk(image)))
    state = _json(r.transport.state())
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    fresh = _fresh(r, BlockDevice(Disk(image)))
    with pytest.raises(SnapshotMismatchError, match=r"image file is not the one .* "
                                                    r"\(mtime_ns changed\)"):
        fresh.restore(state)
    assert fresh.status == 0


def test_a_disk_given_in_another_mode_is_refused(image: Path) -> None:
    state = _json(rig(BlockDevice(Disk(image, throwaway=True))).transport.state())
    fresh = MmioTransport(BlockDevice(Disk(image)), None, 0xD0000000, 5, "restored")
    with pytest.raises(DeviceStateError, match="saved as a throwaway disk, given as rw"):
        fresh.restore(state)


def test_console_ports_keep_their_pending_input_and_open_state() -> None:
    agent = ConsolePort("agent")
    r = rig(ConsoleDevice([ConsolePort(""), agent]))
    agent.guest_open = True
    agent.pending.append(b"not read yet")
    agent.pending_bytes = len(b"not read yet")
    state = _json(r.transport.state())
    port = ConsolePort("agent")
    fresh = _fresh(r, ConsoleDevice([ConsolePort(""), port]))
    fresh.restore(state)
    assert port.guest_open and port.take(100) == b"not read yet"
    with pytest.raises(DeviceStateError, match="6 queues saved, the device has 4"):
        _fresh(r, ConsoleDevice([ConsolePort("")])).restore(state)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("version", STATE_VERSION + 1, "version 2; this vmboot restores version 1"),
    ("kind", "block", "saved from a virtio-block device"),
    ("status", -1, "status = -1 is not an integer"),
    ("queues", [], "0 queues saved, the device has 1"),
])
def test_a_transport_state_that_does_not_fit_is_refused(field: str, value: object,
                                                        message: str) -> None:
    r = rig(RngDevice())
    state = _json(r.transport.state())
    state[field] = value
    fresh = _fresh(r, RngDevice())
    with pytest.raises(DeviceStateError, match=message):
        fresh.restore(state)
    assert fresh.status == 0 and not fresh.device.queues[0].ready


def test_resume_serves_the_queues_and_repeats_a_pending_interrupt() -> None:
    r = rig(RngDevice())
    r.queues[0].add_chain([], [(DATA, 4)])
    notify(r.transport, 0)
    state = _json(r.transport.state())
    assert state["interrupt_status"] == spec.INTERRUPT_USED_BUFFER
    fresh = _fresh(r, RngDevice())
    sent: list[int] = []
    fresh.interrupt = lambda: sent.append(fresh.interrupt_status)
    fresh.restore(state)
    r.queues[0].add_chain([], [(DATA, 4)])  # made available before the snapshot's resume
    fresh.resume()
    assert sent == [spec.INTERRUPT_USED_BUFFER]
    fresh.on_queue_event(0)  # the kick resume() sent, served here (no I/O thread)
    assert len(r.queues[0].take_used()) == 2


class _Backend:
    """A network backend that only says what it is (test_virtio_net.py moves frames)."""

    vnet_hdr = False
    offload_features = 0
    mtu = 1500

    def __init__(self, kind: str, tap: str | None = None) -> None:
        self.kind = kind
        self.tap = tap
        self.offloads: int | None = None

    def fileno(self) -> int:
        return -1

    def set_offloads(self, features: int) -> None:
        self.offloads = features

    def recv(self) -> bytes | None:
        return None

    def send(self, parts: Sequence[Chunk]) -> bool:
        return True

    def flush(self) -> bool:
        return True

    def describe(self) -> dict[str, object]:
        return {"backend": self.kind, **({"tap": self.tap} if self.tap else {})}

    def close(self) -> None:
        pass


MAC = bytes.fromhex("020000000001")


def test_a_network_device_is_restored_onto_a_fresh_backend() -> None:
    from vmboot.devices.virtio.net import NetDevice

    saved = NetDevice(_Backend("user"), MAC)
    r = rig(saved)
    saved.counters["rx_frames"] = 7
    state = _json(r.transport.state())
    assert state["device"]["mac"] == "02:00:00:00:00:01"
    assert state["device"]["backend"] == {"backend": "user"}
    backend = _Backend("user")
    fresh = _fresh(r, NetDevice(backend, MAC))
    fresh.restore(state)
    device = fresh.device
    assert isinstance(device, NetDevice) and device.counters["rx_frames"] == 7
    assert device.link_up and all(q.ready for q in device.queues)
    assert backend.offloads == device.acked_features  # the new backend was told (activate)


@pytest.mark.parametrize(("mac", "backend", "message"), [
    (bytes.fromhex("020000000002"), _Backend("user"),
     r"mac: saved 02:00:00:00:00:01, this machine's is 02:00:00:00:00:02; restore with mac"),
    (MAC, _Backend("tap", "tap0"), r"backend: saved 'user', this machine has 'tap'.*--net user"),
])
def test_a_network_device_with_another_mac_or_backend_is_refused(
        mac: bytes, backend: _Backend, message: str) -> None:
    from vmboot.devices.virtio.net import NetDevice

    r = rig(NetDevice(_Backend("user"), MAC))
    state = _json(r.transport.state())
    fresh = _fresh(r, NetDevice(backend, mac))
    with pytest.raises(DeviceStateError, match=message):
        fresh.restore(state)
    assert fresh.status == 0


def test_a_tap_device_is_reopened_by_its_name() -> None:
    from vmboot.devices.virtio.net import NetDevice

    state = _json(rig(NetDevice(_Backend("tap", "tap0"), MAC)).transport.state())
    r = rig(NetDevice(_Backend("tap", "tap0"), MAC))
    _fresh(r, NetDevice(_Backend("tap", "tap0"), MAC)).restore(state)
    with pytest.raises(DeviceStateError, match=r"tap: saved 'tap0', this machine has 'tap1'"
                                               r".*--net tap=tap0"):
        _fresh(r, NetDevice(_Backend("tap", "tap1"), MAC)).restore(state)
