"""Cost per port-I/O exit, whole VMM included: ``vmboot run`` against QEMU on the same guest.

The guest (a 1 KiB PVH ELF built here with GNU as/ld, see :mod:`vmproc`) prints
``EXIT-LOOP-START`` on COM1, writes ``--exits`` bytes to port 0x500 (claimed by nothing in
either VMM: QEMU's unassigned-I/O handler, vmboot's bus default), prints ``EXIT-LOOP-END`` and
resets through the i8042. Every VMM runs it for N=0 and N=``--exits``; the cost per exit is

    (interval(N) - median interval(0)) / N,   interval = END marker time - START marker time

as seen on the VMM's stdout, so start-up (SeaBIOS on pc, Python start-up for vmboot) is out of
it and each figure covers the full round trip: KVM_RUN returns to user space, the VMM decodes
the exit, dispatches the write to its (empty) port handler and re-enters the guest. The
process's wall time to exit, (N - 0) / N, is kept in the JSON as a cross-check for the VMMs
that exit by themselves. Runs of all VMMs are interleaved.

Compare with ``bench/exit_overhead.py`` (a bare Python KVM_RUN loop, ring-0 64-bit guest,
measured in another run): that is the floor for a Python VMM.

Run: ``python bench/exit_vs_qemu.py [--runs 3] [--exits 200000]``.
Writes bench/results/exit_vs_qemu.json. It has no goal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, Timing, print_table, summary_row, write_results
from vmproc import END, START, build_loop_guest, qemu_run, vmboot_run, watch

MEMORY_MIB = 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--exits", type=int, default=200_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vmboot-exit-bench-"))
    guests = {n: build_loop_guest(tmp, n) for n in (0, args.exits)}
    vmms: dict[str, Callable[[Path], tuple[list[str], bool]]] = {
        "vmboot run": lambda g: (vmboot_run(g, MEMORY_MIB), False),
        "QEMU pc (KVM)": lambda g: (qemu_run("QEMU pc (KVM)", g, MEMORY_MIB), False),
        "QEMU microvm (KVM)": lambda g: (qemu_run("QEMU microvm (KVM)", g, MEMORY_MIB), True),
    }
    interval: dict[tuple[str, int], list[float]] = {}
    wall: dict[tuple[str, int], list[float]] = {}
    for run in range(args.runs + 1):  # round 0 is a warm-up (page cache, QEMU's ROMs)
        for name, make in vmms.items():
            for n, guest in guests.items():
                cmd, kill = make(guest)
                w = watch(cmd, [START, END], kill_after_last=kill, timeout=120)
                iv = w.markers[END.decode()] - w.markers[START.decode()]
                print(f"run {run}/{args.runs}  {name:<20} N={n:<7} loop {iv * 1e3:8.1f} ms"
                      + (f"  exit {w.exited:6.2f} s" if w.exited is not None else ""), flush=True)
                if run:
                    interval.setdefault((name, n), []).append(iv)
                    if w.exited is not None:
                        wall.setdefault((name, n), []).append(w.exited)

    n = args.exits
    per_exit: dict[str, Timing] = {}
    per_exit_wall: dict[str, Timing] = {}
    for name in vmms:
        base = statistics.median(interval[(name, 0)])
        per_exit[name] = Timing.of([(iv - base) / n for iv in interval[(name, n)]])
        if (name, 0) in wall:
            wbase = statistics.median(wall[(name, 0)])
            per_exit_wall[name] = Timing.of([(t - wbase) / n for t in wall[(name, n)]])
    rows = [[name, *(f"{v * 1e6:.2f}" for v in (t.min, t.median, t.max)),
             f"{per_exit_wall[name].median * 1e6:.2f}" if name in per_exit_wall else "-"]
            for name, t in per_exit.items()]
    print(f"{n} port writes to {0x500:#x}, {args.runs} runs; microseconds per exit")
    print_table(rows, ["VMM", "min", "median", "max", "median by process wall time"])

    bare = None
    with_bare = RESULTS / "exit_overhead.json"
    if with_bare.exists():
        data = json.loads(with_bare.read_text())
        port = data.get("by_access", {}).get("port", data)
        bare = {"bare_kvm_run_loop": port.get("bare"), "vmboot_runner": port.get("runner"),
                "when": data.get("when"), "note": "from bench/exit_overhead.py, another run and guest"}
    command = " ".join(["python bench/exit_vs_qemu.py", *sys.argv[1:]])
    ours = per_exit["vmboot run"]
    path = write_results("exit_vs_qemu", {
        "command": command, "exits": n, "port": 0x500, "memory_mib": MEMORY_MIB,
        "unit": "seconds per exit",
        "method": "(END-START marker interval at N - median of it at N=0) / N, per run",
        "commands": {name: " ".join(make(guests[n])[0]) for name, make in vmms.items()},
        "per_exit": per_exit,
        "per_exit_by_process_wall_time": per_exit_wall,
        "marker_interval": {f"{k[0]} | N={k[1]}": Timing.of(v) for k, v in interval.items()},
        "process_wall_time": {f"{k[0]} | N={k[1]}": Timing.of(v) for k, v in wall.items()},
        "compare_exit_overhead": bare,
        "summary": [
            summary_row("time per port-I/O exit to an unclaimed port, whole VMM (vmboot run)", ours,
                        f"{peer}, same guest and KVM", per_exit[peer], "-", command)
            for peer in ("QEMU microvm (KVM)", "QEMU pc (KVM)")
        ],
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
