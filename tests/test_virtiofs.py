"""virtio-fs without a guest: share specifications, refusals before anything starts, the
device's configuration space, a read-only virtiofsd answering EROFS through a queue, and the
wiring of a back end's call eventfd to the transport's InterruptStatus."""

from __future__ import annotations

import errno
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from test_vhost_user import virtiofsd_or_skip
from vhost_user_support import QueueDriver, fuse_request
from vmboot.devices.bus import MmioBus
from vmboot.devices.console import ConsoleOutput
from vmboot.devices.vhost_user import messages as m
from vmboot.devices.vhost_user.frontend import VhostUserFrontend
from vmboot.devices.vhost_user.virtiofsd import ENV_VAR, Virtiofsd, VirtiofsdMissing
from vmboot.devices.virtio import spec
from vmboot.devices.virtio.driver import DriverQueue, driver_ok, negotiate, write_reg
from vmboot.devices.virtio.fs import FsDevice
from vmboot.devices.virtio.machine_devices import VirtioChoices, build_virtio
from vmboot.devices.virtio.mmio import MmioTransport
from vmboot.devices.virtio.setup import VirtioDevices
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
        init = driver.request(fuse_request(FUSE_INIT, 1, 0, struct.pack("<IIII", 7, 31, 0, 0)))
        assert OUT_HEADER.unpack_from(init)[1] == 0
        mkdir = driver.request(fuse_request(FUSE_MKDIR, 2, 1, struct.pack("<II", 0o755, 0) + b"new\0"))
        assert OUT_HEADER.unpack_from(mkdir)[1] == -EROFS
    finally:
        front.close()
        driver.close()
        mem.close()
        daemon.stop()
    assert sorted(p.name for p in share.iterdir()) == ["keep"]


def test_a_leftover_socket_file_in_the_temp_dir_changes_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    virtiofsd_or_skip()
    # a directory of its own, short: a socket path has at most 107 bytes, and tmp_path under
    # pytest-xdist is long
    tmp = Path(tempfile.mkdtemp(prefix="vb-"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    stale = tmp / "vmboot-virtiofs-stale"
    stale.mkdir()
    (stale / "vhost-user.sock").write_text("left by a crashed run")
    source = tmp / "src"
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
        shutil.rmtree(tmp)


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
    from vmboot.execute.host_exec import exec_on_host_root

    with pytest.raises(UsageError, match=r"/tmp/work is under /tmp, which the guest replaces"):
        exec_on_host_root(["true"], kernel="no-kernel-needed", cwd="/tmp/work")


# -- the whole device on its transport, with the real virtiofsd and no guest ------------------
FUSE_LOOKUP = 1
QUEUE_BASE, QUEUE_STRIDE, REQUEST_GPA, REPLY_GPA = 0x100000, 0x10000, 0x400000, 0x500000
WAIT_SECONDS = 10.0


class _Host:
    """The little of a VM the virtio set-up needs: shared RAM, and interrupt lines."""

    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory
        self.pulses: list[tuple[int, bool]] = []

    def notification_fds_supported(self) -> bool:
        return False  # the fallback: QueueNotify exits signal the kick eventfds

    def register_ioeventfd(self, address: int, length: int, fd: int,
                           datamatch: int | None = None) -> None:
        raise AssertionError("not used on the exits path")

    def register_irqfd(self, fd: int, gsi: int) -> None:
        raise AssertionError("not used on the exits path")

    def irq_line(self, irq: int, level: bool | int) -> None:
        self.pulses.append((irq, bool(level)))


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {WAIT_SECONDS} s"
        time.sleep(0.01)


class _Guest:
    """A FUSE client on the request queue, as the guest's virtio-fs driver is."""

    def __init__(self, devices: VirtioDevices, memory: GuestMemory) -> None:
        self.t = devices.transports[0]
        self.memory = memory
        self.unique = 0
        self.start()

    def start(self) -> None:
        assert negotiate(self.t) & spec.STATUS_FEATURES_OK
        self.queues = [DriverQueue(self.memory, QUEUE_BASE + i * QUEUE_STRIDE, 16)
                       for i in range(2)]
        for i, q in enumerate(self.queues):
            q.program(self.t, i)
        driver_ok(self.t)
        assert self.t.live

    def request(self, opcode: int, nodeid: int, body: bytes) -> tuple[int, bytes]:
        self.unique += 1
        payload = fuse_request(opcode, self.unique, nodeid, body)
        self.memory.write(REQUEST_GPA, payload)
        q = self.queues[1]
        q.add_chain([(REQUEST_GPA, len(payload))], [(REPLY_GPA, 4096)])
        write_reg(self.t, spec.MmioReg.QUEUE_NOTIFY, 1)
        used: list[tuple[int, int]] = []

        def replied() -> bool:
            used.extend(q.take_used())
            return bool(used)
        _wait(replied, "reply")
        reply = self.memory.read(REPLY_GPA, used[0][1])
        _, error, unique = OUT_HEADER.unpack_from(reply)
        assert unique == self.unique
        return error, reply


@pytest.fixture
def fs_rig(tmp_path: Path) -> Iterator[tuple[VirtioDevices, _Guest, _Host]]:
    virtiofsd_or_skip()
    (tmp_path / "hello.txt").write_text("hello\n")
    memory = GuestMemory(16 << 20, shared=True)
    host = _Host(memory)
    devices = VirtioDevices([FsDevice(Share(tmp_path, "t"))], "exits")
    try:
        devices.attach(MmioBus())
        devices.connect(host)
        yield devices, _Guest(devices, memory), host
    finally:
        devices.close()
        memory.close()


def test_requests_reach_virtiofsd_and_its_call_is_an_interrupt(
        fs_rig: tuple[VirtioDevices, _Guest, _Host]) -> None:
    _, guest, host = fs_rig
    error, _ = guest.request(FUSE_INIT, 0, struct.pack("<IIII", 7, 31, 0, 0))
    assert error == 0
    error, entry = guest.request(FUSE_LOOKUP, 1, b"hello.txt\0")
    assert error == 0 and len(entry) > OUT_HEADER.size
    _wait(lambda: (5, True) in host.pulses, "interrupt")
    assert guest.t.interrupt_status & spec.INTERRUPT_USED_BUFFER
    assert guest.t.notify_exits >= 2


def test_reset_stops_the_queues_and_the_driver_can_start_again(
        fs_rig: tuple[VirtioDevices, _Guest, _Host]) -> None:
    devices, guest, _ = fs_rig
    assert guest.request(FUSE_INIT, 0, struct.pack("<IIII", 7, 31, 0, 0))[0] == 0
    device = devices.devices[0]
    assert isinstance(device, FsDevice) and device.started == [0, 1]
    write_reg(guest.t, spec.MmioReg.STATUS, 0)  # reset: GET_VRING_BASE for each queue
    assert device.started == [] and not guest.t.live
    guest.start()
    assert device.started == [0, 1]
    assert guest.request(FUSE_LOOKUP, 1, b"hello.txt\0")[0] == 0


def test_a_dead_virtiofsd_turns_into_eio_replies_and_one_log_line(
        fs_rig: tuple[VirtioDevices, _Guest, _Host], caplog: pytest.LogCaptureFixture) -> None:
    devices, guest, _ = fs_rig
    assert guest.request(FUSE_INIT, 0, struct.pack("<IIII", 7, 31, 0, 0))[0] == 0
    device = devices.devices[0]
    assert isinstance(device, FsDevice)
    device.daemon.process.kill()
    _wait(lambda: device.failure is not None, "notice of virtiofsd's death")
    assert guest.request(FUSE_LOOKUP, 1, b"hello.txt\0")[0] == -errno.EIO
    assert guest.request(FUSE_LOOKUP, 1, b"other\0")[0] == -errno.EIO
    died = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(died) == 1 and "killed by SIGKILL" in died[0] and "\n" not in died[0]
    assert device.failed_requests == 2


def test_run_lists_shares_and_refuses_a_missing_one(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from vmboot.cli.main import main
    from vmboot.cli.run import render_virtio

    with pytest.raises(SystemExit) as stop:
        main(["run", "no-kernel", "--share", f"{tmp_path / 'absent'}:t"])
    assert stop.value.code == 2
    assert "absent: does not exist" in capsys.readouterr().err
    listing = render_virtio({"notification_path": "ioeventfd/irqfd", "devices": [
        {"name": "virtio-fs0", "base": "0xd0000000", "irq": 5, "requests": 0, "error": None,
         "tag": "src", "source": str(tmp_path), "read_only": True,
         "backend_error": "virtiofsd for x exited with status 1"}]})
    assert f"src={tmp_path},ro" in listing and "ERROR: virtiofsd for x exited" in listing


def test_virtiofsd_is_out_of_reach_of_a_terminals_ctrl_c(tmp_path: Path) -> None:
    virtiofsd_or_skip()
    daemon = Virtiofsd.start(tmp_path)
    try:
        assert os.getpgid(daemon.process.pid) != os.getpgid(0)
        assert os.getsid(daemon.process.pid) == daemon.process.pid
    finally:
        daemon.stop()


@pytest.mark.parametrize(("option", "message"), [
    (["--warm"], "--warm cannot be used with --rootfs"),
    (["--add", "/etc/hostname"], "--add cannot be used with --rootfs"),
])
def test_exec_rootfs_refuses_what_the_host_root_cannot_take(
        option: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from vmboot.cli.main import main

    assert main(["exec", "--kernel", "no-kernel", "--rootfs", "/", *option, "--", "true"]) == 1
    assert message in capsys.readouterr().err
