"""Bulk output of a guest command to the host: ``vmboot exec`` (the guest agent on a
virtio-console port) against QEMU microvm writing to a virtio-serial port; VM exits per MB.

The guest command is the same busybox one on both sides, bracketed by markers::

    echo BULK-START; head -c 2000000 /dev/zero >OUT; echo BULK-END

- vmboot: ``vmboot exec --kernel tiny-bzImage -m 256M -- sh -c '...'`` with OUT its stdout
  (through the agent to vmboot's stdout, counted here) and the markers on its stderr;
- QEMU: ``qemu-system-x86_64 -M microvm,acpi=off -global virtio-mmio.force-legacy=false
  -device virtio-serial-device -chardev file,id=bulk,path=FILE -device
  virtserialport,chardev=bulk,name=vmboot.bench`` with the same kernel and memory; an
  initramfs built here (the same busybox vmboot ships) whose /init runs the command with
  OUT the port's ``/dev/vportNpM`` and the markers on the console.

The figure is the time between the two markers as they reach each VMM's output. The baseline
is the same command with OUT ``/dev/null`` on each side (the guest's own cost of making the
bytes). Exits: KVM's own counter ``exits`` of vCPU 0 (``KVM_GET_STATS_FD`` on the VMM's vCPU
fd, copied with ``pidfd_getfd``: :mod:`kvm_stats`) read when each marker arrives; exits per
MB = (exits during the bulk run - exits during the baseline run) / MB moved. Runs of the two
VMMs are interleaved.

Run: ``python bench/exec_output.py [--runs 2]``. Writes bench/results/exec_output.json.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Timing, print_table, summary_row, write_results
from kvm_stats import vcpu_stats
from vmproc import KERNELS, QEMU_KVM

from vmboot.execute.default_guest import shipped_busybox
from vmboot.initramfs.builders import build_initramfs, entries_from_memory

BYTES = 2_000_000
MB = BYTES / 1e6
MEMORY_MIB = 256
START, END = b"BULK-START", b"BULK-END"
PORT_NAME = "vmboot.bench"
CMDLINE = "console=ttyS0 reboot=k panic=-1 quiet"
TIMEOUT = 900.0
FLUSH_SECONDS = 30.0
"""How long QEMU may take, after the end marker, to write the port's last bytes to its file."""
COMMAND = f"echo {START.decode()} >&2; head -c {BYTES} /dev/zero >{{out}}; echo {END.decode()} >&2"
QEMU_INIT = f"""#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc /sys /dev
$B mount -t devtmpfs devtmpfs /dev
$B mount -t sysfs sysfs /sys
$B mount -t proc proc /proc
OUT=
for p in /sys/class/virtio-ports/*; do
  [ "$($B cat $p/name)" = {PORT_NAME} ] && OUT=/dev/${{p##*/}}
done
[ -n "$OUT" ] || echo NO-PORT
case "$($B cat /proc/cmdline)" in *bench.null*) OUT=/dev/null;; esac
$B sh -c "{COMMAND.format(out='$OUT')}" 2>&1
$B reboot -f
"""


@dataclass
class Sample:
    seconds: float
    exits: int
    received: int


def qemu_command(kernel: Path, initrd: Path, out_file: Path, null: bool) -> list[str]:
    return [*QEMU_KVM, "-M", "microvm,acpi=off", "-m", str(MEMORY_MIB),
            "-global", "virtio-mmio.force-legacy=false",
            "-device", "virtio-serial-device",
            "-chardev", f"file,id=bulk,path={out_file}",
            "-device", f"virtserialport,chardev=bulk,name={PORT_NAME}",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", CMDLINE + (" bench.null" if null else "")]


def vmboot_command(kernel: Path, null: bool) -> list[str]:
    return [sys.executable, "-m", "vmboot", "exec", "--kernel", str(kernel),
            "-m", f"{MEMORY_MIB}M", "--timeout", str(int(TIMEOUT)), "--", "sh", "-c",
            COMMAND.format(out="/dev/null" if null else "&1")]


def measure(cmd: list[str], marker_stream: str, bulk_out: Path | None, expect: int) -> Sample:
    """Run ``cmd``; time and count exits between the markers on ``marker_stream``; the bulk
    bytes are in ``bulk_out`` (QEMU's chardev file) or else on the process's stdout."""
    with tempfile.TemporaryFile() as stdout_file:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if marker_stream == "stdout" else stdout_file,
            stderr=subprocess.PIPE if marker_stream == "stderr" else subprocess.DEVNULL,
            start_new_session=True)
        stream = proc.stdout if marker_stream == "stdout" else proc.stderr
        assert stream is not None
        stats = vcpu_stats(proc.pid)
        seen = bytearray()
        t_start = t_end = 0.0
        exits_start = exits_end = 0
        deadline = time.monotonic() + TIMEOUT
        try:
            while chunk := stream.read1(65536):
                seen += chunk
                now = time.perf_counter()
                if not t_start and START in seen:
                    t_start, exits_start = now, stats.read()["exits"]
                if t_start and END in seen[seen.find(START):]:
                    t_end, exits_end = now, stats.read()["exits"]
                    break
                if time.monotonic() > deadline:
                    break
            if marker_stream == "stdout":  # QEMU: microvm has no i8042; a reset does not end it
                settle = time.monotonic() + FLUSH_SECONDS  # the port's last bytes reach the file
                while bulk_out is not None and bulk_out.stat().st_size < expect \
                        and time.monotonic() < settle:
                    time.sleep(0.05)
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            stats.close()
        received = bulk_out.stat().st_size if bulk_out is not None else stdout_file.seek(0, os.SEEK_END)
    if not t_end:
        tail = bytes(seen[-2000:]).decode(errors="replace")
        raise SystemExit(f"no markers from {' '.join(cmd)}:\n{tail}")
    return Sample(t_end - t_start, exits_end - exits_start, received)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    kernel = KERNELS / "tiny-bzImage"
    busybox = shipped_busybox()
    if busybox is None:
        raise SystemExit("this checkout has no shipped busybox (src/vmboot/guest_image/busybox)")
    tmp = Path(tempfile.mkdtemp(prefix="vmboot-exec-bench-"))
    initrd = tmp / "bulk.cpio"
    initrd.write_bytes(build_initramfs(entries_from_memory(
        {"bin/busybox": busybox.read_bytes(), "init": QEMU_INIT}, mode=0o755)))
    peer = "QEMU microvm (KVM), virtio-serial port"
    cases = [("vmboot", False), (peer, False), ("vmboot", True), (peer, True)]
    samples: dict[tuple[str, bool], list[Sample]] = {case: [] for case in cases}
    for run in range(args.runs):
        for name, null in cases:
            expected = 0 if null else BYTES
            if name == "vmboot":
                sample = measure(vmboot_command(kernel, null), "stderr", None, expected)
            else:
                out_file = tmp / "bulk.out"
                out_file.unlink(missing_ok=True)
                sample = measure(qemu_command(kernel, initrd, out_file, null), "stdout", out_file,
                                 expected)
            if sample.received != expected:
                raise SystemExit(f"{name}: {sample.received} bytes arrived, not {expected}")
            samples[name, null].append(sample)
            print(f"run {run + 1}/{args.runs}  {name:<40} {'/dev/null' if null else 'host':>9} "
                  f"{sample.seconds:7.2f} s  {sample.exits:>8} exits", flush=True)
    times = {case: Timing.of([s.seconds for s in got]) for case, got in samples.items()}
    per_mb = {name: Timing.of([(bulk.exits - base.exits) / MB for bulk, base in
                               zip(samples[name, False], samples[name, True], strict=True)])
              for name in ("vmboot", peer)}
    rows = [[name, "/dev/null" if null else "host", f"{t.median:.2f} s",
             f"{t.min:.2f}-{t.max:.2f} s"] for (name, null), t in times.items()]
    print_table(rows, ["VMM", "bytes to", "median", "spread"])
    for name, t in per_mb.items():
        print(f"{name}: {t.median:.0f} exits per MB ({t.min:.0f}-{t.max:.0f})")
    command = f"python bench/exec_output.py --runs {args.runs}"
    figure = f"{MB:g} MB from a guest command to the host"
    path = write_results("exec_output", {
        "command": command, "bytes": BYTES, "memory_mib": MEMORY_MIB, "kernel": kernel.name,
        "exit_counter": "KVM_GET_STATS_FD 'exits' of vCPU 0 (pidfd_getfd of the VMM's vCPU fd)",
        "timings": {f"{name}{' /dev/null' if null else ''}": t for (name, null), t in times.items()},
        "exits_per_mb": per_mb,
        "samples": {f"{name}{' /dev/null' if null else ''}": got for (name, null), got in samples.items()},
        "summary": [
            summary_row(f"{figure}: `vmboot exec` stdout (agent, virtio-console)",
                        times["vmboot", False], peer, times[peer, False],
                        "none set: measure", command),
            summary_row(f"{figure}, baseline: the same command writing to /dev/null in the guest",
                        times["vmboot", True], "QEMU microvm (KVM), same command",
                        times[peer, True], "-", command),
            summary_row(f"VM exits per MB of {figure} (KVM's own count, less the baseline's)",
                        per_mb["vmboot"], peer, per_mb[peer], "-", command, unit="exits/MB"),
        ],
    })
    ratio = times["vmboot", False].median / times[peer, False].median
    print(f"ratio vmboot/microvm: {ratio:.2f}x; wrote {path}")


if __name__ == "__main__":
    main()
