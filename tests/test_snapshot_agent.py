"""Snapshots of an SMP Linux guest with virtio devices and the guest agent: tiny-smp booted
once with two vCPUs, a virtio console (the agent's port), an RNG, a throwaway disk, a
read-write disk and a vsock device, saved when the agent is ready, then restored many
times, in sequence and concurrently; each restored guest runs commands through
``Machine.exec``, gets fresh entropy and the host's wall time.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import requires_kvm, shared_kernel_file
from vmboot.agent import protocol as p
from vmboot.agent.client import AgentClient, CommandResult
from vmboot.devices.virtio.block import Disk
from vmboot.devices.virtio.vsock_host import VsockConfig
from vmboot.errors import SnapshotFormatError, SnapshotMismatchError
from vmboot.execute.image import agent_initramfs
from vmboot.snapshot import load_manifest
from vmboot.vmm.machine import Machine
from vmboot.vmm.snapshots import SNAPSHOT_CLOCKSOURCE

pytestmark = [pytest.mark.slow, requires_kvm]

KERNEL = "tiny-smp-bzImage"
CMDLINE = f"console=ttyS0 reboot=k panic=-1 quiet {SNAPSHOT_CLOCKSOURCE}"
"""With jiffies as clocksource the guest's time continues from the snapshot on every host
(on PVM a TSC clock would jump by the snapshot's age: see SNAPSHOT_CLOCKSOURCE)."""
MEMORY = "256M"
CPUS = 2
READY_TIMEOUT_S = 900.0
COMMAND_TIMEOUT_S = 300.0
SEQUENTIAL = 100
CONCURRENT = 8
DISK_BYTES = 1 << 20
SECTOR = 512
SAVED_MARK = b"written-before-the-snapshot"
CLOCK_SLACK_S = 10.0
"""How far a restored guest's wall clock may be from the host's (it is set to the host's
time in the resume message; the slack covers a slow, shared host)."""
SNAPSHOT_AGE_S = 30.0
"""The clock test restores a snapshot at least this old: a guest whose clock merely
continued from the snapshot would be this far behind."""
SH = "/bin/sh"
VSOCK_PORT = 1234
VSOCK_ENDED = "/tmp/vsock-agent-ended"
"""Written by the guest when a second agent, connected over vsock at snapshot time, ends."""


@dataclass
class Saved:
    path: Path
    sha256: str
    saved_at: float
    """Host wall time when the snapshot was taken."""
    uptime: float
    """The guest's uptime just before the snapshot."""
    busybox: Path
    initrd: bytes
    throwaway: Path
    rw: Path


def _machine(saved: Saved | None, busybox: Path, initrd: bytes, throwaway: Path, rw: Path,
             **changes: object) -> Machine:
    options: dict[str, object] = {
        "initrd": initrd, "cmdline": CMDLINE, "memory": MEMORY, "cpus": CPUS, "agent": True,
        "virtio_rng": True, "disks": [Disk(throwaway, throwaway=True), Disk(rw)],
        "vsock": VsockConfig(),
    }
    options.update(changes)
    kernel = options.pop("kernel", shared_kernel_file(KERNEL))
    return Machine(kernel, **options)  # type: ignore[arg-type]


def _restored(saved: Saved, **changes: object) -> Machine:
    return _machine(saved, saved.busybox, saved.initrd, saved.throwaway, saved.rw,
                    **changes).restore(saved.path)


def _sh(machine: Machine, script: str) -> CommandResult:
    result = machine.exec([SH, "-c", script], env={}, timeout=COMMAND_TIMEOUT_S)
    assert result.exit_status == 0, (script, result)
    return result


def _uptime(machine: Machine) -> float:
    return float(_sh(machine, "cat /proc/uptime").stdout.split()[0])


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, busybox: Path) -> Iterator[Saved]:
    tmp = tmp_path_factory.mktemp("agent-snap")
    throwaway, rw = tmp / "throwaway.img", tmp / "rw.img"
    throwaway.write_bytes(b"base-image".ljust(DISK_BYTES, b"\0"))
    rw.write_bytes(b"rw-image".ljust(DISK_BYTES, b"\0"))
    initrd = agent_initramfs([], busybox)
    path = tmp / "smp-agent.snap"
    with _machine(None, busybox, initrd, throwaway, rw) as machine:
        machine.exec([SH, "-c", "true"], env={}, ready_timeout=READY_TIMEOUT_S,
                     timeout=COMMAND_TIMEOUT_S)
        # sector 1 of the throwaway disk is written before the snapshot, through the cache
        _sh(machine, f"printf {SAVED_MARK.decode()} | dd of=/dev/vda bs=512 seek=1 "
                     "conv=notrunc 2>/dev/null; sync")
        # a second agent in the guest, connected to the host over vsock, open at the snapshot
        assert machine.vsock is not None
        listener = machine.vsock.listen(VSOCK_PORT)
        _sh(machine, f"(/init vsock:{VSOCK_PORT}; echo $? > {VSOCK_ENDED}) </dev/null "
                     ">/dev/null 2>&1 &")
        vsock_agent = AgentClient(listener.accept(timeout=COMMAND_TIMEOUT_S))
        assert vsock_agent.wait_ready(COMMAND_TIMEOUT_S).startswith("vmboot-agent")
        _sh(machine, f"test ! -e {VSOCK_ENDED}")
        uptime = _uptime(machine)
        report = machine.snapshot(path)
        vsock_agent.close()
        saved_at = time.time()
        snap, manifest = load_manifest(path)
        snap.close()
        assert manifest.agent_mailbox is not None, "the agent was parked for the save"
        assert machine.vm is not None
        # the guest saved runs on: its agent was let go from its mailbox
        assert machine.vm.memory.read(manifest.agent_mailbox, p.MAILBOX_HEAD.size) == \
            p.MAILBOX_HEAD.pack(0, 0)
        assert _sh(machine, "echo still here").stdout == b"still here\n"
    assert report.vcpus == CPUS
    yield Saved(path, hashlib.sha256(path.read_bytes()).hexdigest(), saved_at, uptime,
                busybox, initrd, throwaway, rw)


# -- the agent's mailbox ----------------------------------------------------------------------
def test_a_restored_agent_takes_its_first_frames_from_its_mailbox(saved: Saved) -> None:
    """The resume message (and, not waiting for its answer, the first command with it) is
    written into the page where the saved agent waits, before the guest runs again."""
    for wait in (True, False):
        machine = _machine(saved, saved.busybox, saved.initrd, saved.throwaway, saved.rw)
        with machine.restore(saved.path, wait_agent=wait):
            assert _sh(machine, "echo $((6*7))").stdout == b"42\n"
            assert machine.agent_client is not None and machine.agent_client.first_in_mailbox


def test_frames_too_large_for_the_mailbox_go_over_the_channel(saved: Saved) -> None:
    machine = _machine(saved, saved.busybox, saved.initrd, saved.throwaway, saved.rw)
    big = "x" * p.MAILBOX_DATA_MAX
    with machine.restore(saved.path, wait_agent=False):
        result = machine.exec([SH, "-c", 'echo "${#BIG}"'], env={"BIG": big},
                              timeout=COMMAND_TIMEOUT_S)
        assert (result.exit_status, result.stdout) == (0, b"%d\n" % len(big))
        assert machine.agent_client is not None and not machine.agent_client.first_in_mailbox


# -- several vCPUs -------------------------------------------------------------------------
def test_every_vcpu_runs_after_restore(saved: Saved) -> None:
    with _restored(saved) as machine:
        assert _sh(machine, "nproc").stdout == b"%d\n" % CPUS
        for cpu in range(CPUS):
            stat = _sh(machine, f"taskset -c {cpu} cat /proc/self/stat").stdout
            fields = stat.rsplit(b")", 1)[1].split()
            assert int(fields[36]) == cpu, stat  # field 39, "processor": where it ran


def test_four_vcpus_are_saved_and_each_runs_after_restore(busybox: Path, tmp_path: Path) -> None:
    """A boot of its own: the shared guest has two vCPUs."""
    path, cpus = tmp_path / "four.snap", 4
    initrd = agent_initramfs([], busybox)

    def four() -> Machine:
        return Machine(shared_kernel_file(KERNEL), initrd=initrd, cmdline=CMDLINE,
                       memory=MEMORY, cpus=cpus, agent=True)

    with four() as machine:
        machine.exec([SH, "-c", "true"], env={}, ready_timeout=READY_TIMEOUT_S,
                     timeout=COMMAND_TIMEOUT_S)
        assert machine.snapshot(path).vcpus == cpus
    with four().restore(path) as machine:
        assert _sh(machine, "nproc").stdout == b"%d\n" % cpus
        for cpu in range(cpus):
            stat = _sh(machine, f"taskset -c {cpu} cat /proc/self/stat").stdout
            assert int(stat.rsplit(b")", 1)[1].split()[36]) == cpu, stat


# -- entropy and time ----------------------------------------------------------------------
def test_two_restored_guests_read_different_random_bytes(saved: Saved) -> None:
    reads = []
    for _ in range(2):
        with _restored(saved) as machine:
            reads.append(_sh(machine, "head -c 32 /dev/urandom | od -An -tx1").stdout)
    assert len(reads[0].split()) == 32
    assert reads[0] != reads[1]


def test_the_wall_clock_is_the_hosts_and_uptime_continues(saved: Saved) -> None:
    wait = saved.saved_at + SNAPSHOT_AGE_S - time.time()
    if wait > 0:
        time.sleep(wait)
    with _restored(saved) as machine:
        guest = int(_sh(machine, "date +%s").stdout)
        host = time.time()
        uptime = _uptime(machine)
        started = time.monotonic()
        _sh(machine, "sleep 1")
        slept = time.monotonic() - started
    assert abs(guest - host) <= CLOCK_SLACK_S, (guest, host)
    assert uptime >= saved.uptime, (uptime, saved.uptime)
    assert 0.5 <= slept <= 30.0, slept  # wide: the timer fires, and not at once


# -- many restores -------------------------------------------------------------------------
def test_a_hundred_restores_in_sequence(saved: Saved) -> None:
    for i in range(SEQUENTIAL):
        with _restored(saved) as machine:
            assert _sh(machine, f"echo $(({i}*7))").stdout == b"%d\n" % (i * 7)


def test_eight_concurrent_restores(saved: Saved) -> None:
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            with _restored(saved) as machine:
                results[i] = _sh(machine, f"echo guest {i}").stdout
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(CONCURRENT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results == {i: b"guest %d\n" % i for i in range(CONCURRENT)}


def test_a_restored_guest_costs_the_pages_it_touches(saved: Saved) -> None:
    with _restored(saved) as machine:
        _sh(machine, "echo touched")
        assert machine.vm is not None
        usage = machine.vm.memory.host_usage()
    rss = usage.get("Rss", 0)
    print(f"\nrestored {MEMORY} guest: Rss {rss / 2**20:.1f} MiB, Private_Dirty "
          f"{usage.get('Private_Dirty', 0) / 2**20:.1f} MiB")
    assert 0 < rss < (256 << 20) // 4


# -- disks ---------------------------------------------------------------------------------
def _sector(machine: Machine, disk: str, sector: int) -> bytes:
    return _sh(machine, f"echo 3 > /proc/sys/vm/drop_caches; dd if={disk} bs=512 skip={sector} "
                        "count=1 2>/dev/null").stdout


def test_throwaway_writes_stay_in_their_restored_guest(saved: Saved) -> None:
    with _restored(saved) as first:
        assert _sector(first, "/dev/vda", 1).startswith(SAVED_MARK)
        _sh(first, "printf first-guest | dd of=/dev/vda bs=512 seek=2 conv=notrunc "
                   "2>/dev/null; sync")
        assert _sector(first, "/dev/vda", 2).startswith(b"first-guest")
    with _restored(saved) as second:
        assert _sector(second, "/dev/vda", 1).startswith(SAVED_MARK)
        assert _sector(second, "/dev/vda", 2) == bytes(SECTOR)
    assert saved.throwaway.read_bytes() == b"base-image".ljust(DISK_BYTES, b"\0")


def test_a_changed_read_write_image_is_refused(saved: Saved) -> None:
    st = saved.rw.stat()
    os.utime(saved.rw, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    try:
        machine = _machine(saved, saved.busybox, saved.initrd, saved.throwaway, saved.rw)
        with pytest.raises(SnapshotMismatchError, match=r"disk '.*rw.img': the image file is "
                                                        r"not the one .* \(mtime_ns changed\)"):
            machine.restore(saved.path)
        assert machine.vm is None
    finally:
        os.utime(saved.rw, ns=(st.st_atime_ns, st.st_mtime_ns))
    with _restored(saved) as machine:
        assert _sector(machine, "/dev/vdb", 0).startswith(b"rw-image")


# -- vsock ---------------------------------------------------------------------------------
def test_vsock_connections_open_at_the_snapshot_are_reset(saved: Saved) -> None:
    with _restored(saved) as machine:
        ended = b""
        for _ in range(60):  # the reset reaches the guest's socket as the guest runs on
            ended = _sh(machine, f"cat {VSOCK_ENDED} 2>/dev/null; true").stdout
            if ended:
                break
            time.sleep(0.5)
    assert ended.strip().isdigit(), "the vsock connection open at the snapshot was not reset"


# -- refusals ------------------------------------------------------------------------------
def test_a_changed_device_list_is_refused_naming_it(saved: Saved) -> None:
    machine = _machine(saved, saved.busybox, saved.initrd, saved.throwaway, saved.rw,
                       virtio_rng=False)
    with pytest.raises(SnapshotMismatchError, match=r"the devices differ: saved with "
                                                    r"virtio-rng0, which this machine does not"):
        machine.restore(saved.path)
    assert machine.vm is None


def test_another_kernel_or_command_line_or_vcpu_count_is_refused(saved: Saved) -> None:
    for changes, message in (({"kernel": shared_kernel_file("tiny-bzImage")}, "kernel"),
                             ({"cmdline": CMDLINE + " loglevel=3"}, "command line"),
                             ({"cpus": 1}, "saved with 2 vCPUs, this machine has cpus=1")):
        machine = _machine(saved, saved.busybox, saved.initrd, saved.throwaway, saved.rw,
                           **changes)
        with pytest.raises(SnapshotMismatchError, match=message):
            machine.restore(saved.path)
        assert machine.vm is None


def test_a_truncated_or_flipped_file_is_refused(saved: Saved, tmp_path: Path) -> None:
    truncated, flipped = tmp_path / "truncated.snap", tmp_path / "flipped.snap"
    shutil.copyfile(saved.path, truncated)
    os.truncate(truncated, saved.path.stat().st_size // 2)
    shutil.copyfile(saved.path, flipped)
    with open(flipped, "r+b") as f:
        f.seek(200)  # inside the manifest
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0x01]))
    for path, message in ((truncated, "truncated"), (flipped, "SHA-256")):
        machine = _machine(saved, saved.busybox, saved.initrd, saved.throwaway, saved.rw)
        with pytest.raises(SnapshotFormatError, match=re.escape(message)):
            machine.restore(path)
        assert machine.vm is None


def test_the_snapshot_file_is_never_modified(saved: Saved) -> None:
    """Runs last in this module: every restore above wrote to its guest's memory."""
    assert hashlib.sha256(saved.path.read_bytes()).hexdigest() == saved.sha256
