"""Loader throughput: ``prepare()`` of a Debian cloud kernel + 2 MiB initrd into 256 MiB,
against a bare memcpy of the same bytes into the same kind of memory (the physical limit).

Run: ``python bench/loader.py [--runs N] [--kernel PATH]``. Writes bench/results/loader.json.
Goal: prepare() takes at most 2x the memcpy time.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import fmt_s, measure, print_table, summary_row, write_results

from vmboot.hv import MemoryVM
from vmboot.linux import BootOptions, BzImage, load_kernel

MiB = 1 << 20
GUEST_RAM = 256 * MiB
INITRD_SIZE = 2 * MiB


def find_kernel(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    from debian_kernel import debian_kernel, skip_reason

    path = debian_kernel()
    if path is None:
        sys.exit(f"no Debian kernel: {skip_reason()} (pass --kernel PATH)")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--kernel")
    args = ap.parse_args()
    kpath = find_kernel(args.kernel)
    kernel = load_kernel(kpath)
    if not isinstance(kernel, BzImage):
        sys.exit(f"{kpath}: not a bzImage (this benchmark copies a bzImage's payload)")
    initrd = os.urandom(INITRD_SIZE)
    payload = bytes(kernel.payload())
    copied = len(payload) + len(initrd)
    opts = BootOptions(cmdline="console=ttyS0 reboot=k panic=-1", initrd=initrd)

    # vmboot: a fresh VM per run, as a user booting a new guest would have.
    def vmboot_prepare() -> None:
        with MemoryVM(GUEST_RAM) as vm:
            kernel.prepare(vm, opts)

    # Peer: memcpy of the same bytes into a fresh anonymous mapping of the same size.
    def bare_memcpy() -> None:
        m = mmap.mmap(-1, GUEST_RAM, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        base = ctypes.addressof(ctypes.c_char.from_buffer(m))
        ctypes.memmove(base + 0x1000000, payload, len(payload))
        ctypes.memmove(base + GUEST_RAM - 8 * MiB, initrd, len(initrd))
        del base
        m.close()

    t_vm = measure(vmboot_prepare, args.runs)
    t_mc = measure(bare_memcpy, args.runs)
    ratio = t_vm.median / t_mc.median
    print(f"kernel {kpath} ({len(payload) / MiB:.1f} MiB payload, init_size "
          f"{kernel.init_size / MiB:.1f} MiB) + {INITRD_SIZE // MiB} MiB initrd into "
          f"{GUEST_RAM // MiB} MiB; {args.runs} runs")
    print_table(
        [["vmboot prepare()", fmt_s(t_vm.min), fmt_s(t_vm.median), fmt_s(t_vm.max), f"{ratio:.2f}x"],
         ["bare memcpy", fmt_s(t_mc.min), fmt_s(t_mc.median), fmt_s(t_mc.max), "1.00x"]],
        ["what", "min", "median", "max", "vs memcpy"])
    print(f"goal: <= 2.00x memcpy -> {'met' if ratio <= 2 else 'NOT met'}")
    out = write_results("loader", {
        "kernel": str(kpath), "payload_bytes": len(payload), "init_size": kernel.init_size,
        "initrd_bytes": INITRD_SIZE, "guest_ram": GUEST_RAM, "bytes_copied": copied,
        "vmboot_prepare": t_vm, "peer": "bare memcpy (ctypes.memmove) into a fresh mmap",
        "bare_memcpy": t_mc, "ratio_median": ratio, "goal_ratio": 2.0,
        "command": f"python bench/loader.py --runs {args.runs}",
        "summary": [summary_row(
            f"prepare(): {kpath.name} + {INITRD_SIZE // MiB} MiB initrd into {GUEST_RAM // MiB} MiB",
            t_vm, "bare memcpy of the same bytes", t_mc, "<= 2x",
            f"python bench/loader.py --runs {args.runs}")],
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
