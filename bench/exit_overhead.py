"""Per-exit cost of vmboot's run loop against a bare Python KVM_RUN loop on the same guest.

The guest (64-bit, set up by hand) writes ``--exits`` bytes to port 0x500 (``--access port``)
or to guest-physical 0xd0000000, an address with no RAM behind it (``--access mmio``), in a
loop and then halts; the default measures both. Every loop runs it on a VM without the
in-kernel irqchip (so HLT exits to user space):

- ``bare``: ``fcntl.ioctl(fd, KVM_RUN)`` and one ``struct.unpack_from`` of the exit reason per
  exit, no dispatch (the floor for any Python VMM);
- ``runner``: :class:`vmboot.vmm.runner.Runner` with a :class:`~vmboot.devices.bus.PortBus`
  and a no-op device on port 0x500, or an :class:`~vmboot.devices.bus.MmioBus` with a no-op
  device at 0xd0000000 (decode, bus lookup, device call);
- ``C``: the same bare loop written in C (compiled here with gcc, called through ctypes on the
  same vCPU fd and kvm_run page), i.e. what a C VMM such as QEMU pays for the round trip
  itself. ``bare - C`` is what CPython adds per exit before any decoding (skipped when gcc is
  missing).

Prints min/median/max microseconds per exit over ``--runs`` runs and writes
``bench/results/exit_overhead.json``. No assertion on time anywhere.

    python bench/exit_overhead.py [--exits 20000] [--runs 7] [--access port mmio]
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from common import Timing, print_table, summary_row, write_results  # noqa: E402

from kvm_helpers import CODE_GPA, assemble, enter_long_mode  # noqa: E402
from vmboot.devices.bus import MmioBus, PortBus  # noqa: E402
from vmboot.hv import Register  # noqa: E402
from vmboot.hv.kvm import KvmVCPU, KvmVM, abi  # noqa: E402
from vmboot.vmm.exits import ExitReason  # noqa: E402
from vmboot.vmm.runner import Runner  # noqa: E402

PORT = 0x500
MMIO_GPA = 0xD000_0000
"""In the identity-mapped first 4 GiB, far above the 16 MiB of RAM: every store exits."""
GUESTS = {
    "port": f"""
    mov dx, {PORT:#x}
1:  out dx, al
    dec rcx
    jnz 1b
    hlt
""",
    "mmio": f"""
    mov rdi, {MMIO_GPA:#x}
1:  mov byte ptr [rdi], al
    dec rcx
    jnz 1b
    hlt
""",
}
WHAT = {"port": "port-I/O", "mmio": "MMIO"}


class NullDevice:
    """A port and MMIO device that does nothing (the cost measured is the loop's)."""

    def port_write(self, offset: int, size: int, value: int) -> None:
        pass

    def port_read(self, offset: int, size: int) -> int:
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        pass

    def mmio_read(self, offset: int, size: int) -> int:
        return 0


def reset(vm: KvmVM, vcpu: KvmVCPU, exits: int) -> None:
    enter_long_mode(vm, vcpu)
    vcpu.set_registers({Register.RIP: CODE_GPA, Register.RCX: exits})


def bare_loop(vcpu: KvmVCPU) -> int:
    """KVM_RUN until HLT, reading only the exit reason. Returns the number of exits."""
    fd, run, ioctl, request = vcpu.fd, vcpu.run_page, fcntl.ioctl, abi.KVM_RUN
    unpack, at, hlt = struct.Struct("<I").unpack_from, abi.RUN_EXIT_REASON, abi.KVM_EXIT_HLT
    n = 0
    while True:
        ioctl(fd, request, 0)
        n += 1
        if unpack(run, at)[0] == hlt:
            return n


C_LOOP = r"""
#include <linux/kvm.h>
#include <stddef.h>
#include <sys/ioctl.h>
long kvm_loop(int fd, struct kvm_run *run) {
    long n = 0;
    for (;;) {
        if (ioctl(fd, KVM_RUN, 0) < 0) return -1;
        n++;
        if (run->exit_reason == KVM_EXIT_HLT) return n;
    }
}
"""


def build_c_loop(workdir: Path) -> ctypes.CDLL | None:
    """The bare loop in C as a shared library (None without gcc or linux/kvm.h)."""
    if shutil.which("gcc") is None:
        return None
    src, lib = workdir / "loop.c", workdir / "loop.so"
    src.write_text(C_LOOP)
    proc = subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(src)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"no C loop: gcc failed: {proc.stderr.strip()}", file=sys.stderr)
        return None
    dll = ctypes.CDLL(str(lib))
    dll.kvm_loop.argtypes = (ctypes.c_int, ctypes.c_void_p)
    dll.kvm_loop.restype = ctypes.c_long
    return dll


def c_loop(dll: ctypes.CDLL, vcpu: KvmVCPU) -> int:
    page = ctypes.c_char.from_buffer(vcpu.run_page)
    try:
        n = int(dll.kvm_loop(vcpu.fd, ctypes.addressof(page)))
    finally:
        del page
    if n < 0:
        raise SystemExit("C loop: KVM_RUN failed")
    return n


def measure_access(access: str, exits: int, runs: int, dll: ctypes.CDLL | None) -> dict[str, Timing]:
    """Seconds per exit of each loop kind on the ``access`` guest, over ``runs`` runs."""
    kinds = ("bare", "runner") + (("C",) if dll is not None else ())
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    with KvmVM(16 << 20, irqchip=False) as vm:
        vcpu = vm.create_vcpu(0)
        vm.write(CODE_GPA, assemble(GUESTS[access]))
        ports, mmio = PortBus(), MmioBus()
        if access == "port":
            ports.attach_device(PORT, 1, NullDevice(), "null")
        else:
            mmio.attach_device(MMIO_GPA, 0x1000, NullDevice(), "null")
        runner = Runner(vm, vcpu, ports, mmio)
        for i in range(runs + 1):  # the first round is a warm-up
            for kind in kinds:
                reset(vm, vcpu, exits)
                vcpu.flush()
                t0 = time.perf_counter()
                if kind == "bare":
                    n = bare_loop(vcpu)
                elif kind == "C":
                    assert dll is not None
                    n = c_loop(dll, vcpu)
                else:
                    before = runner.exit_count
                    result = runner.run()
                    n = runner.exit_count - before
                    if result.reason is not ExitReason.HLT:
                        raise SystemExit(f"runner ended with {result.one_line()}, expected hlt")
                elapsed = time.perf_counter() - t0
                if n != exits + 1:
                    raise SystemExit(f"{access} {kind}: {n} exits, expected {exits + 1}")
                if i:
                    samples[kind].append(elapsed / n)
    return {kind: Timing.of(s) for kind, s in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exits", type=int, default=20000, help="guest writes per run (default 20000)")
    ap.add_argument("--runs", type=int, default=7, help="runs per loop kind (default 7)")
    ap.add_argument("--access", nargs="+", choices=tuple(GUESTS), default=list(GUESTS),
                    help="which exits to measure (default: port mmio)")
    args = ap.parse_args()
    command = " ".join(["python bench/exit_overhead.py", *sys.argv[1:]])

    tmp = tempfile.TemporaryDirectory(prefix="vmboot-bench-")
    dll = build_c_loop(Path(tmp.name))
    results: dict[str, dict[str, Any]] = {}
    summary: list[dict[str, Any]] = []
    for access in args.access:
        timings = measure_access(access, args.exits, args.runs, dll)
        bare, runner = timings["bare"], timings["runner"]
        c_timing = timings.get("C")
        rows = [[kind, *(f"{v * 1e6:.2f}" for v in (t.min, t.median, t.max))] for kind, t in timings.items()]
        rows.append(["runner - bare", f"{(runner.min - bare.min) * 1e6:.2f}",
                     f"{(runner.median - bare.median) * 1e6:.2f}", "-"])
        if c_timing is not None:
            rows.append(["bare - C", f"{(bare.min - c_timing.min) * 1e6:.2f}",
                         f"{(bare.median - c_timing.median) * 1e6:.2f}", "-"])
        print(f"{access}: {args.exits} writes per run, {args.runs} runs; microseconds per exit")
        print_table(rows, ["loop", "min", "median", "max"])
        results[access] = {"bare": bare, "runner": runner, "c_loop": c_timing,
                           "overhead_per_exit": {"of_min": runner.min - bare.min,
                                                 "of_median": runner.median - bare.median}}
        what = WHAT[access]
        summary.append(summary_row(
            f"time per {what} exit (vmboot Runner, dispatch to a device)", runner,
            "bare Python KVM_RUN loop, same guest", bare, "<= bare + 2 us", command))
        if c_timing is not None:
            summary.append(summary_row(
                f"time per {what} exit, bare Python loop (the floor of a Python VMM)", bare,
                "the same bare loop in C, same guest and vCPU", c_timing, "-", command))
    path = write_results("exit_overhead", {
        "command": command,
        "exits_per_run": args.exits + 1,
        "unit": "seconds per exit",
        "peer": "bare Python KVM_RUN loop (ioctl + exit-reason read, no dispatch) on the same guest",
        "by_access": results,
        "summary": summary,
    })
    tmp.cleanup()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
