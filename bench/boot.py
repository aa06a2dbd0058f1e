"""Boot to init: vmboot against QEMU under the same KVM, measured side by side in one run.

Each configuration boots a kernel with an initramfs to its ``VMBOOT-INIT-OK`` marker; the time
is wall-clock from starting the process (``python -m vmboot run ...`` or ``qemu-system-x86_64``)
to the marker on the serial console, and to the process's exit where it exits by itself
(QEMU microvm has no i8042, so ``reboot=k`` does not end it: it is killed after the marker).
Runs of the different VMMs are interleaved, so a slow spell of the host hits all of them.

Configurations (``--matrix``): ``min`` boots tiny-bzImage, tiny-bzImage-lz4 and tiny-vmlinux
with the 2 KiB nolibc initramfs in 64 MiB; ``full`` adds the busybox initramfs and 256 MiB for
tiny-bzImage and tiny-vmlinux. vmboot boots each bzImage twice: through its own 64-bit entry
(``auto``, the decompressor runs in the guest, as under QEMU) and with ``--entry elf64`` (the
payload is decompressed on the host and the vmlinux inside it is entered directly).

Run: ``python bench/boot.py [--runs N] [--matrix min|full] [--with-pc] [--with-tcg]``.
Writes bench/results/boot.json. Goal: vmboot at most half of QEMU microvm's time.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Timing, fmt_s, print_table, summary_row, write_results

REPO = Path(__file__).resolve().parent.parent
KERNELS = Path(os.environ.get("VMBOOT_SHARED_KERNELS", REPO.parent / "shared" / "kernels"))
MARKER = b"VMBOOT-INIT-OK"
CMDLINE = "console=ttyS0 reboot=k panic=-1 quiet"
TIMEOUT = 300.0


MIN_INITRD = "tiny-initramfs-min.cpio"
BUSYBOX_INITRD = "tiny-initramfs.cpio"
HOST_DECOMPRESS = "elf64"
"""The vmboot entry that decompresses a bzImage's payload on the host."""


@dataclass(frozen=True)
class Config:
    kernel: str
    initrd: str
    memory_mib: int

    def label(self) -> str:
        return f"{self.kernel} + {self.initrd}, {self.memory_mib} MiB"

    @property
    def vmboot_entries(self) -> tuple[str, ...]:
        """``auto`` always; a bzImage also with the host-decompressing entry."""
        return ("auto", HOST_DECOMPRESS) if "bzImage" in self.kernel else ("auto",)


def matrix(name: str) -> list[Config]:
    configs = [Config("tiny-bzImage", MIN_INITRD, 64), Config("tiny-bzImage-lz4", MIN_INITRD, 64),
               Config("tiny-vmlinux", MIN_INITRD, 64)]
    if name == "full":
        configs += [Config(k, i, m) for k in ("tiny-bzImage", "tiny-vmlinux")
                    for i, m in ((BUSYBOX_INITRD, 64), (MIN_INITRD, 256), (BUSYBOX_INITRD, 256))]
    return configs


def vmboot_name(entry: str) -> str:
    return "vmboot" if entry == "auto" else f"vmboot --entry {entry}"


def vmboot_cmd(c: Config, entry: str = "auto") -> list[str]:
    return [sys.executable, "-m", "vmboot", "run", str(KERNELS / c.kernel), "--initrd",
            str(KERNELS / c.initrd), "-m", f"{c.memory_mib}M", "--append", CMDLINE,
            "--timeout", str(TIMEOUT), "--entry", entry]


def qemu_cmd(c: Config, machine: str, accel: str = "kvm") -> list[str]:
    cmd = ["qemu-system-x86_64", "-M", machine, "-nographic", "-no-reboot", "-m",
           str(c.memory_mib), "-kernel", str(KERNELS / c.kernel), "-initrd",
           str(KERNELS / c.initrd), "-append", CMDLINE]
    if accel == "kvm":
        cmd[1:1] = ["-enable-kvm", "-cpu", "host,-arch-capabilities"]
    else:
        cmd[1:1] = ["-accel", "tcg"]
    return cmd


def time_boot(cmd: list[str], wait_exit: bool) -> tuple[float, float | None]:
    """Seconds to the marker, and to the process's exit (None when it had to be killed)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    assert isinstance(proc.stdout, io.BufferedReader)  # default bufsize: buffered, with read1
    seen = b""
    marker_at: float | None = None
    try:
        while True:
            chunk = proc.stdout.read1(65536)
            if not chunk:
                break
            seen = (seen + chunk)[-4096:]
            if marker_at is None and MARKER in seen:
                marker_at = time.perf_counter() - t0
                if not wait_exit:
                    break
            if time.perf_counter() - t0 > TIMEOUT:
                break
        if marker_at is None:
            raise SystemExit(f"no {MARKER.decode()} from: {' '.join(cmd)}\n{seen.decode(errors='replace')}")
        if wait_exit:
            proc.wait(timeout=TIMEOUT)
            return marker_at, time.perf_counter() - t0
        return marker_at, None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--matrix", choices=("min", "full"), default="min",
                    help="min: three kernels, nolibc initramfs, 64 MiB (~4 min a run here); full: "
                         "also the busybox initramfs and 256 MiB (~9 min a run)")
    ap.add_argument("--with-pc", action="store_true",
                    help="also QEMU -M pc (~30-50 s a boot here), on the 64 MiB nolibc configs")
    ap.add_argument("--with-tcg", action="store_true", help="also QEMU -accel tcg (reference)")
    ap.add_argument("--only", metavar="TEXT", help="only the configurations whose label has TEXT")
    args = ap.parse_args()
    if shutil.which("qemu-system-x86_64") is None:
        sys.exit("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    configs = [c for c in matrix(args.matrix) if args.only is None or args.only in c.label()]
    peers: dict[str, tuple[str, bool]] = {"QEMU microvm (KVM)": ("microvm,acpi=off", False)}
    samples: dict[tuple[str, str], list[float]] = {}
    exits: dict[tuple[str, str], list[float]] = {}
    for run in range(args.runs):
        for c in configs:
            order = [(vmboot_name(e), vmboot_cmd(c, e), True) for e in c.vmboot_entries]
            order += [(name, qemu_cmd(c, m), waits) for name, (m, waits) in peers.items()]
            if args.with_pc and c.initrd == MIN_INITRD and c.memory_mib == 64:
                order.append(("QEMU pc (KVM)", qemu_cmd(c, "pc"), True))
            if args.with_tcg:
                order.append(("QEMU pc (TCG)", qemu_cmd(c, "pc", "tcg"), True))
            for name, cmd, waits in order:
                marker, exit_ = time_boot(cmd, waits)
                samples.setdefault((c.label(), name), []).append(marker)
                if exit_ is not None:
                    exits.setdefault((c.label(), name), []).append(exit_)
                print(f"run {run + 1}/{args.runs}  {c.label():<45} {name:<20} marker {marker:6.2f} s"
                      + (f"  exit {exit_:6.2f} s" if exit_ is not None else ""), flush=True)
    timings = {k: Timing.of(v) for k, v in samples.items()}
    rows = []
    summary = []
    command = "python bench/boot.py " + " ".join(sys.argv[1:])
    for c in configs:
        ours = timings[(c.label(), "vmboot")]
        for name in [n for (lbl, n) in timings if lbl == c.label()]:
            t = timings[(c.label(), name)]
            rows.append([c.label(), name, fmt_s(t.min), fmt_s(t.median), fmt_s(t.max),
                         f"{ours.median / t.median:.2f}x" if name != "vmboot" else "-"])
        for entry in c.vmboot_entries:
            mine = timings[(c.label(), vmboot_name(entry))]
            how = "" if entry == "auto" else f", --entry {entry}"
            for name, goal in (("QEMU microvm (KVM)", "<= 0.5x"), ("QEMU pc (KVM)", "-")):
                peer = timings.get((c.label(), name))
                if peer is not None and (entry == "auto" or "microvm" in name):
                    summary.append(summary_row(f"boot to init marker: {c.label()}{how}", mine,
                                               f"{name}, same KVM", peer, goal, command))
    print_table(rows, ["config", "VMM", "min", "median", "max", "vmboot (auto) / this"])
    out = write_results("boot", {
        "cmdline": CMDLINE, "marker": MARKER.decode(), "runs": args.runs,
        "commands": {"vmboot": " ".join(vmboot_cmd(configs[0])),
                     "qemu": " ".join(qemu_cmd(configs[0], "microvm,acpi=off"))},
        "to_marker": {f"{k[0]} | {k[1]}": v for k, v in timings.items()},
        "to_exit": {f"{k[0]} | {k[1]}": Timing.of(v) for k, v in exits.items()},
        "summary": summary,
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
