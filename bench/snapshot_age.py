"""What a snapshot's age costs its restore, with the guest's default clocksource and with
``clocksource=jiffies`` (``vmboot.vmm.snapshots.SNAPSHOT_CLOCKSOURCE``), in one run.

Under PVM the guest reads the host's TSC whatever ``IA32_TSC`` is set to, so a restored
guest whose clocksource is the TSC finds its clock moved on by the time the snapshot sat
on disk, and the kernel walks its timers through that gap in emulated ring 0. With
jiffies the guest's time continues from the snapshot.

Two guests (tiny-bzImage with the busybox initramfs and ``vmboot.shell=1`` in 256 MiB),
one per clocksource, are booted to their shell prompt and saved one after the other. Each
is then restored at each of ``--ages`` seconds after its save, and timed from
``Machine(...).restore()`` to the answer of ``echo $((6*7))`` on the serial console.

Run: ``python bench/snapshot_age.py [--ages 0,60,180]``. Writes
bench/results/snapshot_age.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Timing, fmt_s, print_table, summary_row, write_results

from vmboot.vmm.console_wait import ConsoleWaiter
from vmboot.vmm.machine import Machine
from vmboot.vmm.snapshots import SNAPSHOT_CLOCKSOURCE

REPO = Path(__file__).resolve().parent.parent
KERNELS = Path(os.environ.get("VMBOOT_SHARED_KERNELS", REPO.parent / "shared" / "kernels"))
BASE_CMDLINE = "console=ttyS0 reboot=k panic=-1 vmboot.shell=1"
CLOCKSOURCES = {"default": BASE_CMDLINE, "jiffies": f"{BASE_CMDLINE} {SNAPSHOT_CLOCKSOURCE}"}
MEMORY = "256M"
PROMPT = b"/ # "
TIMEOUT = 900.0


def make_machine(cmdline: str, waiter: ConsoleWaiter) -> Machine:
    machine = Machine(KERNELS / "tiny-bzImage", initrd=KERNELS / "tiny-initramfs.cpio",
                      cmdline=cmdline, memory=MEMORY, console=waiter)
    waiter.attach(machine)
    return machine


def boot_and_save(cmdline: str, path: Path) -> float:
    """Boot to the prompt and save; returns the host's monotonic time of the save."""
    waiter = ConsoleWaiter()
    with make_machine(cmdline, waiter) as machine:
        waiter.run_until(PROMPT, TIMEOUT)
        machine.snapshot(path)
        return time.monotonic()


def restore_to_answer(cmdline: str, path: Path) -> float:
    waiter = ConsoleWaiter()
    t0 = time.perf_counter()
    machine = make_machine(cmdline, waiter).restore(path)
    with machine:
        machine.push_input(b"echo $((6*7))\n")
        out = waiter.run_until(b"\n" + PROMPT, TIMEOUT)
    if b"\n42\r\n" not in out:
        raise SystemExit(f"restored guest answered {out!r}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ages", default="0,60,180",
                    help="snapshot ages in seconds to restore at, ascending (default 0,60,180)")
    args = ap.parse_args()
    ages = sorted(float(a) for a in args.ages.split(","))
    answers: dict[str, dict[float, float]] = {name: {} for name in CLOCKSOURCES}
    actual_age: dict[str, dict[float, float]] = {name: {} for name in CLOCKSOURCES}
    with tempfile.TemporaryDirectory(prefix="vmboot-bench-snapage-") as tmp:
        saved = {name: (Path(tmp) / f"{name}.snap") for name in CLOCKSOURCES}
        saved_at = {name: boot_and_save(cmdline, saved[name])
                    for name, cmdline in CLOCKSOURCES.items()}
        for age in ages:
            for name, cmdline in CLOCKSOURCES.items():
                wait = saved_at[name] + age - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                actual_age[name][age] = time.monotonic() - saved_at[name]
                answers[name][age] = restore_to_answer(cmdline, saved[name])
                print(f"{name:8} age {actual_age[name][age]:6.1f} s: "
                      f"answer after {fmt_s(answers[name][age])}", flush=True)
    command = f"python bench/snapshot_age.py --ages {args.ages}"
    rows = []
    summary = []
    for age in ages:
        default = answers["default"][age]
        jiffies = answers["jiffies"][age]
        rows.append([f"{actual_age['default'][age]:.0f} s", fmt_s(default), fmt_s(jiffies),
                     f"{default / jiffies:.2f}x"])
    print_table(rows, ["snapshot age", "default clocksource", "clocksource=jiffies", "ratio"])
    oldest = ages[-1]
    summary.append(summary_row(
        f"restore to a shell answer, snapshot {oldest:.0f} s old, clocksource=jiffies",
        Timing.of([answers["jiffies"][oldest]]),
        "the same guest with its default clocksource", Timing.of([answers["default"][oldest]]),
        "", command))
    out = write_results("snapshot_age", {
        "command": command, "cmdline": CLOCKSOURCES, "memory": MEMORY,
        "ages_s": {name: {str(a): actual_age[name][a] for a in ages} for name in CLOCKSOURCES},
        "restore_to_answer_s": {name: {str(a): answers[name][a] for a in ages}
                                for name in CLOCKSOURCES},
        "summary": summary,
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
