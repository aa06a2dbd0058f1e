"""Writing a vmcore: vmboot against QEMU's ``dump-guest-memory`` and ``cp --sparse=always``.

Guest: tiny-smp-bzImage under QEMU TCG with 1 GiB of RAM, the busybox initramfs plus a
random ballast file (so that the guest holds about 64 MiB of data: the initrd image, its
unpacked copy, the kernel), panicked with ``vmboot.panic=1 panic=0`` so it stays put.

- QEMU: ``dump-guest-memory`` (ELF, no paging) over QMP, timed from the command to its reply.
- vmboot: the first QEMU dump is read back with ``read_core`` (all-zero pages stay
  untouched, as in a guest that never wrote them), and ``write_vmcore`` writes the same guest
  state: same RAM bytes, same registers.
- the copy: ``cp --sparse=always`` of vmboot's vmcore (the same bytes, holes included).

Reported: the time per dump (median of --runs) and the bytes each file occupies on disk.
Goal: faster than QEMU, within 2x of the copy.

Also, how the data pages are found, in a fresh 1 GiB MemoryVM holding 64 MiB of random data
in 16 pieces: ``/proc/self/pagemap`` then a zero test of the present pages (what the writer
does) against a zero test of every page (which also maps the host's zero page into every
untouched page, so each run gets a fresh VM). Run: ``python bench/vmcore.py [--runs 5]``.
Writes bench/results/vmcore.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import Timing, fmt_s, print_table, summary_row, write_results

from qmp_client import qmp
from vmboot.debug.core_reader import read_core
from vmboot.debug.vmcore import write_vmcore
from vmboot.initramfs.entry import Entry
from vmboot.initramfs.writer import cpio_bytes

KERNELS = Path(os.environ.get("VMBOOT_SHARED_KERNELS",
                              Path(__file__).resolve().parents[2] / "shared" / "kernels"))
MiB = 1 << 20
MEMORY_MIB = 1024
BALLAST = 13 * MiB
PANIC_END = "---[ end Kernel panic"


def on_disk(path: Path) -> int:
    return path.stat().st_blocks * 512


def scan_time(use_pagemap: bool, pieces: list[bytes]) -> float:
    """Seconds to find the data pages of a fresh 1 GiB guest holding ``pieces``."""
    from vmboot.debug.page_scan import data_runs
    from vmboot.debug.vmcore import host_address
    from vmboot.hv.memory import MemoryVM

    with MemoryVM(MEMORY_MIB * MiB) as vm:
        for i, piece in enumerate(pieces):
            vm.write(i * 60 * MiB, piece)
        view = vm.view(0, MEMORY_MIB * MiB)
        try:
            base = host_address(view) if use_pagemap else None
            t0 = time.perf_counter()
            found = sum(end - start for start, end in data_runs(view, base))
            elapsed = time.perf_counter() - t0
        finally:
            view.release()
    if found != sum(len(p) for p in pieces):
        sys.exit(f"scan found {found} bytes of data, expected {sum(len(p) for p in pieces)}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        sys.exit("qemu-system-x86_64 is not installed")
    with tempfile.TemporaryDirectory(prefix="vmboot-bench-vmcore-") as tmp:
        work = Path(tmp)
        initrd = work / "initrd.cpio"
        initrd.write_bytes((KERNELS / "tiny-initramfs.cpio").read_bytes()
                           + cpio_bytes([Entry.file("ballast", os.urandom(BALLAST))]))
        serial, sock_path = work / "serial.log", work / "qmp.sock"
        proc = subprocess.Popen(
            [qemu, "-M", "microvm,acpi=off", "-accel", "tcg", "-m", str(MEMORY_MIB),
             "-display", "none", "-monitor", "none", "-no-reboot",
             "-kernel", str(KERNELS / "tiny-smp-bzImage"), "-initrd", str(initrd),
             "-append", "console=ttyS0 panic=0 vmboot.panic=1",
             "-qmp", f"unix:{sock_path},server=on,wait=off", "-serial", f"file:{serial}"])
        try:
            deadline = time.monotonic() + 300
            while PANIC_END not in (serial.read_text(errors="replace") if serial.exists() else ""):
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit("the QEMU guest did not panic")
                time.sleep(0.5)
            qemu_times = []
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(sock_path))
                sock.makefile("r").readline()
                qmp(sock, "qmp_capabilities")
                for i in range(args.runs):
                    path = work / f"qemu.{i}.core"
                    t0 = time.perf_counter()
                    reply = qmp(sock, "dump-guest-memory", paging=False, protocol=f"file:{path}")
                    qemu_times.append(time.perf_counter() - t0)
                    if "return" not in reply:
                        sys.exit(f"dump-guest-memory failed: {reply}")
        finally:
            proc.kill()
            proc.wait()
        qemu_core = work / "qemu.0.core"
        qemu_disk = on_disk(qemu_core)
        for i in range(1, args.runs):
            (work / f"qemu.{i}.core").unlink()
        vmboot_times, copy_times = [], []
        with read_core(qemu_core) as core:
            for _ in range(args.runs):
                path = work / "vmboot.core"
                t0 = time.perf_counter()
                written = write_vmcore(path, core.vm, core.cpus)
                vmboot_times.append(time.perf_counter() - t0)
            vmboot_disk = on_disk(work / "vmboot.core")
        for _ in range(args.runs):
            t0 = time.perf_counter()
            subprocess.run(["cp", "--sparse=always", str(work / "vmboot.core"),
                            str(work / "copy.core")], check=True)
            copy_times.append(time.perf_counter() - t0)
        copy_disk = on_disk(work / "copy.core")
    pieces = [os.urandom(4 * MiB) for _ in range(16)]
    pagemap_t = Timing.of([scan_time(True, pieces) for _ in range(args.runs)])
    full_t = Timing.of([scan_time(False, pieces) for _ in range(args.runs)])
    vm_t, qemu_t, cp_t = Timing.of(vmboot_times), Timing.of(qemu_times), Timing.of(copy_times)
    command = f"python bench/vmcore.py --runs {args.runs}"
    rows = [
        summary_row("finding 64 MiB of data in a 1 GiB guest (pagemap + zero test)", pagemap_t,
                    "zero test of every page", full_t, "cheaper than reading all RAM", command),
        summary_row("vmcore of a 1 GiB guest", vm_t, "QEMU dump-guest-memory", qemu_t,
                    "faster than QEMU", command),
        summary_row("vmcore of a 1 GiB guest", vm_t, "cp --sparse=always", cp_t,
                    "within 2x of the copy", command),
    ]
    print(f"guest data written: {written.data_bytes / MiB:.1f} MiB of {MEMORY_MIB} MiB")
    print_table([
        ["vmboot write_vmcore", fmt_s(vm_t.median), f"{vmboot_disk / MiB:.1f} MiB", "1.00"],
        ["QEMU dump-guest-memory", fmt_s(qemu_t.median), f"{qemu_disk / MiB:.1f} MiB",
         f"{vm_t.median / qemu_t.median:.2f}"],
        ["cp --sparse=always", fmt_s(cp_t.median), f"{copy_disk / MiB:.1f} MiB",
         f"{vm_t.median / cp_t.median:.2f}"],
    ], ["writer", "median time", "on disk", "vmboot / this"])
    print(f"finding the data: pagemap + zero test {fmt_s(pagemap_t.median)}, zero test of "
          f"every page {fmt_s(full_t.median)} ({pagemap_t.median / full_t.median:.2f}x)")
    path = write_results("vmcore", {
        "guest": {"memory_mib": MEMORY_MIB, "data_mib": written.data_bytes / MiB},
        "bytes_on_disk": {"vmboot": vmboot_disk, "qemu": qemu_disk, "copy": copy_disk},
        "timings": {"vmboot": vm_t, "qemu": qemu_t, "copy": cp_t,
                    "scan_pagemap": pagemap_t, "scan_every_page": full_t},
        "summary": rows,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
