"""Sequential read of a virtio-blk disk in the guest: vmboot against QEMU microvm.

Both VMMs boot the same kernel (tiny-bzImage) with the same memory, the same initramfs (built
here: busybox-static and an /init that reads the disk) and the same 64 MiB raw image as
``/dev/vda``. The init prints ``BLK-READ-START``, runs ``dd if=/dev/vda of=/dev/null bs=1M``,
prints ``BLK-READ-END`` and reboots. The figure is the interval between the two markers as
seen on each VMM's stdout (so start-up and boot are out of it). Runs of the two VMMs are
interleaved. Under an emulating KVM (PVM) both figures are dominated by the guest kernel's own
block and page-cache code running emulated, not by the VMM.

QEMU: ``qemu-system-x86_64 -M microvm,acpi=off -enable-kvm -cpu host,-arch-capabilities
-global virtio-mmio.force-legacy=false -drive if=none,id=d0,file=IMG,format=raw
-device virtio-blk-device,drive=d0``.

Run: ``python bench/virtio_blk.py [--runs 3]``. Writes bench/results/virtio_blk.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Timing, print_table, summary_row, write_results
from vmproc import KERNELS, QEMU_KVM, vmboot_run, watch

from vmboot.initramfs.builders import build_initramfs, entries_from_memory

MEMORY_MIB = 128
DISK_MIB = 64
START = b"BLK-READ-START"
END = b"BLK-READ-END"
CMDLINE = "console=ttyS0 reboot=k panic=-1 quiet"
INIT = f"""#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc /sys /dev
$B mount -t devtmpfs devtmpfs /dev
echo {START.decode()}
$B dd if=/dev/vda of=/dev/null bs=1M 2>&1
echo {END.decode()}
$B reboot -f
"""


def build(tmp: Path) -> tuple[Path, Path]:
    initrd = tmp / "blk-bench.cpio"
    initrd.write_bytes(build_initramfs(entries_from_memory(
        {"bin/busybox": Path("/bin/busybox").read_bytes(), "init": INIT}, mode=0o755)))
    image = tmp / "disk.img"
    with image.open("wb") as f:
        block = bytes(range(256)) * 4096
        for _ in range(DISK_MIB):
            f.write(block)
    return initrd, image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    kernel = KERNELS / "tiny-bzImage"
    tmp = Path(tempfile.mkdtemp(prefix="vmboot-blk-bench-"))
    initrd, image = build(tmp)
    vmms = {
        "vmboot": vmboot_run(kernel, MEMORY_MIB, "--initrd", str(initrd), "--append", CMDLINE,
                             "--disk", f"{image},ro", "--timeout", "600"),
        "QEMU microvm (KVM)": [*QEMU_KVM, "-M", "microvm,acpi=off", "-m", str(MEMORY_MIB),
                               "-global", "virtio-mmio.force-legacy=false",
                               "-drive", f"if=none,id=d0,file={image},format=raw,readonly=on",
                               "-device", "virtio-blk-device,drive=d0",
                               "-kernel", str(kernel), "-initrd", str(initrd),
                               "-append", CMDLINE],
    }
    samples: dict[str, list[float]] = {name: [] for name in vmms}
    for run in range(args.runs):
        for name, cmd in vmms.items():
            w = watch(cmd, [START, END], kill_after_last=name != "vmboot", timeout=600)
            interval = w.markers[END.decode()] - w.markers[START.decode()]
            samples[name].append(interval)
            print(f"run {run + 1}/{args.runs}  {name:<20} {interval:7.2f} s", flush=True)
    timings = {name: Timing.of(s) for name, s in samples.items()}
    mib = DISK_MIB
    rows = [[name, f"{t.median:.2f} s", f"{mib / t.median:.1f} MiB/s",
             f"{t.min:.2f}-{t.max:.2f} s"] for name, t in timings.items()]
    print_table(rows, ["VMM", "median", "throughput", "spread"])
    peer = "QEMU microvm (KVM)"
    command = f"python bench/virtio_blk.py --runs {args.runs}"
    path = write_results("virtio_blk", {
        "command": command, "disk_mib": mib, "memory_mib": MEMORY_MIB, "kernel": kernel.name,
        "timings": timings,
        "summary": [summary_row(f"{mib} MiB sequential virtio-blk read in the guest",
                                timings["vmboot"], peer, timings[peer],
                                "at most QEMU's time", command)],
    })
    print(f"ratio vmboot/microvm: {timings['vmboot'].median / timings[peer].median:.2f}x; "
          f"wrote {path}")


if __name__ == "__main__":
    main()
