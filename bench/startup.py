"""Start-up: vmboot's import time, and process start to the guest's first console byte vs QEMU.

1. Import: wall time of ``python -c "import vmboot"`` and ``python -c "import vmboot.vmm.machine"``
   against ``python -c pass`` (the interpreter's own start-up, the peer), interleaved. The JSON
   also keeps vmboot's cumulative self-reported time from ``python -X importtime -c "import
   vmboot"`` (its own line only, interpreter start-up excluded).
2. First guest output: wall time from starting the process to the first console bytes of a
   guest whose first I/O is that write (the PVH loop guest of :mod:`vmproc` with N=0: ``cli``,
   ``mov``, ``call``, then ``EXIT-LOOP-START`` to COM1). This is a proxy for "time to the first
   guest instruction": it adds one serial exit and the pipe, the same for every VMM. For QEMU pc
   it includes SeaBIOS and the PVH option ROM, for microvm qboot; for vmboot, CPython start-up,
   imports, building the VM and loading the ELF. vmboot's own ``BootTimings.first_instruction``
   (``vmboot run --json``; from ``Machine.__enter__`` to just before the first KVM_RUN) is kept
   in the JSON.

vmboot's .pyc files are written first (``compileall``), as installing a wheel does: with
``PYTHONDONTWRITEBYTECODE=1`` an editable install recompiles every module at every start.

Run: ``python bench/startup.py [--runs 5] [--import-runs 15]``. Writes bench/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Timing, compile_bytecode, fmt_s, print_table, summary_row, write_results
from vmproc import START, build_loop_guest, qemu_run, vmboot_run, watch

IMPORTS = {"python -c pass": "pass", "import vmboot": "import vmboot",
           "import vmboot.vmm.machine": "import vmboot.vmm.machine"}


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def importtime_self(module: str = "vmboot") -> float:
    """Cumulative microseconds -X importtime reports for ``module``'s own import, in seconds."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                         capture_output=True, text=True, check=True).stderr
    for line in err.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)$", line)
        if m and m.group(2) == module:
            return int(m.group(1)) / 1e6
    raise SystemExit(f"no {module} line in -X importtime output")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="runs of each VMM to the first console byte")
    ap.add_argument("--import-runs", type=int, default=15)
    args = ap.parse_args()
    command = " ".join(["python bench/startup.py", *sys.argv[1:]])
    bytecode = compile_bytecode()
    print(f"vmboot bytecode: {bytecode}")

    imports: dict[str, list[float]] = {k: [] for k in IMPORTS}
    for i in range(args.import_runs + 1):  # round 0: warm-up (page cache)
        for name, code in IMPORTS.items():
            t = wall([sys.executable, "-c", code])
            if i:
                imports[name].append(t)
    selfreported = Timing.of([importtime_self() for _ in range(5)])
    imp = {k: Timing.of(v) for k, v in imports.items()}

    guest = build_loop_guest(Path(tempfile.mkdtemp(prefix="vmboot-startup-bench-")), 0)
    vmms = {
        "vmboot run": (vmboot_run(guest, 64, "--json"), False),
        "QEMU microvm (KVM)": (qemu_run("QEMU microvm (KVM)", guest, 64), True),
        "QEMU pc (KVM)": (qemu_run("QEMU pc (KVM)", guest, 64), False),
    }
    first: dict[str, list[float]] = {k: [] for k in vmms}
    internal: list[dict[str, float]] = []
    for i in range(args.runs + 1):  # round 0: warm-up
        for name, (cmd, kill) in vmms.items():
            w = watch(cmd, [START], kill_after_last=kill, timeout=120)
            t = w.markers[START.decode()]
            if name == "vmboot run":
                last = w.output.decode(errors="replace").strip().splitlines()[-1]
                timings = json.loads(last[last.index("{"):])["timings"]
                if i:
                    internal.append(timings)
            print(f"run {i}/{args.runs}  {name:<20} first console bytes at {fmt_s(t)}", flush=True)
            if i:
                first[name].append(t)
    firsts = {k: Timing.of(v) for k, v in first.items()}

    rows = [[k, fmt_s(t.min), fmt_s(t.median), fmt_s(t.max)] for k, t in {**imp, **firsts}.items()]
    print_table(rows, ["what", "min", "median", "max"])
    print(f"-X importtime, vmboot's own cumulative line: {fmt_s(selfreported.median)}")
    fi = Timing.of([t["first_instruction"] for t in internal])
    print(f"vmboot BootTimings.first_instruction (from Machine.__enter__): {fmt_s(fi.median)}")

    peer = "python -c pass"
    summary = [
        summary_row("process wall time of `python -c \"import vmboot\"`", imp["import vmboot"],
                    "`python -c pass` (interpreter start-up)", imp[peer], "-", command),
        summary_row("process wall time of `python -c \"import vmboot.vmm.machine\"`",
                    imp["import vmboot.vmm.machine"], "`python -c pass` (interpreter start-up)",
                    imp[peer], "-", command),
    ]
    for q in ("QEMU microvm (KVM)", "QEMU pc (KVM)"):
        summary.append(summary_row(
            "process start to the guest's first serial byte (proxy for the first guest "
            "instruction), `vmboot run`", firsts["vmboot run"],
            f"{q}, same guest", firsts[q], "-", command))
    path = write_results("startup", {
        "command": command, "bytecode": bytecode,
        "import_wall": imp, "importtime_vmboot_cumulative": selfreported,
        "first_console_byte_from_process_start": firsts,
        "commands": {name: " ".join(cmd) for name, (cmd, _) in vmms.items()},
        "vmboot_boot_timings": {k: Timing.of([t[k] for t in internal])
                                for k in ("load", "first_instruction", "first_console_byte")},
        "vmboot_boot_timings_note": "BootTimings: seconds since Machine.__enter__ (not process start)",
        "import_overhead_median_s": {k: imp[k].median - imp[peer].median for k in IMPORTS if k != peer},
        "summary": summary,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
