"""The vhost-user front end against the real virtiofsd, with no guest: the test drives a
virtqueue in shared guest RAM itself (as a guest's virtio-fs driver would) and checks the
FUSE replies virtiofsd writes back through the queue."""

from __future__ import annotations

import os
import select
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import missing
from vmboot.devices.vhost_user import messages as m
from vmboot.devices.vhost_user.frontend import VhostUserError, VhostUserFrontend, VringAddresses
from vmboot.devices.vhost_user.virtiofsd import ENV_VAR, Virtiofsd, VirtiofsdMissing, find_virtiofsd
from vmboot.errors import GuestMemoryError, UsageError
from vmboot.hv.guest_memory import GuestMemory

VIRTIO_F_VERSION_1 = 1 << 32
QUEUE_SIZE = 16
REQUEST_QUEUE = 1
DESC_GPA, AVAIL_GPA, USED_GPA = 0x100000, 0x101000, 0x102000
REQUEST_GPA, REPLY_GPA = 0x110000, 0x120000
VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE = 1, 2
FUSE_LOOKUP, FUSE_INIT = 1, 26
IN_HEADER = struct.Struct("<IIQQIIII")
OUT_HEADER = struct.Struct("<IiQ")
ENTRY_OUT = struct.Struct("<QQQQII")  # nodeid, generation, entry/attr valid, nsecs
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # ino, size, blocks, atime, mtime, ctime, ...


def virtiofsd_or_skip() -> None:
    try:
        find_virtiofsd()
    except VirtiofsdMissing as exc:
        missing("virtiofsd", str(exc))


class QueueDriver:
    """The driver side of one split virtqueue, in guest RAM, as a guest kernel would run it."""

    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory
        self.avail_idx = 0
        self.used_seen = 0
        self.kick = os.eventfd(0, os.EFD_CLOEXEC)
        self.call = os.eventfd(0, os.EFD_CLOEXEC)

    def addresses(self) -> VringAddresses:
        base = self.memory.host_address
        return VringAddresses(base + self.memory.offset_of(DESC_GPA, 1),
                              base + self.memory.offset_of(USED_GPA, 1),
                              base + self.memory.offset_of(AVAIL_GPA, 1))

    def request(self, payload: bytes, reply_size: int = 4096) -> bytes:
        self.memory.write(REQUEST_GPA, payload)
        self.memory.write(DESC_GPA, struct.pack("<QIHH", REQUEST_GPA, len(payload), VIRTQ_DESC_F_NEXT, 1))
        self.memory.write(DESC_GPA + 16, struct.pack("<QIHH", REPLY_GPA, reply_size, VIRTQ_DESC_F_WRITE, 0))
        slot = self.avail_idx % QUEUE_SIZE
        self.memory.write(AVAIL_GPA + 4 + 2 * slot, struct.pack("<H", 0))
        self.avail_idx += 1
        self.memory.write(AVAIL_GPA, struct.pack("<HH", 0, self.avail_idx & 0xFFFF))
        os.eventfd_write(self.kick, 1)
        # As a guest driver does on an interrupt: look at the used ring; a notification may
        # also come for other reasons (the back end signals once when a queue starts).
        for _ in range(100):
            used_idx = struct.unpack("<H", self.memory.read(USED_GPA + 2, 2))[0]
            if used_idx != self.used_seen & 0xFFFF:
                break
            ready, _, _ = select.select([self.call], [], [], 0.1)
            if ready:
                os.eventfd_read(self.call)
        assert used_idx == (self.used_seen + 1) & 0xFFFF, "virtiofsd did not answer within 10 s"
        elem = USED_GPA + 4 + 8 * (self.used_seen % QUEUE_SIZE)
        elem_id, length = struct.unpack("<II", self.memory.read(elem, 8))
        self.used_seen += 1
        assert elem_id == 0
        return self.memory.read(REPLY_GPA, length)

    def close(self) -> None:
        os.close(self.kick)
        os.close(self.call)


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello from the host\n" * 100)
    return root


@pytest.fixture
def daemon(shared_dir: Path) -> Iterator[Virtiofsd]:
    virtiofsd_or_skip()
    d = Virtiofsd.start(shared_dir)
    yield d
    d.stop()


def _fuse(opcode: int, unique: int, nodeid: int, body: bytes) -> bytes:
    return IN_HEADER.pack(IN_HEADER.size + len(body), opcode, unique, nodeid, 0, 0, 1, 0) + body


def test_guest_ram_can_be_shared_through_a_memfd() -> None:
    mem = GuestMemory(8 << 20, shared=True)
    try:
        mem.write(0x1000, b"abc")
        view = os.pread(mem.fd, 3, mem.offset_of(0x1000, 3))
        assert view == b"abc"
        mem.write(0x200000, b"\xff" * (1 << 20))
        mem.zero(0x200000, 1 << 20)  # MADV_REMOVE frees the memfd's pages: reads back zero
        assert os.pread(mem.fd, 16, mem.offset_of(0x200000, 16)) == bytes(16)
    finally:
        mem.close()
    private = GuestMemory(2 << 20)
    try:
        with pytest.raises(GuestMemoryError, match="private"):
            _ = private.fd
    finally:
        private.close()


def test_virtiofsd_answers_fuse_through_a_queue(daemon: Virtiofsd, shared_dir: Path) -> None:
    mem = GuestMemory(32 << 20, shared=True)
    driver = QueueDriver(mem)
    front = VhostUserFrontend.connect(daemon.socket_path, "virtio-fs")
    try:
        features = front.negotiate(VIRTIO_F_VERSION_1, m.ProtocolFeature.REPLY_ACK)
        assert features & VIRTIO_F_VERSION_1
        front.set_features(features)
        regions = [m.MemoryRegion(r.gpa, r.size, mem.host_address + r.offset, r.offset)
                   for r in mem.regions]
        front.set_mem_table(regions, [mem.fd] * len(regions))
        front.set_vring(REQUEST_QUEUE, QUEUE_SIZE, driver.addresses(), driver.kick, driver.call)
        front.enable_vring(REQUEST_QUEUE)

        init = driver.request(_fuse(FUSE_INIT, 1, 0, struct.pack("<IIII", 7, 31, 0, 0)))
        _, error, unique = OUT_HEADER.unpack_from(init)
        assert (error, unique) == (0, 1)
        major, minor = struct.unpack_from("<II", init, OUT_HEADER.size)
        assert major == 7 and minor >= 31

        entry = driver.request(_fuse(FUSE_LOOKUP, 2, 1, b"hello.txt\0"))
        _, error, unique = OUT_HEADER.unpack_from(entry)
        assert (error, unique) == (0, 2)
        attr = ATTR.unpack_from(entry, OUT_HEADER.size + ENTRY_OUT.size)
        assert attr[1] == (shared_dir / "hello.txt").stat().st_size

        missing = driver.request(_fuse(FUSE_LOOKUP, 3, 1, b"no-such-file\0"))
        assert OUT_HEADER.unpack_from(missing)[1] == -2  # -ENOENT

        assert front.get_vring_base(REQUEST_QUEUE) == 3  # the next request it would read
    finally:
        front.close()
        driver.close()
        mem.close()


def test_a_dead_backend_is_named_in_one_line(daemon: Virtiofsd) -> None:
    front = VhostUserFrontend.connect(daemon.socket_path, "virtio-fs")
    daemon.process.kill()
    daemon.process.wait()
    with pytest.raises(VhostUserError, match=r"virtio-fs: .*(closed the connection|failed)"):
        front.negotiate(VIRTIO_F_VERSION_1, m.ProtocolFeature.REPLY_ACK)
    front.close()
    failure = daemon.failure()
    assert failure is not None and "exited with status" in failure


def test_missing_virtiofsd_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(VirtiofsdMissing, match="VMBOOT_VIRTIOFSD"):
        find_virtiofsd()
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.setattr("vmboot.devices.vhost_user.virtiofsd.KNOWN_PATHS", ())
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(VirtiofsdMissing, match="qemu-system-common"):
        find_virtiofsd()


def test_share_that_is_not_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a directory"):
        Virtiofsd.start(tmp_path / "absent")


def test_connect_to_nothing_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(VhostUserError, match="cannot connect"):
        VhostUserFrontend.connect(str(tmp_path / "none.sock"))
