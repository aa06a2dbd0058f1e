"""Bulk output of a guest command to the host: ``vmboot exec`` (the guest agent on a
virtio-console port) against QEMU microvm writing to a virtio-serial port; VM exits per MB.

The guest command is the same busybox one on both sides, bracketed by markers::

    echo BULK-START; head -c 2000000 /dev/zero >OUT; echo BULK-END

- vmboot: ``vmboot exec --kernel tiny-bzImage -m 256M -- sh -c '...'`` with OUT its stdout
  (through the agent to vmboot's stdout, counted here) and the markers on its stderr; and
  the same with ``--channel serial`` (the UART fallback, one exit per byte);
- QEMU: ``qemu-system-x86_64 -M microvm,acpi=off -global virtio-mmio.force-legacy=false
  -device virtio-serial-device -chardev file,id=bulk,path=FILE -device
  virtserialport,chardev=bulk,name=vmboot.bench`` with the same kernel and memory; an
  initramfs built here (the same busybox vmboot ships) whose /init runs the command with
  OUT the port's ``/dev/vportNpM`` and the markers on the console.

The figure is the time between the two markers as they reach each VMM's output (vmboot's
stderr, QEMU's console). The baseline
is the same command with OUT ``/dev/null`` on each side (the guest's own cost of making the
bytes). Runs of the two VMMs are interleaved.

Exits: every statistic KVM keeps for vCPU 0 (its binary statistics, :mod:`kvm_stats`:
``exits``, ``mmio_exits``, ``io_exits``, ``halt_exits``, ``irq_window_exits``,
``irq_injections``, page faults, ...), read when each marker arrives: inside the vmboot
process through ``bench/exec_tap.py`` (which runs ``vmboot exec`` as the command does, opens
the statistics fd as the vCPU is created, and also counts vmboot's MMIO accesses per device
register, queue runs, interrupts, and chains and bytes per transmit queue), QEMU's through
QMP ``query-stats`` (run on the vCPU's thread: one signal exit per query). Each sample keeps
every statistic that moved between its markers. Per MB = (bulk run's count - the baseline
run's) / MB moved, per statistic too (``statistics_per_mb``). Two summary rows:

- ``exits``: everything, so also what depends on how long the guest took and what else the
  host ran (page faults, preemption, emulation failures under nested KVM): a few hundred
  per MB of noise between runs;
- exits to userspace (``mmio_exits`` + ``io_exits``): what the device protocol costs
  (InterruptStatus reads and InterruptACK writes per interrupt, notifications without
  ioeventfd); steady from run to run. The nested KVM (PVM) this was measured on never
  counts ``io_exits`` (the UART fallback's million port writes per MB show in ``exits``
  and ``fpu_reload`` only), so the row holds for the MMIO devices compared here, not for
  the UART.

The statistics fd must be opened before the vCPU runs: ``KVM_GET_STATS_FD`` waits for the
vCPU's mutex, which ``KVM_RUN`` holds until the next exit to userspace, so opened at the
first marker (as before) the baseline's first reading came after the guest had run the
whole command and the baseline counted almost nothing.

Run: ``python bench/exec_output.py [--runs 2]``. Writes bench/results/exec_output.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Timing, print_table, summary_row, write_results
from kvm_stats import EXITS, IO_EXITS, MMIO_EXITS, QmpStats
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
SERIAL = "vmboot --channel serial"
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
    kvm: dict[str, int] = field(default_factory=dict)
    """Every KVM statistic of vCPU 0 that moved between the markers, by its name."""
    vmm: dict[str, int] = field(default_factory=dict)
    """vmboot's own counts between the markers (``exec_tap.DeviceCounts``); empty for QEMU."""


def moved(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The counters that changed from ``before`` to ``after``, by how much."""
    return {name: after.get(name, 0) - before.get(name, 0) for name in sorted({*before, *after})
            if after.get(name, 0) != before.get(name, 0)}


def device_exits(sample: Sample) -> int:
    """Exits the VMM handled in userspace (MMIO and port I/O): they follow from the device
    protocol alone, not from how long the guest took (timer interrupts, halts, preemption)."""
    return sample.kvm.get(MMIO_EXITS, 0) + sample.kvm.get(IO_EXITS, 0)


def per_statistic_per_mb(bulk: list[Sample], base: list[Sample]) -> dict[str, float]:
    """Median over the runs of (bulk run's count - baseline run's) / MB, per KVM statistic
    that moved in any of them."""
    names = sorted({name for sample in (*bulk, *base) for name in sample.kvm})
    return {name: statistics.median((b.kvm.get(name, 0) - n.kvm.get(name, 0)) / MB
                                    for b, n in zip(bulk, base, strict=True))
            for name in names}


def qemu_command(kernel: Path, initrd: Path, out_file: Path, null: bool) -> list[str]:
    return [*QEMU_KVM, "-M", "microvm,acpi=off", "-m", str(MEMORY_MIB),
            "-global", "virtio-mmio.force-legacy=false",
            "-device", "virtio-serial-device",
            "-chardev", f"file,id=bulk,path={out_file}",
            "-device", f"virtserialport,chardev=bulk,name={PORT_NAME}",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", CMDLINE + (" bench.null" if null else "")]


def vmboot_command(kernel: Path, null: bool, channel: str = "auto") -> list[str]:
    return [sys.executable, "-m", "vmboot", "exec", "--kernel", str(kernel), "--channel", channel,
            "-m", f"{MEMORY_MIB}M", "--timeout", str(int(TIMEOUT)), "--", "sh", "-c",
            COMMAND.format(out="/dev/null" if null else "&1")]


def measure_vmboot(kernel: Path, null: bool, tmp: Path, channel: str = "auto") -> Sample:
    """``vmboot exec`` through ``exec_tap.py``: markers, times and exits noted in-process."""
    record = tmp / "tap.record"
    record.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "exec_tap.py"), str(record),
           "--", *vmboot_command(kernel, null, channel)[4:]]
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=TIMEOUT + 120, check=False)
    lines = record.read_text().splitlines() if record.exists() else []
    notes = {note["marker"]: note for note in map(json.loads, lines)}
    if done.returncode != 0 or set(notes) != {START.decode(), END.decode()}:
        raise SystemExit(f"vmboot exec: status {done.returncode}, markers {sorted(notes)}:\n"
                         f"{done.stderr[-2000:].decode(errors='replace')}")
    first, last = notes[START.decode()], notes[END.decode()]
    kvm = moved(first["kvm"], last["kvm"])
    return Sample(last["time"] - first["time"], kvm.get(EXITS, 0), len(done.stdout), kvm,
                  moved(first["vmm"], last["vmm"]))


def measure_qemu(kernel: Path, initrd: Path, null: bool, tmp: Path) -> Sample:
    """QEMU microvm: markers on its console, exits through QMP ``query-stats``."""
    out_file, qmp_path = tmp / "bulk.out", str(tmp / "qmp.sock")
    out_file.unlink(missing_ok=True)
    expect = 0 if null else BYTES
    proc = subprocess.Popen([*qemu_command(kernel, initrd, out_file, null),
                             "-qmp", f"unix:{qmp_path},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    assert isinstance(proc.stdout, io.BufferedReader)  # default bufsize: buffered, with read1
    seen = bytearray()
    notes: dict[bytes, tuple[float, dict[str, int]]] = {}
    qmp: QmpStats | None = None
    try:
        while chunk := proc.stdout.read1(65536):
            seen += chunk
            now = time.perf_counter()
            for marker in (START, END):
                if marker not in notes and marker in seen:
                    if qmp is None:
                        qmp = QmpStats(qmp_path)
                    notes[marker] = (now, qmp.vcpu_stats())
            if END in notes:
                break
        settle = time.monotonic() + FLUSH_SECONDS  # the port's last bytes reach the file
        while out_file.exists() and out_file.stat().st_size < expect and time.monotonic() < settle:
            time.sleep(0.05)
    finally:
        if qmp is not None:
            qmp.close()
        os.killpg(proc.pid, signal.SIGKILL)  # microvm has no i8042: a reset does not end it
        proc.wait()
    if END not in notes:
        raise SystemExit(f"QEMU: no markers:\n{bytes(seen[-2000:]).decode(errors='replace')}")
    (t0, s0), (t1, s1) = notes[START], notes[END]
    kvm = moved(s0, s1)
    return Sample(t1 - t0, kvm.get(EXITS, 0), out_file.stat().st_size if out_file.exists() else 0,
                  kvm)


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
    cases = [("vmboot", False), (peer, False), ("vmboot", True), (peer, True), (SERIAL, False)]
    samples: dict[tuple[str, bool], list[Sample]] = {case: [] for case in cases}
    for run in range(args.runs):
        for name, null in cases:
            expected = 0 if null else BYTES
            if name == SERIAL:
                sample = measure_vmboot(kernel, null, tmp, "serial")
            elif name == "vmboot":
                sample = measure_vmboot(kernel, null, tmp)
            else:
                sample = measure_qemu(kernel, initrd, null, tmp)
            if sample.received != expected:
                raise SystemExit(f"{name}: {sample.received} bytes arrived, not {expected}")
            samples[name, null].append(sample)
            print(f"run {run + 1}/{args.runs}  {name:<40} {'/dev/null' if null else 'host':>9} "
                  f"{sample.seconds:7.2f} s  {sample.exits:>8} exits", flush=True)
    times = {case: Timing.of([s.seconds for s in got]) for case, got in samples.items()}
    baseline = {"vmboot": "vmboot", peer: peer, SERIAL: "vmboot"}  # the same guest command
    per_mb = {name: Timing.of([(bulk.exits - base.exits) / MB for bulk, base in
                               zip(samples[name, False], samples[base_name, True], strict=True)])
              for name, base_name in baseline.items()}
    device_per_mb = {name: Timing.of([(device_exits(bulk) - device_exits(base)) / MB
                                      for bulk, base in zip(samples[name, False],
                                                            samples[base_name, True], strict=True)])
                     for name, base_name in baseline.items()}
    stats_per_mb = {name: per_statistic_per_mb(samples[name, False], samples[base_name, True])
                    for name, base_name in baseline.items()}
    rows = [[name, "/dev/null" if null else "host", f"{t.median:.2f} s",
             f"{t.min:.2f}-{t.max:.2f} s"] for (name, null), t in times.items()]
    print_table(rows, ["VMM", "bytes to", "median", "spread"])
    for name, t in per_mb.items():
        d = device_per_mb[name]
        print(f"{name}: {t.median:.0f} exits per MB ({t.min:.0f}-{t.max:.0f}); to userspace "
              f"(MMIO, PIO) {d.median:.0f} ({d.min:.0f}-{d.max:.0f})")
        print("   per statistic, per MB:", ", ".join(f"{k} {v:.0f}"
                                                  for k, v in stats_per_mb[name].items()))
    command = f"python bench/exec_output.py --runs {args.runs}"
    figure = f"{MB:g} MB from a guest command to the host"
    path = write_results("exec_output", {
        "command": command, "bytes": BYTES, "memory_mib": MEMORY_MIB, "kernel": kernel.name,
        "exit_counter": "KVM_GET_STATS_FD 'exits' of vCPU 0: read in the vmboot process "
                        "(bench/exec_tap.py), and through QEMU's QMP query-stats",
        "timings": {f"{name}{' /dev/null' if null else ''}": t for (name, null), t in times.items()},
        "exits_per_mb": per_mb,
        "userspace_exits_per_mb": device_per_mb,
        "statistics_per_mb": stats_per_mb,
        "samples": {f"{name}{' /dev/null' if null else ''}": got for (name, null), got in samples.items()},
        "summary": [
            summary_row(f"{figure}: `vmboot exec` stdout (agent, virtio-console)",
                        times["vmboot", False], peer, times[peer, False],
                        "none set: measure", command),
            summary_row(f"{figure}, baseline: the same command writing to /dev/null in the guest",
                        times["vmboot", True], "QEMU microvm (KVM), same command",
                        times[peer, True], "-", command),
            summary_row(f"VM exits per MB of {figure} (KVM's own count, less the baseline's)",
                        per_mb["vmboot"], peer, per_mb[peer], "<= 1x", command,
                        unit="exits/MB"),
            summary_row(f"VM exits to userspace (MMIO, PIO) per MB of {figure}, less the "
                        "baseline's", device_per_mb["vmboot"], peer, device_per_mb[peer],
                        "<= 1x", command, unit="exits/MB"),
            summary_row(f"{figure}: `vmboot exec --channel serial` (the UART fallback)",
                        times[SERIAL, False], "`vmboot exec` through the agent (virtio-console)",
                        times["vmboot", False], "-", command),
            summary_row(f"VM exits per MB of {figure}: the UART fallback",
                        per_mb[SERIAL], "`vmboot exec` through the agent (virtio-console)",
                        per_mb["vmboot"], "-", command, unit="exits/MB"),
        ],
    })
    ratio = times["vmboot", False].median / times[peer, False].median
    print(f"ratio vmboot/microvm: {ratio:.2f}x; wrote {path}")


if __name__ == "__main__":
    main()
