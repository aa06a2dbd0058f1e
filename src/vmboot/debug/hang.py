"""Why is the guest not making progress? A verdict from a few looks at every vCPU.

:func:`classify` takes several rounds of per-CPU traces (:class:`~vmboot.debug.cpus.CpuTrace`,
one round per sample, taken some time apart) and says:

* ``idle``: every CPU was in the idle loop at every sample and the console was silent;
* ``lockup``: a CPU was in kernel mode, outside the idle loop, at every sample, and one
  function (other than the entry code that is under every stack) was among the innermost
  :data:`LOCKUP_DEPTH` frames each time: the CPU is reported with that function and its
  last trace. (A long but progressing kernel job, such as an initcall under an emulating
  hypervisor, moves its innermost frames between samples.) A sample taken while an
  interrupt runs on top of the stuck code (the soft-lockup watchdog printing its report,
  say) also counts the innermost frames under the interrupt entry, and the function named
  is the interrupted one.
* ``running``: anything else (user mode, changing functions, console output).

Tasks that stayed in uninterruptible sleep without a context switch across the samples are
listed by the caller as blocked (see :mod:`vmboot.debug.tasks`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from vmboot.debug.cpus import CpuTrace
from vmboot.debug.tasks import GuestTask

Verdict = Literal["idle", "lockup", "running"]

IDLE_FUNCTIONS = frozenset({
    "do_idle", "cpu_idle_poll", "default_idle", "default_idle_call", "native_safe_halt",
    "pv_native_safe_halt", "arch_cpu_idle", "acpi_safe_halt", "acpi_idle_do_entry",
    "cpuidle_enter_state", "mwait_idle", "intel_idle", "poll_idle", "amd_e400_idle",
})
"""Functions of the kernel's idle loop (any of them on a CPU's stack means it is idle)."""
ENTRY_FUNCTIONS = frozenset({
    "do_syscall_64", "entry_SYSCALL_64", "entry_SYSCALL_64_after_hwframe", "ret_from_fork",
    "kthread", "worker_thread", "process_one_work", "start_kernel", "rest_init",
    "secondary_startup_64", "secondary_startup_64_no_verify", "asm_common_interrupt",
    "asm_sysvec_apic_timer_interrupt", "asm_exc_page_fault", "irq_exit_rcu",
})
"""Functions under most stacks: their presence in every sample says nothing about a lockup."""
LOCKUP_DEPTH = 4
"""How many innermost frames of each sample are compared."""
SAMPLE_FRAMES = 64
"""Frames unwound per CPU and sample: enough to reach the interrupted code under an
interrupt that prints (the soft-lockup watchdog's stack is some 15 frames deep)."""
INTERRUPT_ENTRY = re.compile(r"^asm_(?:sysvec_\w+|common_interrupt|spurious_interrupt)$")
"""Interrupt entry stubs: the frames above one are the interrupt's, the frames below it the
code it interrupted."""


@dataclass
class HangReport:
    """The verdict, the CPU and function it names, and what it was decided from."""

    verdict: Verdict
    samples: int
    console_silent: bool
    cpu: int | None = None
    function: str | None = None
    traces: list[CpuTrace] = field(default_factory=list)
    """The last round of per-CPU traces."""
    blocked: list[GuestTask] = field(default_factory=list)
    detail: str = ""

    def render(self) -> str:
        lines = [f"hang verdict: {self.verdict} ({self.detail})"]
        text = "\n".join(lines) + "\n"
        if self.verdict == "lockup" and self.cpu is not None:
            text += "".join(t.render() for t in self.traces if t.cpu == self.cpu)
        if self.blocked:
            text += f"{len(self.blocked)} task(s) blocked across the samples:\n"
            text += "".join(t.render() for t in self.blocked)
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "samples": self.samples,
                "console_silent": self.console_silent, "cpu": self.cpu,
                "function": self.function, "detail": self.detail,
                "traces": [t.as_dict() for t in self.traces],
                "blocked": [t.as_dict() for t in self.blocked]}


def is_idle(trace: CpuTrace) -> bool:
    return not trace.user_mode and any(f.symbol in IDLE_FUNCTIONS for f in trace.frames)


def interrupted(trace: CpuTrace) -> list[str]:
    """The frames under the outermost interrupt entry of ``trace`` (empty if none)."""
    names = [f.symbol for f in trace.frames]
    entries = [i for i, n in enumerate(names) if INTERRUPT_ENTRY.match(n)]
    return names[entries[-1] + 1:] if entries else []


def innermost(trace: CpuTrace) -> set[str]:
    """The innermost :data:`LOCKUP_DEPTH` frames of the sample, and of the code each
    interrupt on its stack interrupted."""
    names = [f.symbol for f in trace.frames]
    found = set(names[:LOCKUP_DEPTH])
    for i, name in enumerate(names):
        if INTERRUPT_ENTRY.match(name):
            found.update(names[i + 1:i + 1 + LOCKUP_DEPTH])
    return found


def stuck_function(rounds: Sequence[CpuTrace]) -> str | None:
    """The innermost function on the stack of every sample of one CPU, if it was always in
    the kernel and never idle; None otherwise. The interrupted code comes first when the
    last sample is inside an interrupt."""
    if not rounds or any(t.user_mode or not t.frames or is_idle(t) for t in rounds):
        return None
    common = set.intersection(*(innermost(t) for t in rounds))
    common -= ENTRY_FUNCTIONS | {"??"}
    last = rounds[-1]
    for name in [*interrupted(last), *(f.symbol for f in last.frames)]:
        if name in common:
            return name
    return None


def classify(rounds: Sequence[Sequence[CpuTrace]], console_silent: bool,
             blocked: Sequence[GuestTask] = ()) -> HangReport:
    """The verdict from ``rounds`` (one list of per-CPU traces per sample; see the module)."""
    if not rounds:
        return HangReport("running", 0, console_silent, detail="no samples")
    last = list(rounds[-1])
    per_cpu: dict[int, list[CpuTrace]] = {}
    for r in rounds:
        for t in r:
            per_cpu.setdefault(t.cpu, []).append(t)
    n = len(rounds)
    for cpu, samples in sorted(per_cpu.items()):
        func = stuck_function(samples)
        if func is not None:
            return HangReport("lockup", n, console_silent, cpu, func, last, list(blocked),
                              f"CPU {cpu} stayed in {func} across {n} samples")
    if console_silent and all(is_idle(t) for r in rounds for t in r):
        return HangReport("idle", n, console_silent, traces=last, blocked=list(blocked),
                          detail=f"every CPU in the idle loop at {n} samples, console silent")
    why = "console output" if not console_silent else "CPUs changed function or ran user code"
    return HangReport("running", n, console_silent, traces=last, blocked=list(blocked),
                      detail=f"{why} across {n} samples")
