"""Restore from a snapshot against a cold boot to the same point, in one run.

The guest: tiny-bzImage with the busybox initramfs and ``vmboot.shell=1`` in 256 MiB,
run to its shell prompt. A cold boot there (the peer) is timed from ``Machine(...)`` to
the prompt; the guest is then saved, and restored ``--runs`` times. Per restore:

- ``restore``: ``Machine(...).restore(path)``, from nothing to a VM whose state is all
  back and that the next ``run()`` enters (the goal: at most 10 ms);
- ``restore_to_answer``: the same, then ``echo $((6*7))`` typed in and its answer read
  back from the serial console (guest work included);
- the guest memory the host mapped in from the file (``Rss`` of the mapping, i.e. the
  snapshot bytes read) after ``restore`` and after the answer.

The page cache holds the snapshot file (it was just written), as for the second and
later restores of any snapshot.

Run: ``python bench/snapshot.py [--runs N]``. Writes bench/results/snapshot.json.
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

REPO = Path(__file__).resolve().parent.parent
KERNELS = Path(os.environ.get("VMBOOT_SHARED_KERNELS", REPO.parent / "shared" / "kernels"))
CMDLINE = "console=ttyS0 reboot=k panic=-1 vmboot.shell=1"
MEMORY = "256M"
PROMPT = b"/ # "
TIMEOUT = 600.0


def make_machine(waiter: ConsoleWaiter) -> Machine:
    machine = Machine(KERNELS / "tiny-bzImage", initrd=KERNELS / "tiny-initramfs.cpio",
                      cmdline=CMDLINE, memory=MEMORY, console=waiter)
    waiter.attach(machine)
    return machine


def cold_boot_and_save(path: Path) -> tuple[float, int, float]:
    """Seconds from Machine() to the prompt; snapshot bytes of memory; seconds to save."""
    waiter = ConsoleWaiter()
    t0 = time.perf_counter()
    with make_machine(waiter) as machine:
        waiter.run_until(b"VMBOOT-INIT-OK", TIMEOUT)
        waiter.run_until(PROMPT, TIMEOUT)
        cold = time.perf_counter() - t0
        t1 = time.perf_counter()
        report = machine.snapshot(path)
        save = time.perf_counter() - t1
    return cold, report.memory_bytes_written, save


def restore_once(path: Path) -> dict[str, float]:
    waiter = ConsoleWaiter()
    t0 = time.perf_counter()
    machine = make_machine(waiter).restore(path)
    t_restore = time.perf_counter() - t0
    assert machine.vm is not None
    rss_restore = machine.vm.memory.host_usage().get("Rss", 0)
    with machine:
        machine.push_input(b"echo $((6*7))\n")
        out = waiter.run_until(b"\n" + PROMPT, TIMEOUT)
        t_answer = time.perf_counter() - t0
        rss_answer = machine.vm.memory.host_usage().get("Rss", 0)
    if b"\n42\r\n" not in out:
        raise SystemExit(f"restored guest answered {out!r}")
    return {"restore": t_restore, "restore_to_answer": t_answer,
            "rss_after_restore": rss_restore, "rss_after_answer": rss_answer}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10, help="restores to time (default 10)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmboot-bench-snap-") as tmp:
        path = Path(tmp) / "shell.snap"
        cold, stored, save = cold_boot_and_save(path)
        size = path.stat()
        runs = [restore_once(path) for _ in range(args.runs + 1)][1:]  # first: warm-up
    restore = Timing.of([r["restore"] for r in runs])
    answer = Timing.of([r["restore_to_answer"] for r in runs])
    peer = Timing.of([cold])
    mib = 1 / 2**20
    rss_restore = Timing.of([r["rss_after_restore"] * mib for r in runs])
    rss_answer = Timing.of([r["rss_after_answer"] * mib for r in runs])
    command = f"python bench/snapshot.py --runs {args.runs}"
    print_table([
        ["cold boot to the prompt (peer)", fmt_s(cold), "1 run"],
        ["save at the prompt", fmt_s(save), f"{stored * mib:.1f} MiB of memory stored, "
                                            f"{size.st_blocks * 512 * mib:.1f} MiB on disk"],
        ["Machine.restore()", fmt_s(restore.median),
         f"min {fmt_s(restore.min)} max {fmt_s(restore.max)}; "
         f"{rss_restore.median:.2f} MiB of the file mapped in"],
        ["restore to the answer of echo", fmt_s(answer.median),
         f"min {fmt_s(answer.min)} max {fmt_s(answer.max)}; "
         f"{rss_answer.median:.2f} MiB of the file mapped in"],
    ], ["what (256 MiB guest)", "median", "notes"])
    summary = [
        summary_row("restore a 256 MiB guest at a shell prompt (Machine.restore)", restore,
                    "cold boot to the same prompt", peer, "<= 10 ms", command),
        summary_row("restore, then the answer of a shell command", answer,
                    "cold boot to the same prompt", peer, "", command),
    ]
    path_out = write_results("snapshot", {
        "command": command, "cmdline": CMDLINE, "memory": MEMORY,
        "cold_boot_s": cold, "save_s": save, "memory_bytes_stored": stored,
        "file_apparent_bytes": size.st_size, "file_disk_bytes": size.st_blocks * 512,
        "restore": restore, "restore_to_answer": answer,
        "file_mib_mapped_after_restore": rss_restore, "file_mib_mapped_after_answer": rss_answer,
        "summary": summary,
    })
    print(f"wrote {path_out}")


if __name__ == "__main__":
    main()
