"""virtio-fs without a guest: share specifications, refusals before anything starts, the
device's configuration space, a read-only virtiofsd answering EROFS through a queue, and the
wiring of a back end's call eventfd to the transport's InterruptStatus."""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

import pytest

from test_vhost_user import QueueDriver, _fuse, virtiofsd_or_skip
from vmboot.devices.console import ConsoleOutput
from vmboot.devices.vhost_user import messages as m
from vmboot.devices.vhost_user.frontend import VhostUserFrontend
from vmboot.devices.vhost_user.virtiofsd import ENV_VAR, Virtiofsd, VirtiofsdMissing
from vmboot.devices.virtio import spec
from vmboot.devices.virtio.fs import FsDevice
from vmboot.devices.virtio.machine_devices import VirtioChoices, build_virtio
from vmboot.devices.virtio.mmio import MmioTransport
from vmboot.devices.virtio.share import TAG_BYTES, Share, check_shares, parse_share
from vmboot.errors import UsageError
from vmboot.hv.guest_memory import GuestMemory
from vmboot.vmm.host_root import host_root_cmdline, host_root_share
from vmboot.vmm.machine import Machine

FUSE_INIT, FUSE_MKDIR = 26, 9
OUT_HEADER = struct.Struct("<IiQ")
EROFS = 30


def test_share_spec_forms(tmp_path: Path) -> None:
    d = tmp_path / "src"
    d.mkdir()
    assert parse_share(str(d)) == Share(d, "src", False)
    assert parse_share(f"{d}:code") == Share(d, "code", False)
    assert parse_share(f"{d}:code,ro") == Share(d, "code", True)
    assert parse_share(f"{d},ro") == Share(d, "src", True)


def test_share_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"absent: does not exist; give an existing host directory"):
        parse_share(f"{tmp_path / 'absent'}:x")
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="is not a directory"):
        parse_share(str(tmp_path / "file"))


def test_tags_must_fit_and_be_unique(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=f"1-{TAG_BYTES} bytes"):
        parse_share(f"{tmp_path}:{'t' * (TAG_BYTES + 1)}")
    with pytest.raises(UsageError, match="already used"):
        check_shares([Share(tmp_path, "same"), Share(tmp_path, "same")])


def test_missing_share_is_refused_before_virtiofsd_or_a_vm(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        Machine(b"not a kernel", shares=[Share(tmp_path / "absent", "x")])


def test_missing_virtiofsd_names_the_package_before_boot(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "no-virtiofsd"))
    with pytest.raises(VirtiofsdMissing, match=r"VMBOOT_VIRTIOFSD=.*no-virtiofsd"):
        Machine(b"not a kernel", shares=[Share(tmp_path, "x")])
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.setattr("vmboot.devices.vhost_user.virtiofsd.KNOWN_PATHS", ())
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(VirtiofsdMissing, match="package qemu-system-common"):
        Machine(b"not a kernel", shares=[Share(tmp_path, "x")])


def test_host_root_refusals_and_command_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="only '/'"):
        host_root_share(tmp_path, None)
    with pytest.raises(UsageError, match="drop the initrd"):
        host_root_share("/", b"cpio")
    share = host_root_share("/", None)
    assert share.read_only and share.source == Path("/")
    line = host_root_cmdline()
    assert f"root={share.tag}" in line and "rootfstype=virtiofs" in line and " ro " in line
    init = line.split("init=")[1].split()[0]
    assert os.access(init, os.X_OK) and init.endswith("vmboot-agent")


def test_exec_needs_an_agent_channel() -> None:
    with pytest.raises(UsageError, match="agent=True"):
        Machine(b"not a kernel").exec(["/bin/true"])


def _fs_device(tmp_path: Path, read_only: bool = False) -> FsDevice:
    virtiofsd_or_skip()
    return FsDevice(Share(tmp_path, "tagname", read_only))


def test_config_space_is_the_tag_and_one_request_queue(tmp_path: Path) -> None:
    device = _fs_device(tmp_path)
    try:
        config = device.config_bytes()
        assert config[:TAG_BYTES] == b"tagname".ljust(TAG_BYTES, b"\0")
        assert struct.unpack("<I", config[TAG_BYTES:]) == (1,)
        assert len(device.queues) == 2  # hiprio and one request queue
        assert device.avail_features >> spec.F_VERSION_1 & 1
        assert not device.avail_features & ~((1 << spec.F_VERSION_1) | (1 << spec.F_EVENT_IDX)
                                             | (1 << spec.F_INDIRECT_DESC))
    finally:
        device.close()


def test_read_only_share_answers_erofs_and_the_host_tree_is_unchanged(tmp_path: Path) -> None:
    virtiofsd_or_skip()
    share = tmp_path / "share"
    share.mkdir()
    (share / "keep").write_text("host\n")
    daemon = Virtiofsd.start(share, read_only=True)
    mem = GuestMemory(32 << 20, shared=True)
    driver = QueueDriver(mem)
    front = VhostUserFrontend.connect(daemon.socket_path, "virtio-fs")
    try:
        features = front.negotiate(1 << spec.F_VERSION_1, m.ProtocolFeature.REPLY_ACK)
        front.set_features(features)
        regions = [m.MemoryRegion(r.gpa, r.size, mem.host_address + r.offset, r.offset)
                   for r in mem.regions]
        front.set_mem_table(regions, [mem.fd] * len(regions))
        front.set_vring(1, 16, driver.addresses(), driver.kick, driver.call)
        front.enable_vring(1)
        init = driver.request(_fuse(FUSE_INIT, 1, 0, struct.pack("<IIII", 7, 31, 0, 0)))
        assert OUT_HEADER.unpack_from(init)[1] == 0
        mkdir = driver.request(_fuse(FUSE_MKDIR, 2, 1, struct.pack("<II", 0o755, 0) + b"new\0"))
        assert OUT_HEADER.unpack_from(mkdir)[1] == -EROFS
    finally:
        front.close()
        driver.close()
        mem.close()
        daemon.stop()
    assert sorted(p.name for p in share.iterdir()) == ["keep"]


def test_a_leftover_socket_file_in_the_temp_dir_changes_nothing(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    virtiofsd_or_skip()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale = tmp_path / "vmboot-virtiofs-stale"
    stale.mkdir()
    (stale / "vhost-user.sock").write_text("left by a crashed run")
    source = tmp_path / "src"
    source.mkdir()
    first, second = Virtiofsd.start(source), Virtiofsd.start(source)
    try:
        assert first.socket_path != second.socket_path
        assert str(stale) not in (os.path.dirname(first.socket_path),
                                  os.path.dirname(second.socket_path))
        for daemon in (first, second):
            front = VhostUserFrontend.connect(daemon.socket_path, "virtio-fs")
            assert front.negotiate(1 << spec.F_VERSION_1, m.ProtocolFeature(0))
            front.close()
    finally:
        first.stop()
        second.stop()


def test_the_back_ends_call_sets_the_used_buffer_bit_then_interrupts(tmp_path: Path) -> None:
    virtiofsd_or_skip()
    devices = build_virtio(VirtioChoices(shares=[Share(tmp_path, "t")]),
                           ConsoleOutput(lambda _data: None))
    try:
        assert devices.needs_shared_memory
        (device,) = devices.devices
        t = MmioTransport(device, None, 0, 5, "virtio-fs0")
        interrupts: list[int] = []
        t.interrupt = lambda: interrupts.append(t.interrupt_status)
        t.backend_used()
        assert interrupts == []  # not live yet: no interrupt before DRIVER_OK
        t.status = (spec.STATUS_ACKNOWLEDGE | spec.STATUS_DRIVER | spec.STATUS_FEATURES_OK
                    | spec.STATUS_DRIVER_OK)
        t.backend_used()
        assert interrupts == [spec.INTERRUPT_USED_BUFFER]
        t.close()
    finally:
        devices.close()


def test_a_working_directory_the_guest_hides_is_refused_before_boot() -> None:
    from vmboot.host_exec import exec_on_host_root

    with pytest.raises(UsageError, match=r"/tmp/work is under /tmp, which the guest replaces"):
        exec_on_host_root(["true"], kernel="no-kernel-needed", cwd="/tmp/work")
