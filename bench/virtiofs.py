"""``find`` and ``cat`` of 1,000 files (10 MB) over virtio-fs in the guest: vmboot against
QEMU microvm, both served by the host's virtiofsd.

Both VMMs boot the same kernel (tiny-smp-bzImage, which has virtio-fs) with the same memory
and the same initramfs (built here: busybox-static and an /init that mounts the share).
The init prints ``FS-READ-START``, runs ``find`` over the share and ``cat`` of every file,
prints ``FS-READ-END`` and reboots. The figure is the interval between the two markers as
seen on each VMM's stdout (start-up and boot are out of it). Each run gets a fresh
virtiofsd (vmboot starts its own; for QEMU this script starts one the same way, with
:class:`vmboot.devices.vhost_user.virtiofsd.Virtiofsd`), and the guest's page cache starts
cold. Runs of the two VMMs are interleaved.

QEMU: ``qemu-system-x86_64 -enable-kvm -cpu host,-arch-capabilities -object
memory-backend-memfd,id=mem,size=256M,share=on -M microvm,memory-backend=mem,acpi=off
-global virtio-mmio.force-legacy=false -chardev socket,id=c,path=SOCK
-device vhost-user-fs-device,chardev=c,tag=bench``.

Run: ``python bench/virtiofs.py [--runs 1]``. Writes bench/results/virtiofs.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Timing, print_table, summary_row, write_results
from vmproc import KERNELS, QEMU_KVM, vmboot_run, watch

from vmboot.devices.vhost_user.virtiofsd import Virtiofsd
from vmboot.initramfs.builders import build_initramfs, entries_from_memory

MEMORY_MIB = 256
FILES = 1000
FILE_BYTES = 10_000
TAG = "bench"
START = b"FS-READ-START"
END = b"FS-READ-END"
CMDLINE = "console=ttyS0 reboot=k panic=-1 quiet"
INIT = f"""#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc /sys /dev /mnt
$B mount -t devtmpfs devtmpfs /dev
$B mount -t virtiofs {TAG} /mnt || echo MOUNT-FAILED
echo {START.decode()}
$B find /mnt | $B wc -l
$B find /mnt -type f -exec $B cat {{}} + | $B wc -c
echo {END.decode()}
$B reboot -f
"""


def build(tmp: Path) -> tuple[Path, Path]:
    initrd = tmp / "fs-bench.cpio"
    initrd.write_bytes(build_initramfs(entries_from_memory(
        {"bin/busybox": Path("/bin/busybox").read_bytes(), "init": INIT}, mode=0o755)))
    tree = tmp / "tree"
    for i in range(FILES):
        d = tree / f"d{i // 100:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}").write_bytes(os.urandom(FILE_BYTES))
    return initrd, tree


def qemu_command(kernel: Path, initrd: Path, socket_path: str) -> list[str]:
    return [*QEMU_KVM,
            "-object", f"memory-backend-memfd,id=mem,size={MEMORY_MIB}M,share=on",
            "-M", "microvm,memory-backend=mem,acpi=off", "-m", str(MEMORY_MIB),
            "-global", "virtio-mmio.force-legacy=false",
            "-chardev", f"socket,id=c,path={socket_path}",
            "-device", f"vhost-user-fs-device,chardev=c,tag={TAG}",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", CMDLINE]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    kernel = KERNELS / "tiny-smp-bzImage"
    tmp = Path(tempfile.mkdtemp(prefix="vmboot-fs-bench-"))
    initrd, tree = build(tmp)
    peer = "QEMU microvm (KVM)"
    samples: dict[str, list[float]] = {"vmboot": [], peer: []}
    for run in range(args.runs):
        for name in samples:
            if name == "vmboot":
                cmd = vmboot_run(kernel, MEMORY_MIB, "--initrd", str(initrd), "--append", CMDLINE,
                                 "--share", f"{tree}:{TAG}", "--timeout", "900")
                w = watch(cmd, [START, END], timeout=900)
            else:
                daemon = Virtiofsd.start(tree)
                try:
                    w = watch(qemu_command(kernel, initrd, daemon.socket_path), [START, END],
                              kill_after_last=True, timeout=900)
                finally:
                    daemon.stop()
            if b"MOUNT-FAILED" in w.output:
                raise SystemExit(f"{name}: the guest could not mount the share")
            interval = w.markers[END.decode()] - w.markers[START.decode()]
            samples[name].append(interval)
            print(f"run {run + 1}/{args.runs}  {name:<20} {interval:7.2f} s", flush=True)
    timings = {name: Timing.of(s) for name, s in samples.items()}
    rows = [[name, f"{t.median:.2f} s", f"{t.min:.2f}-{t.max:.2f} s"]
            for name, t in timings.items()]
    print_table(rows, ["VMM", "median", "spread"])
    command = f"python bench/virtiofs.py --runs {args.runs}"
    path = write_results("virtiofs", {
        "command": command, "files": FILES, "file_bytes": FILE_BYTES, "memory_mib": MEMORY_MIB,
        "kernel": kernel.name, "timings": timings,
        "summary": [summary_row(f"find + cat of {FILES} files ({FILES * FILE_BYTES // 10**6} MB) "
                                "over virtio-fs in the guest", timings["vmboot"], peer,
                                timings[peer], "at most QEMU's time", command)],
    })
    print(f"ratio vmboot/microvm: {timings['vmboot'].median / timings[peer].median:.2f}x; "
          f"wrote {path}")


if __name__ == "__main__":
    main()
