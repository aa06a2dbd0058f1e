"""The whole guest from the host on the tiny-smp kernel (ORC, KASLR, BTF; 1 vCPU here):
every vCPU's trace, the task list against the guest's own /proc, hang verdicts, and the
KASLR trace that ``vmboot run --trace`` prints by default."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, requires_kvm, shared_kernel_file
from vmboot.debug.kaslr import KASLR_ALIGN
from vmboot.debug.symtab import UNKNOWN_SYMBOL
from vmboot.debug.tasks import GuestTask
from vmboot.vmm.machine import Machine, RunResult

pytestmark = [pytest.mark.slow, requires_kvm]

BOOT_LIMIT_S = 300
STEP_S = 2.0
LOCKUP_ATTEMPTS = 20
SHELL_CMDLINE = "console=ttyS0 reboot=k panic=-1 vmboot.shell=1"
PS_START, PS_END = b"PS-START-42", b"PS-END-42"
"""Printed as ``PS-START-$((6*7))``: the terminal's echo of the command does not match."""
_PROC_LINE = re.compile(rb"^P (\d+) (.+?)\r?$", re.M)
_SHELL_PID = re.compile(rb"^SHELL=(\d+)\r?$", re.M)


def run_until(m: Machine, token: bytes, limit: float = BOOT_LIMIT_S, after: int = 0) -> bytes:
    """Run the guest in steps until ``token`` appears in the console past offset ``after``."""
    end = time.monotonic() + limit
    while token not in bytes(m.console.data[after:]):
        if time.monotonic() > end:
            raise AssertionError(f"{token!r} not seen within {limit} s: "
                                 f"{bytes(m.console.data[-1500:])!r}")
        result = m.run(timeout=STEP_S)
        assert result.exit.reason.value == "timeout", result.exit.one_line()
    return bytes(m.console.data[after:])


@pytest.fixture(scope="module")
def guest() -> Iterator[tuple[Machine, dict[int, str], int]]:
    """A busybox shell on tiny-smp; a subshell lists /proc with shell builtins only.

    Yields the machine (stopped between runs), the guest's own {pid: comm} and the
    subshell's PID.
    """
    kernel = shared_kernel_file("tiny-smp-bzImage")
    initrd = shared_kernel_file("tiny-initramfs.cpio")
    with Machine(kernel, initrd=initrd, cmdline=SHELL_CMDLINE) as m:
        run_until(m, b"VMBOOT-INIT-OK")
        run_until(m, b"# ")
        mark = len(m.console.data)
        m.push_input(b"sh\n")
        run_until(m, b"# ", after=mark + 4)
        mark = len(m.console.data)
        m.push_input(b'echo SHELL=$$; echo PS-START-$((6*7)); for d in /proc/[0-9]*; do '
                     b'read -r n < $d/comm; echo "P ${d#/proc/} $n"; done; echo PS-END-$((6*7))\n')
        out = run_until(m, PS_END, after=mark)
        out = out[out.rindex(PS_START):]
        procs = {int(p): n.decode() for p, n in _PROC_LINE.findall(out)}
        shell = _SHELL_PID.search(bytes(m.console.data[mark:]))
        assert shell is not None and procs
        run_until(m, b"# ", after=len(m.console.data) - 8)
        m.run(timeout=STEP_S)  # let the shell go back to sleep on the terminal
        yield m, procs, int(shell.group(1))


def known(names: list[str]) -> bool:
    return UNKNOWN_SYMBOL not in names


def test_idle_trace_of_every_vcpu_with_kaslr(guest: tuple[Machine, dict[int, str], int]) -> None:
    m, _, _ = guest
    slide = m.kaslr_slide()
    assert slide % KASLR_ALIGN == 0
    traces = m.traces()
    assert [t.cpu for t in traces] == [0]
    frames = traces[0].frames
    names = [f.symbol for f in frames]
    assert traces[0].error is None and known(names), names
    assert "do_idle" in names and names[-1].startswith("secondary_startup_64"), names
    assert all(f.reliable for f in frames), names
    assert m.hang_report(samples=3).verdict == "idle"


def comm_of_proc(task: GuestTask, proc_comm: str) -> str:
    """What /proc would show for ``task``, given the guest's line (for kworkers' suffix)."""
    if task.comm.startswith("kworker/") and proc_comm.startswith(task.comm + "-"):
        return proc_comm
    return task.comm


def by_pid(tasks: list[GuestTask]) -> dict[int, GuestTask]:
    return {t.pid: t for t in tasks if t.pid == t.tgid}


def test_task_list_matches_the_guests_own_proc(guest: tuple[Machine, dict[int, str], int]) -> None:
    m, procs, shell_pid = guest
    tasks = m.tasks()
    mine = by_pid(tasks)
    assert mine[0].comm == "swapper/0" and mine[0].running_on == 0
    assert mine[2].comm == "kthreadd"
    assert mine[1].comm == "sh"           # /init exec'd the busybox shell
    assert mine[shell_pid].comm == "sh"   # the subshell that listed /proc
    assert set(procs) <= set(mine)        # every process the guest sees, the host sees
    # /proc/PID/comm of a busy kworker appends "-<workqueue>" to task->comm (wq_worker_comm).
    assert {pid: comm_of_proc(mine[pid], procs[pid]) for pid in procs} == procs
    sleeping = [t for t in tasks if t.running_on is None]
    assert len(sleeping) >= 10
    for t in sleeping:
        names = [f.symbol for f in t.frames]
        assert t.error is None and names[:2] == ["__schedule", "schedule"], t.render()
        assert known(names) and t.state in "SDIP", t.render()
    assert "kthreadd" in [f.symbol for f in mine[2].frames]
    assert mine[2].frames[-1].symbol == "ret_from_fork"
    assert "do_wait" in [f.symbol for f in mine[1].frames]   # pid 1 waits for the subshell


_STAT_LINE = re.compile(rb"^T (\d+) (\d+) \((.*)\) (\S) (.*?)\r?$", re.M)
"""``T <context switches> <the /proc/PID/stat line>``, as :data:`LIST_STAT` prints them."""
STAT_PROCESSOR = 39
"""``/proc/PID/stat`` field of the CPU the task last ran on (proc(5); the state is field 3)."""
LIST_STAT = (b"echo PS-START-$((6*7)); for d in /proc/[0-9]*; do n=0; while read -r k v; do "
             b"case $k in *ctxt_switches:) n=$((n+v));; esac; done < $d/status; "
             b"read -r s < $d/stat; echo \"T $n $s\"; done; echo PS-END-$((6*7))\n")
"""Each process's context switches (/proc/PID/status, read first) and its stat line."""


def read_proc_stat(m: Machine) -> dict[int, tuple[str, int, int, str]]:
    """``{pid: (state, processor, context switches, comm)}`` as the guest's shell reads
    them, the guest left idle afterwards."""
    mark = len(m.console.data)
    m.push_input(LIST_STAT)
    out = run_until(m, PS_END, after=mark)
    out = out[out.rindex(PS_START):]
    run_until(m, b"# ", after=len(m.console.data) - 8)
    m.run(timeout=STEP_S)
    return {int(pid): (state.decode(), int(rest.split()[STAT_PROCESSOR - 4]), int(switches),
                       comm.decode())
            for switches, pid, comm, state, rest in _STAT_LINE.findall(out)}


def unchanged_sleepers(stat: dict[int, tuple[str, int, int, str]],
                       tasks: dict[int, GuestTask]) -> dict[int, tuple[str, int]]:
    """``{pid: (state, cpu)}`` from /proc of the tasks asleep then that have not been
    switched in or out since (the host counts the same switches), so nothing changed."""
    return {pid: (state, cpu) for pid, (state, cpu, switches, _) in stat.items()
            if state in "SDI" and pid in tasks and tasks[pid].switches == switches}


def test_state_letters_and_cpus_agree_with_proc_stat(
        guest: tuple[Machine, dict[int, str], int]) -> None:
    """The state letter and last CPU of every task asleep while the guest's shell read
    /proc/PID/stat and not switched since, against what it read."""
    m, _, _ = guest
    stat = read_proc_stat(m)
    assert len(stat) >= 10 and stat[2][0] in "SI", stat
    tasks = by_pid(m.tasks())
    asleep = unchanged_sleepers(stat, tasks)
    assert len(asleep) >= 10, stat
    assert {pid: (tasks[pid].state, tasks[pid].cpu) for pid in asleep} == asleep
    assert {state for state, _ in asleep.values()} >= {"S", "I"}


@dataclass
class BackgroundRun:
    """A shell command typed into a guest whose ``run()`` goes on in another thread."""

    machine: Machine
    runner: threading.Thread
    mark: int
    """Where the command's console output starts."""
    end: float
    """``time.monotonic()`` by which everything must be over."""

    def output(self) -> bytes:
        return bytes(self.machine.console.data[self.mark:])

    def wait_until(self, done: Callable[[], bool], pause: float) -> None:
        """Poll ``done`` until it holds, while the run goes on and time is left."""
        while not done():
            assert time.monotonic() < self.end and self.runner.is_alive(), self.output()
            time.sleep(pause)


@contextlib.contextmanager
def running_in_background(m: Machine, command: bytes) -> Iterator[BackgroundRun]:
    """Type ``command`` and run the guest in a thread; afterwards stop it, and check the run
    ended because it was asked to."""
    mark = len(m.console.data)
    m.push_input(command)
    results: list[RunResult] = []
    runner = threading.Thread(target=lambda: results.append(m.run(timeout=BOOT_LIMIT_S)))
    runner.start()
    try:
        yield BackgroundRun(m, runner, mark, time.monotonic() + BOOT_LIMIT_S)
    finally:
        m.request_stop()
        runner.join(timeout=BOOT_LIMIT_S)
    assert results and results[0].exit.reason.value == "stopped", results


def test_traces_and_tasks_while_run_is_in_progress(
        guest: tuple[Machine, dict[int, str], int]) -> None:
    """Both calls pause the running guest (Machine.when_stopped) and it goes on afterwards:
    a command sleeping at the time of the calls finishes after them, in the same run."""
    m, _, _ = guest
    vcpus = m.vcpu_set
    assert vcpus is not None

    def sleeping_in_nanosleep(tasks: list[GuestTask]) -> bool:
        return any(t.comm == "sleep" and t.state == "S"
                   and "hrtimer_nanosleep" in [f.symbol for f in t.frames] for t in tasks)

    with running_in_background(m, b"sleep 4; echo SLEPT-$((6*7))\n") as run:
        # each tasks() call pauses the run for it
        run.wait_until(lambda: sleeping_in_nanosleep(m.tasks()), 0.5)
        assert vcpus.running
        traces = m.traces()
        tasks = m.tasks()
        at_calls = run.output()
        assert vcpus.running and run.runner.is_alive()   # the same run goes on
        assert [t.cpu for t in traces] == [0]
        assert traces[0].error is None or traces[0].user_mode, traces[0].error
        assert sleeping_in_nanosleep(tasks)
        assert b"SLEPT-42" not in at_calls
        run.wait_until(lambda: b"SLEPT-42" in run.output(), 0.2)
    run_until(m, b"# ", after=len(m.console.data) - 8)


def test_a_cpu_spinning_in_the_kernel_is_a_lockup(guest: tuple[Machine, dict[int, str], int]) -> None:
    m, _, _ = guest
    m.push_input(b"dd if=/dev/zero of=/dev/null bs=1M\n")  # runs until the guest ends
    # dd's start (exec, faulting its buffer in) is slow under an emulating hypervisor; once
    # it only copies, every sample finds CPU 0 in read_zero.
    reports = []
    for _ in range(LOCKUP_ATTEMPTS):
        reports.append(m.hang_report())
        if reports[-1].verdict == "lockup":
            break
    report = reports[-1]
    assert report.verdict == "lockup", [r.render() for r in reports]
    assert report.cpu == 0 and report.function is not None
    names = [f.symbol for f in report.traces[0].frames]
    assert report.function in names and "ksys_read" in names, report.render()


def test_run_trace_defaults_name_the_frames_of_a_kaslr_kernel(tmp_path: Path) -> None:
    """``vmboot run --trace`` with no symbol options and no nokaslr: every frame named."""
    kernel = shared_kernel_file("tiny-smp-bzImage")
    initrd = shared_kernel_file("tiny-initramfs-min.cpio")
    proc = subprocess.run(
        [sys.executable, "-m", "vmboot", "run", str(kernel), "--initrd", str(initrd), "--timeout",
         "120", "--trace", "--tasks", "--json", "--append",
         "console=ttyS0 reboot=k panic=-1 vmboot.hold=1"],
        capture_output=True, text=True, timeout=400, cwd=REPO,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 124, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    cpu0 = summary["cpu_traces"][0]
    names = [f["symbol"] for f in cpu0["frames"]]
    assert cpu0["error"] is None and len(names) >= 3 and known(names), summary["stack_trace"]
    assert "nokaslr" not in proc.stderr
    assert summary["hang"]["verdict"] in ("idle", "running", "lockup")
    comms = {t["pid"]: t["comm"] for t in summary["tasks"]}
    assert comms[0] == "swapper/0" and comms[2] == "kthreadd"
