"""Peak memory of the VMM process: ``vmboot run`` against QEMU booting the same guest to init.

Guest: tiny-vmlinux (PVH) + tiny-initramfs-min.cpio, 64 MiB, quiet, to ``VMBOOT-INIT-OK``.
Runs of the VMMs are interleaved. For each run:

- peak RSS = ``ru_maxrss`` of the process from ``wait4`` (the kernel's high-water mark of the
  resident set, KiB; the same number ``/usr/bin/time -v`` prints as "Maximum resident set
  size"). vmboot and QEMU pc exit by themselves after the guest's reset; QEMU microvm (no
  i8042) is killed right after the marker, so its peak covers the boot to init as well;
- at the marker, ``/proc/PID/status`` (VmRSS, RssAnon, RssFile, RssShmem, VmHWM) and, from
  ``/proc/PID/smaps``, the resident part of the guest-RAM mapping (the largest anonymous
  mapping of at least 64 MiB), so "RSS minus guest RAM" is the VMM's own footprint.

What each includes: both RSS figures count the guest RAM the guest has touched (each VMM maps
guest RAM into its own address space, and KVM faults it in there), shared libraries and the
executable's pages. vmboot's also holds the CPython interpreter and every imported module;
QEMU's holds its firmware ROMs (SeaBIOS/qboot, option ROMs) and its threads' stacks.

Run: ``python bench/memory.py [--runs 3] [--no-pc]``. Writes bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Timing, print_table, summary_row, write_results
from vmproc import KERNELS, qemu_run, vmboot_run, watch

MARKER = b"VMBOOT-INIT-OK"
CMDLINE = "console=ttyS0 reboot=k panic=-1 quiet"
KERNEL, INITRD, MEMORY_MIB = "tiny-vmlinux", "tiny-initramfs-min.cpio", 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-pc", action="store_true", help="skip QEMU pc (~30 s a boot here)")
    args = ap.parse_args()
    kernel, initrd = KERNELS / KERNEL, KERNELS / INITRD
    vmms = {
        "vmboot run": (vmboot_run(kernel, MEMORY_MIB, "--initrd", str(initrd), "--append", CMDLINE,
                                  "--timeout", "300"), False),
        "QEMU microvm (KVM)": (qemu_run("QEMU microvm (KVM)", kernel, MEMORY_MIB, "-initrd", str(initrd),
                                        "-append", CMDLINE), True),
    }
    if not args.no_pc:
        vmms["QEMU pc (KVM)"] = (qemu_run("QEMU pc (KVM)", kernel, MEMORY_MIB, "-initrd", str(initrd),
                                          "-append", CMDLINE), False)
    peak: dict[str, list[float]] = {}
    own: dict[str, list[float]] = {}
    raw: dict[str, list[dict[str, object]]] = {}
    for run in range(args.runs):
        for name, (cmd, kill) in vmms.items():
            w = watch(cmd, [MARKER], kill_after_last=kill, sample_at=MARKER, ram_mib=MEMORY_MIB)
            st = w.status
            peak.setdefault(name, []).append(w.maxrss_kib / 1024)
            own.setdefault(name, []).append((st.get("VmRSS", 0) - st.get("GuestRamRss", 0)) / 1024)
            raw.setdefault(name, []).append({"maxrss_kib": w.maxrss_kib, "at_marker_kib": st,
                                             "marker_s": w.markers[MARKER.decode()]})
            print(f"run {run + 1}/{args.runs}  {name:<20} peak {w.maxrss_kib / 1024:7.1f} MiB  at marker: "
                  + ", ".join(f"{k} {v / 1024:.1f}" for k, v in st.items()) + " MiB", flush=True)
    peaks = {k: Timing.of(v) for k, v in peak.items()}
    owns = {k: Timing.of(v) for k, v in own.items()}
    rows = [[name, *(f"{x:.1f}" for x in (t.min, t.median, t.max)), f"{owns[name].median:.1f}"]
            for name, t in peaks.items()]
    print_table(rows, ["VMM", "peak RSS min", "median", "max", "RSS minus guest RAM at marker"])
    command = " ".join(["python bench/memory.py", *sys.argv[1:]])
    label = f"{KERNEL} + {INITRD}, {MEMORY_MIB} MiB, to init marker"
    summary = []
    for peer in [p for p in vmms if p != "vmboot run"]:
        summary.append(summary_row(f"peak RSS of the VMM process (guest RAM included): {label}",
                                   peaks["vmboot run"], f"{peer}, same guest", peaks[peer], "-",
                                   command, unit="MiB"))
        summary.append(summary_row(f"RSS at the marker minus the guest-RAM mapping: {label}",
                                   owns["vmboot run"], f"{peer}, same guest", owns[peer], "-",
                                   command, unit="MiB"))
    path = write_results("memory", {
        "command": command, "unit": "MiB", "cmdline": CMDLINE,
        "commands": {name: " ".join(cmd) for name, (cmd, _) in vmms.items()},
        "includes": {
            "peak_rss": "ru_maxrss from wait4 (= /usr/bin/time -v Maximum resident set size): all "
                        "resident pages of the process, guest RAM touched so far included",
            "rss_minus_guest_ram": "VmRSS at the marker minus the Rss of the largest anonymous mapping "
                                   ">= guest RAM size (the guest-RAM mapping), from /proc/PID/smaps",
            "vmboot": "CPython + imported modules + guest RAM touched",
            "qemu": "QEMU binary, shared libs, firmware/option ROMs, thread stacks + guest RAM touched",
        },
        "peak_rss_mib": peaks, "rss_minus_guest_ram_mib": owns, "raw": raw,
        "summary": summary,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
