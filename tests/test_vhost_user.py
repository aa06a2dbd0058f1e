"""The vhost-user front end against the real virtiofsd, with no guest: the test drives a
virtqueue in shared guest RAM itself (as a guest's virtio-fs driver would) and checks the
FUSE replies virtiofsd writes back through the queue."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import missing
from vhost_user_support import (
    ATTR,
    ENTRY_OUT,
    FUSE_INIT,
    FUSE_LOOKUP,
    OUT_HEADER,
    REQUEST_QUEUE,
    VIRTIO_F_VERSION_1,
    QueueDriver,
    fuse_request,
    start_queue,
)
from vmboot.devices.vhost_user import messages as m
from vmboot.devices.vhost_user.frontend import VhostUserError, VhostUserFrontend
from vmboot.devices.vhost_user.virtiofsd import ENV_VAR, Virtiofsd, VirtiofsdMissing, find_virtiofsd
from vmboot.errors import GuestMemoryError, UsageError
from vmboot.hv.guest_memory import GuestMemory


def virtiofsd_or_skip() -> None:
    try:
        find_virtiofsd()
    except VirtiofsdMissing as exc:
        missing("virtiofsd", str(exc))


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
        start_queue(front, mem, driver)

        init = driver.request(fuse_request(FUSE_INIT, 1, 0, struct.pack("<IIII", 7, 31, 0, 0)))
        _, error, unique = OUT_HEADER.unpack_from(init)
        assert (error, unique) == (0, 1)
        major, minor = struct.unpack_from("<II", init, OUT_HEADER.size)
        assert major == 7 and minor >= 31

        entry = driver.request(fuse_request(FUSE_LOOKUP, 2, 1, b"hello.txt\0"))
        _, error, unique = OUT_HEADER.unpack_from(entry)
        assert (error, unique) == (0, 2)
        attr = ATTR.unpack_from(entry, OUT_HEADER.size + ENTRY_OUT.size)
        assert attr[1] == (shared_dir / "hello.txt").stat().st_size

        missing = driver.request(fuse_request(FUSE_LOOKUP, 3, 1, b"no-such-file\0"))
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
