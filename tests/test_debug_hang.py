"""Hang verdicts from per-CPU samples, blocked tasks across samples, and oops spotting."""

from __future__ import annotations

import pytest

from vmboot.debug.cpus import CpuTrace
from vmboot.debug.frames import StackFrame
from vmboot.debug.hang import LOCKUP_DEPTH, classify
from vmboot.debug.tasks import GuestTask, still_blocked
from vmboot.errors import UsageError
from vmboot.vmm.machine import Machine

IDLE = ["native_safe_halt", "default_idle_call", "do_idle", "cpu_startup_entry"]
SPIN = ["read_zero", "vfs_read", "ksys_read", "do_syscall_64"]


def trace(cpu: int, names: list[str], user: bool = False) -> CpuTrace:
    frames = [StackFrame(i, 0xFFFF_FFFF_8100_0000 + i, n, 0) for i, n in enumerate(names)]
    return CpuTrace(cpu, {}, [] if user else frames, user_mode=user)


def test_all_cpus_idle_and_a_silent_console_is_idle() -> None:
    rounds = [[trace(0, IDLE), trace(1, IDLE)] for _ in range(3)]
    assert classify(rounds, console_silent=True).verdict == "idle"
    assert classify(rounds, console_silent=False).verdict == "running"


def test_one_cpu_in_the_same_function_every_time_is_a_lockup_on_that_cpu() -> None:
    rounds = [[trace(0, IDLE), trace(1, ["clear_page_erms", *SPIN] if i % 2 else SPIN)]
              for i in range(4)]
    report = classify(rounds, console_silent=False)
    assert (report.verdict, report.cpu, report.function) == ("lockup", 1, "read_zero")
    assert "CPU 1 stayed in read_zero across 4 samples" in report.render()
    assert "read_zero" in report.render()


def test_samples_inside_an_interrupt_on_the_stuck_code_name_the_interrupted_function() -> None:
    # The soft-lockup watchdog prints from the timer interrupt on the stuck CPU: some
    # samples find the CPU printing, with the spinning system call under the interrupt.
    spin = ["__x64_sys_sethostname", "do_syscall_64", "asm_exc_page_fault"]
    printing = ["io_serial_in", "serial8250_console_write", "console_unlock", "vprintk_emit",
                "_printk", "watchdog_timer_fn", "__hrtimer_run_queues", "hrtimer_interrupt",
                "__sysvec_apic_timer_interrupt", "sysvec_apic_timer_interrupt",
                "asm_sysvec_apic_timer_interrupt", *spin]
    rounds = [[trace(0, IDLE), trace(1, printing if i % 2 else spin)] for i in range(4)]
    report = classify(rounds, console_silent=False)
    assert (report.verdict, report.cpu, report.function) == ("lockup", 1, "__x64_sys_sethostname")
    # an interrupt taken in the idle loop leaves the CPU idle
    idle = [[trace(0, [*printing[:11], *IDLE])] for _ in range(3)]
    assert classify(idle, console_silent=True).verdict == "idle"


def test_changing_functions_user_mode_or_a_deep_common_caller_are_not_lockups() -> None:
    # A long initcall: the innermost frames move, the common caller is deeper than compared.
    deep = [[trace(0, [*(f"f{i}_{d}" for d in range(LOCKUP_DEPTH)), "internal_create_group"])]
            for i in range(4)]
    user = [[trace(0, SPIN)], [trace(0, [], user=True)], [trace(0, SPIN)]]
    entry_only = [[trace(0, [f"f{i}", "do_syscall_64"])] for i in range(3)]
    idle_once = [[trace(0, SPIN)], [trace(0, ["read_zero", *IDLE])], [trace(0, SPIN)]]
    for rounds in (deep, user, entry_only, idle_once):
        assert classify(rounds, console_silent=True).verdict == "running"


def task(pid: int, state: int, switches: int) -> GuestTask:
    return GuestTask(0x1000 * pid, pid, pid, f"t{pid}", "D", state, 0, switches=switches)


def test_blocked_tasks_are_those_in_d_without_a_context_switch_between_samples() -> None:
    before = [task(1, 2, 5), task(2, 2, 7), task(3, 0x402, 1), task(4, 1, 3)]
    after = [task(1, 2, 5), task(2, 2, 8), task(3, 0x402, 1), task(4, 2, 3)]
    assert [t.pid for t in still_blocked(before, after)] == [1]


def test_an_oops_without_a_panic_is_recorded_and_the_panic_watch_still_works() -> None:
    m = Machine(b"not started")
    watch = m.console.line_watcher
    assert watch is not None
    for line in [b"[ 1.0] BUG: kernel NULL pointer dereference, address: 0000000000000000",
                 b"[ 1.1] Oops: 0002 [#1] SMP", b"[ 1.2] Call Trace:",
                 b"[ 1.3] ---[ end trace 0000000000000000 ]---",
                 b"[ 2.0] Oops: 0000 [#2] SMP", b"[ 2.1] ---[ end trace 0000000000000000 ]---"]:
        watch(line)
    assert [msg for msg, _ in m._panic.oopses] == [
        "BUG: kernel NULL pointer dereference, address: 0000000000000000", "Oops: 0000 [#2] SMP"]
    assert m._panic.message is None
    watch(b"[ 3.0] Kernel panic - not syncing: Fatal exception")
    assert m._panic.message == "Kernel panic - not syncing: Fatal exception"


def test_whole_guest_views_need_a_started_machine() -> None:
    m = Machine(b"not started")
    for call in (m.traces, m.tasks, m.hang_report):
        with pytest.raises(UsageError, match=r"the machine is not started or already closed"):
            call()
    assert m.kaslr_slide() == 0  # nothing to detect from yet, and nothing cached
    assert m._slide is None
