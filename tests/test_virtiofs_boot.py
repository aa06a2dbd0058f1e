"""Real Linux guests on virtio-fs shares served by the host's virtiofsd (slow: one
module-scoped boot of tiny-smp-bzImage serves every check).

The guest mounts four shares: ``data`` (100 files whose hashes it prints), ``rw`` (it writes
a file), ``ro`` (a read-only share: its writes must fail with EROFS) and ``doomed``, whose
virtiofsd the host kills when the guest says it is about to read: the guest must get an
I/O error, vmboot must say in one line that the back end died, and the run must end.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import require, requires_kvm, shared_kernel_file
from vmboot.devices.virtio.fs import FsDevice
from vmboot.devices.virtio.share import Share
from vmboot.initramfs.builders import build_initramfs, complete_tree, entries_from_files, entries_from_memory
from vmboot.vmm.machine import Machine, RunResult

pytestmark = [pytest.mark.slow, requires_kvm]

BUSYBOX = Path("/bin/busybox")
BOOT_TIMEOUT = 400
FILES = 100
GUEST_TEXT = "written by the guest over virtio-fs\n"
KILL_MARKER = "KILL-DOOMED-NOW"

INIT = """#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev 2>/dev/null
for t in data rw ro doomed; do
  $B mkdir -p /mnt/$t
  $B mount -t virtiofs $t /mnt/$t && echo "MOUNT-$t-OK"
done
cd /mnt/data && $B sha256sum f* | $B sed 's/^/HASH /'
cd /
echo -n "GUEST_TEXT" > /mnt/rw/from-guest.txt && $B sync && echo "RW-WRITE-OK"
echo "RO-WRITE: $( { echo x > /mnt/ro/new.txt; } 2>&1 )"
echo "RO-RM: $($B rm /mnt/ro/keep.txt 2>&1)"
echo "KILL_MARKER"
$B sleep 3
out=$($B cat /mnt/doomed/unread.txt 2>&1 >/dev/null)
echo "DOOMED-READ: $out rc=$?"
echo "VIRTIOFS-DONE"
$B reboot -f
""".replace("GUEST_TEXT", GUEST_TEXT.strip()).replace("KILL_MARKER", KILL_MARKER)


@dataclass
class ShareBoot:
    result: RunResult
    data: Path
    rw: Path
    ro: Path
    ro_before: dict[str, bytes]
    errors: list[str]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def share_boot(tmp_path_factory: pytest.TempPathFactory) -> ShareBoot:
    kernel = shared_kernel_file("tiny-smp-bzImage")
    require(BUSYBOX.exists(), str(BUSYBOX), "apt-get install busybox-static")
    from test_vhost_user import virtiofsd_or_skip

    virtiofsd_or_skip()
    tmp = tmp_path_factory.mktemp("virtiofs-boot")
    dirs = {name: tmp / name for name in ("data", "rw", "ro", "doomed")}
    for d in dirs.values():
        d.mkdir()
    for i in range(FILES):
        (dirs["data"] / f"f{i:03d}").write_bytes(os.urandom(1000 + 97 * i))
    (dirs["ro"] / "keep.txt").write_text("the host's file\n")
    (dirs["doomed"] / "unread.txt").write_bytes(os.urandom(1 << 20))
    ro_before = _tree(dirs["ro"])
    initrd = tmp / "initrd.cpio"
    entries = [*entries_from_files([(BUSYBOX, "bin/busybox")]),
               *entries_from_memory({"init": INIT}, mode=0o755)]
    for name in ("proc", "sys", "dev", "mnt"):
        entries += entries_from_memory({f"{name}/.keep": b""})
    initrd.write_bytes(build_initramfs(complete_tree(entries)))

    shares = [Share(dirs["data"], "data"), Share(dirs["rw"], "rw"),
              Share(dirs["ro"], "ro", read_only=True), Share(dirs["doomed"], "doomed")]
    errors: list[str] = []
    handler = _ListHandler(errors)
    logging.getLogger("vmboot").addHandler(handler)
    console = bytearray()
    machine: list[Machine] = []

    def on_console(data: bytes) -> None:
        console.extend(data)
        if KILL_MARKER.encode() in console and machine:
            doomed = [d for d in machine[0].virtio.devices
                      if isinstance(d, FsDevice) and d.share.tag == "doomed"]
            if doomed[0].daemon.process.poll() is None:
                doomed[0].daemon.process.kill()

    try:
        with Machine(kernel, initrd=initrd, memory="256M", shares=shares,
                     console=on_console) as m:
            machine.append(m)
            result = m.run(timeout=BOOT_TIMEOUT)
    finally:
        logging.getLogger("vmboot").removeHandler(handler)
    return ShareBoot(result, dirs["data"], dirs["rw"], dirs["ro"], ro_before, errors)


class _ListHandler(logging.Handler):
    def __init__(self, out: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        self.out.append(record.getMessage())


def test_the_guest_mounts_every_share_and_the_run_ends(share_boot: ShareBoot) -> None:
    text = share_boot.result.console_text
    for tag in ("data", "rw", "ro", "doomed"):
        assert f"MOUNT-{tag}-OK" in text, text[-3000:]
    assert "VIRTIOFS-DONE" in text, text[-3000:]
    assert share_boot.result.clean, share_boot.result.exit.one_line()


def test_guest_hashes_of_100_files_equal_the_hosts(share_boot: ShareBoot) -> None:
    guest = dict((name, digest) for digest, name in
                 re.findall(r"HASH ([0-9a-f]{64})  (f\d{3})", share_boot.result.console_text))
    host = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in share_boot.data.iterdir()}
    assert len(host) == FILES
    assert guest == host


def test_a_file_the_guest_writes_appears_on_the_host(share_boot: ShareBoot) -> None:
    assert "RW-WRITE-OK" in share_boot.result.console_text
    assert (share_boot.rw / "from-guest.txt").read_text() == GUEST_TEXT.strip()


def test_read_only_share_refuses_writes_with_erofs(share_boot: ShareBoot) -> None:
    text = share_boot.result.console_text
    assert re.search(r"RO-WRITE: .*Read-only file system", text), text[-2000:]
    assert re.search(r"RO-RM: .*Read-only file system", text), text[-2000:]
    assert _tree(share_boot.ro) == share_boot.ro_before


def test_a_killed_virtiofsd_is_an_io_error_and_one_line(share_boot: ShareBoot) -> None:
    text = share_boot.result.console_text
    match = re.search(r"DOOMED-READ: (.*) rc=(\d+)", text)
    assert match is not None, text[-2000:]
    assert "Input/output error" in match.group(1) and match.group(2) != "0"
    died = [e for e in share_boot.errors if "virtio-fs doomed" in e]
    assert len(died) == 1 and "\n" not in died[0], share_boot.errors
    assert "exited" in died[0] and "EIO" in died[0]
    assert not [e for e in share_boot.errors if "virtio-fs doomed" not in e], share_boot.errors

