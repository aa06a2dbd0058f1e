"""The guest's task list from the host, and BTF loading.

* tasks: ``Machine.tasks()`` (every task with its symbolised kernel stack, ORC-unwound) on
  a booted tiny-smp guest (KASLR, 1 vCPU) whose shell started background subshells until
  about 100 tasks exist; timed after the guest is stopped, with symbols, ORC and BTF
  already loaded (a second call). Goal: <= 50 ms. Peer, in the same run: ``Machine.traces()``
  (one vCPU's trace), the smallest host-side look at the guest.
* btf: ``Btf`` reading the ``.BTF`` of the Debian cloud kernel (taken from its vmlinuz by
  vmboot, then read cold) and finding ``task_struct.thread.sp``, against ``pahole -F btf
  -C task_struct`` on the same ELF written to a temporary file (pahole loads the whole BTF
  to print one struct). Goal: <= 0.5x pahole. Also shown, against the same peer: every
  offset the task walk reads (``TaskLayout.from_btf``) and indexing every type (``len``).

Run: ``python bench/tasks.py [--runs N] [--tasks N]``. Writes bench/results/tasks.json.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import Timing, fmt_s, measure, print_table, summary_row, write_results

from vmboot.debug.btf import Btf
from vmboot.debug.tasks import TaskLayout
from vmboot.vmm.machine import Machine

TASKS_GOAL_S = 0.050
BTF_GOAL_RATIO = 0.5
DEFAULT_TASKS = 100
STEP_S = 2.0
BOOT_LIMIT_S = 400
CMDLINE = "console=ttyS0 reboot=k panic=-1 quiet vmboot.shell=1"


def run_until(m: Machine, token: bytes, after: int = 0) -> None:
    end = time.monotonic() + BOOT_LIMIT_S
    while token not in bytes(m.console.data[after:]):
        if time.monotonic() > end:
            sys.exit(f"{token!r} not seen within {BOOT_LIMIT_S} s")
        m.run(timeout=STEP_S)


def bench_tasks(kernels: Path, runs: int, wanted: int) -> tuple[int, Timing, Timing]:
    with Machine(kernels / "tiny-smp-bzImage", initrd=kernels / "tiny-initramfs.cpio",
                 cmdline=CMDLINE) as m:
        run_until(m, b"VMBOOT-INIT-OK")
        run_until(m, b"# ")
        have = len(m.tasks())
        extra = max(0, wanted - have)
        mark = len(m.console.data)
        # Background subshells that sleep opening a FIFO nobody writes: forks, no execs.
        m.push_input(f"mkfifo /tmp/idle; i=0; while [ $i -lt {extra} ]; do "
                     f"(read x < /tmp/idle) & i=$((i+1)); done; echo SPAWNED-$((6*7))\n".encode())
        run_until(m, b"SPAWNED-42", mark)
        for _ in range(3):
            m.run(timeout=STEP_S)
        count = len(m.tasks())
        t_tasks = measure(m.tasks, runs)
        t_trace = measure(m.traces, runs)
    return count, t_tasks, t_trace


def bench_btf(runs: int) -> tuple[str, int, Timing, Timing, Timing, Timing] | None:
    from debian_kernel import debian_kernel
    from vmboot.elf import ElfFile
    from vmboot.linux.loader.vmlinux import uncompressed_kernel

    image = debian_kernel()
    if image is None or shutil.which("pahole") is None:
        return None
    data = uncompressed_kernel(image.read_bytes(), image.name)
    elf = ElfFile(data, image.name)
    sec = elf.section(".BTF")
    assert sec is not None
    raw = bytes(elf.section_data(sec))
    with tempfile.TemporaryDirectory(prefix="vmboot-bench-") as tmp:
        path = Path(tmp) / "vmlinux"
        path.write_bytes(data)
        t_btf = measure(lambda: Btf(raw, image.name).offsetof("task_struct", "thread.sp"), runs)
        t_layout = measure(lambda: TaskLayout.from_btf(Btf(raw, image.name)), runs)
        t_all = measure(lambda: len(Btf(raw, image.name)), runs)
        t_pahole = measure(lambda: subprocess.run(
            ["pahole", "-F", "btf", "-C", "task_struct", str(path)], stdout=subprocess.DEVNULL,
            check=True), runs)
    return image.name, len(Btf(raw)), t_btf, t_pahole, t_layout, t_all


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--tasks", type=int, default=DEFAULT_TASKS)
    args = ap.parse_args()
    from conftest import SHARED_KERNELS

    count, t_tasks, t_trace = bench_tasks(SHARED_KERNELS, args.runs, args.tasks)
    rows = [[f"Machine.tasks(), {count} tasks", fmt_s(t_tasks.min), fmt_s(t_tasks.median),
             fmt_s(t_tasks.max), f"{t_tasks.median / t_trace.median:.1f}x one trace"],
            ["Machine.traces(), 1 vCPU (peer)", fmt_s(t_trace.min), fmt_s(t_trace.median),
             fmt_s(t_trace.max), "1.0x"]]
    command = f"python bench/tasks.py --runs {args.runs} --tasks {args.tasks}"
    summary = [summary_row(f"tasks: list {count} guest tasks with stacks", t_tasks,
                           "Machine.traces() (one vCPU)", t_trace,
                           f"<= {TASKS_GOAL_S * 1000:.0f} ms", command)]
    btf = bench_btf(args.runs)
    payload: dict[str, object] = {"tasks": count, "list_tasks": t_tasks, "one_trace": t_trace,
                                  "tasks_goal_s": TASKS_GOAL_S, "command": command}
    if btf is not None:
        name, types, t_btf, t_pahole, t_layout, t_all = btf
        rows += [[f"Btf() of {name}: task_struct.thread.sp", fmt_s(t_btf.min),
                  fmt_s(t_btf.median), fmt_s(t_btf.max),
                  f"{t_btf.median / t_pahole.median:.2f}x pahole"],
                 ["Btf(): TaskLayout (every offset read)", fmt_s(t_layout.min),
                  fmt_s(t_layout.median), fmt_s(t_layout.max),
                  f"{t_layout.median / t_pahole.median:.2f}x pahole"],
                 [f"Btf(): index all {types} types", fmt_s(t_all.min), fmt_s(t_all.median),
                  fmt_s(t_all.max), f"{t_all.median / t_pahole.median:.2f}x pahole"],
                 ["pahole -F btf -C task_struct (peer)", fmt_s(t_pahole.min),
                  fmt_s(t_pahole.median), fmt_s(t_pahole.max), "1.00x"]]
        summary.append(summary_row(f"btf: task_struct.thread.sp from {name}'s .BTF ({types} "
                                   f"types)", t_btf, "pahole -F btf -C task_struct", t_pahole,
                                   f"<= {BTF_GOAL_RATIO}x pahole", command))
        payload.update({"btf_kernel": name, "btf_types": types, "btf": t_btf,
                        "btf_task_layout": t_layout, "btf_all_types": t_all,
                        "pahole": t_pahole, "btf_goal_ratio": BTF_GOAL_RATIO})
        print(f"goal: btf <= {BTF_GOAL_RATIO}x pahole -> "
              f"{'met' if t_btf.median <= BTF_GOAL_RATIO * t_pahole.median else 'NOT met'}")
    print_table(rows, ["what", "min", "median", "max", "figure"])
    print(f"goal: tasks <= {TASKS_GOAL_S * 1000:.0f} ms -> "
          f"{'met' if t_tasks.median <= TASKS_GOAL_S else 'NOT met'}")
    payload["summary"] = summary
    print(f"wrote {write_results('tasks', payload)}")


if __name__ == "__main__":
    main()
