"""Real Linux guests on virtio devices (slow: each module-scoped boot serves several checks).

Boot 1: tiny-smp-bzImage with an ext4 root disk built here (``mkfs.ext4 -d``: busybox and
an init script), a read-write data disk, a read-only disk, a throwaway disk, virtio-rng and
a named console port, notifications through ioeventfd/irqfd when KVM has them. The init
script prints what it reads and writes; the host compares hashes and the image files.

Boot 2: tiny-bzImage with the busybox initramfs, its console on hvc0 (virtio-console),
notifications forced through MMIO exits (the fallback path).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import require_tool, requires_kvm, shared_kernel_file
from vmboot.devices.virtio.block import Disk
from vmboot.devices.virtio.console import ConsolePort
from vmboot.vmm.machine import Machine, RunResult

pytestmark = [pytest.mark.slow, requires_kvm]

DISK_BYTES = 1 << 20
PAYLOAD = (b"written-by-the-guest " * 25)[:511] + b"\n"
"""One sector: dd then writes whole sectors, with no read-modify-write of old bytes."""
PORT_NAME = "org.vmboot.test"
BOOT_TIMEOUT = 400

INIT = """#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "ROOT-INIT-OK"
$B sha256sum /dev/vdb /dev/vdc /dev/vdd
read serial < /sys/block/vda/serial; echo "SERIAL=$serial"
echo "RNG=$($B dd if=/dev/hwrng bs=32 count=1 2>/dev/null | $B od -An -tx1 | $B tr -d ' \\n')"
$B dd if=/payload of=/dev/vdb bs=512 seek=16 conv=fsync 2>/dev/null && echo "VDB-WRITE-OK"
$B dd if=/payload of=/dev/vdc bs=512 seek=16 conv=fsync 2>/dev/null || echo "VDC-WRITE-REFUSED"
$B dd if=/payload of=/dev/vdd bs=512 seek=16 conv=fsync 2>/dev/null && echo "VDD-WRITE-OK"
echo "VDD-AFTER $($B dd if=/dev/vdd bs=512 skip=16 count=1 2>/dev/null | $B sha256sum)"
echo "guest file" > /written.txt
for p in /sys/class/virtio-ports/vport*; do
  read name < $p/name
  [ "$name" = "PORT_NAME" ] && echo "port-hello" > /dev/${p##*/} && echo "PORT-WRITE-OK"
done
$B sync
echo "ROOT-DONE"
$B reboot -f
""".replace("PORT_NAME", PORT_NAME)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class DiskBoot:
    result: RunResult
    images: dict[str, Path]
    originals: dict[str, bytes]
    port_output: bytes
    root: Path


@pytest.fixture(scope="module")
def disk_boot(tmp_path_factory: pytest.TempPathFactory, busybox: Path) -> DiskBoot:
    kernel = shared_kernel_file("tiny-smp-bzImage")
    require_tool("mkfs.ext4", "e2fsprogs")
    tmp = tmp_path_factory.mktemp("virtio-boot")
    tree = tmp / "tree"
    for d in ("bin", "proc", "sys", "dev"):
        (tree / d).mkdir(parents=True)
    shutil.copy(busybox, tree / "bin" / "busybox")
    (tree / "init").write_text(INIT)
    (tree / "init").chmod(0o755)
    (tree / "payload").write_bytes(PAYLOAD)
    root = tmp / "root.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-d", str(tree), str(root), "16M"], check=True)
    images = {name: tmp / f"{name}.img" for name in ("data", "ro", "throwaway")}
    originals = {}
    for name, path in images.items():
        originals[name] = os.urandom(DISK_BYTES)
        path.write_bytes(originals[name])
    port_output = bytearray()
    with Machine(kernel, memory="128M",
                 cmdline="console=ttyS0 reboot=k panic=-1 root=/dev/vda rw init=/init",
                 disks=[Disk(root, serial="vmboot-root"), Disk(images["data"]),
                        Disk(images["ro"], read_only=True),
                        Disk(images["throwaway"], throwaway=True)],
                 virtio_rng=True,
                 console_ports=[ConsolePort(PORT_NAME, port_output.extend)]) as m:
        result = m.run(timeout=BOOT_TIMEOUT)
    return DiskBoot(result, images, originals, bytes(port_output), root)


def test_root_disk_boots_and_the_run_ends_cleanly(disk_boot: DiskBoot) -> None:
    text = disk_boot.result.console_text
    assert "ROOT-INIT-OK" in text and "ROOT-DONE" in text, text[-3000:]
    assert disk_boot.result.clean, disk_boot.result.exit.one_line()


def test_guest_reads_the_disks_the_host_wrote(disk_boot: DiskBoot) -> None:
    text = disk_boot.result.console_text
    for dev, name in (("vdb", "data"), ("vdc", "ro"), ("vdd", "throwaway")):
        assert f"{_sha256(disk_boot.originals[name])}  /dev/{dev}" in text


def test_guest_write_reaches_the_read_write_image(disk_boot: DiskBoot) -> None:
    assert "VDB-WRITE-OK" in disk_boot.result.console_text
    data = disk_boot.images["data"].read_bytes()
    assert data[16 * 512:16 * 512 + len(PAYLOAD)] == PAYLOAD
    assert data[:16 * 512] == disk_boot.originals["data"][:16 * 512]


def test_read_only_disk_refuses_and_is_unchanged(disk_boot: DiskBoot) -> None:
    assert "VDC-WRITE-REFUSED" in disk_boot.result.console_text
    assert disk_boot.images["ro"].read_bytes() == disk_boot.originals["ro"]


def test_throwaway_disk_takes_writes_but_the_file_is_unchanged(disk_boot: DiskBoot) -> None:
    text = disk_boot.result.console_text
    assert "VDD-WRITE-OK" in text
    first_sector = PAYLOAD[:512]
    assert f"VDD-AFTER {_sha256(first_sector)}" in text  # the guest reads its own write back
    assert disk_boot.images["throwaway"].read_bytes() == disk_boot.originals["throwaway"]


def test_root_filesystem_write_is_in_the_image(disk_boot: DiskBoot) -> None:
    require_tool("debugfs", "e2fsprogs")
    out = subprocess.run(["debugfs", "-R", "cat /written.txt", str(disk_boot.root)],
                         capture_output=True, check=True).stdout
    assert out == b"guest file\n"


def test_serial_and_hwrng(disk_boot: DiskBoot) -> None:
    text = disk_boot.result.console_text
    assert "SERIAL=vmboot-root" in text
    match = re.search(r"RNG=([0-9a-f]*)", text)
    assert match and len(match.group(1)) == 64 and match.group(1) != "0" * 64


def test_named_port_carries_guest_output(disk_boot: DiskBoot) -> None:
    assert "PORT-WRITE-OK" in disk_boot.result.console_text
    assert disk_boot.port_output == b"port-hello\n"


def test_report_lists_devices_and_counts(disk_boot: DiskBoot) -> None:
    report = disk_boot.result.virtio
    assert report is not None
    assert report["notification_path"] == "ioeventfd/irqfd"
    kinds = [d["type"] for d in report["devices"]]
    assert kinds == ["block", "block", "block", "block", "console", "rng"]
    assert all(d["requests"] > 0 for d in report["devices"])
    assert all(d["error"] is None for d in report["devices"])
    assert [d["irq"] for d in report["devices"]] == [5, 6, 7, 9, 10, 11]


SHELL_PROMPT = b"/ # "
TYPED = b"echo HVC-INPUT-$((6*7)); reboot -f\n"


@pytest.fixture(scope="module")
def hvc_boot() -> RunResult:
    """The busybox shell on hvc0; a command is typed when its prompt appears."""
    kernel = shared_kernel_file("tiny-bzImage")
    initrd = shared_kernel_file("tiny-initramfs.cpio")
    machines: list[Machine] = []

    def sink(chunk: bytes) -> None:
        if SHELL_PROMPT in chunk and machines:
            machines.pop().push_input(TYPED)

    m = Machine(kernel, initrd=initrd, memory="64M", console_device="virtio", console=sink,
                cmdline="console=hvc0 reboot=k panic=-1 vmboot.shell=1",
                virtio_notifications="exits")
    machines.append(m)
    with m:
        return m.run(timeout=BOOT_TIMEOUT)


def test_console_on_hvc0_through_exits(hvc_boot: RunResult) -> None:
    assert "VMBOOT-INIT-OK" in hvc_boot.console_text, hvc_boot.console_text[-2000:]
    assert hvc_boot.clean, hvc_boot.exit.one_line()
    report = hvc_boot.virtio
    assert report is not None and report["notification_path"] == "exits"
    assert report["devices"][0]["type"] == "console" and report["devices"][0]["requests"] > 0
    assert report["devices"][0]["notify_exits"] > 0


def test_typed_input_reaches_the_shell_on_hvc0(hvc_boot: RunResult) -> None:
    assert "HVC-INPUT-42" in hvc_boot.console_text, hvc_boot.console_text[-2000:]
