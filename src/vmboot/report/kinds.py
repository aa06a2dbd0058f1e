"""The verdict vocabulary: how a run ended, and the types of kernel report on a console.

Every name here is defined once; the CLI, ``--json``, ``RunResult.verdict`` and
``ExecResult.verdict`` all use these values.
"""

from __future__ import annotations

import enum


class Verdict(enum.Enum):
    """One word for how a run (or a console log) ended, most severe first in :data:`SEVERITY`."""

    OK = "ok"
    COMMAND_FAILED = "command-failed"
    """The command exited non-zero (``exec``), or the guest stopped in a way that is neither
    a clean end nor a kernel report (halted for good, could not be entered, vmboot failed)."""
    PANIC = "panic"
    OOPS = "oops"
    BUG = "bug"
    WARNING = "warning"
    SOFT_LOCKUP = "soft-lockup"
    HUNG_TASK = "hung-task"
    RCU_STALL = "rcu-stall"
    TIMEOUT = "timeout"
    TRIPLE_FAULT = "triple-fault"
    EMULATION_FAILURE = "emulation-failure"


SEVERITY: tuple[Verdict, ...] = (
    Verdict.TRIPLE_FAULT,
    Verdict.EMULATION_FAILURE,
    Verdict.PANIC,
    Verdict.OOPS,
    Verdict.BUG,
    Verdict.SOFT_LOCKUP,
    Verdict.RCU_STALL,
    Verdict.HUNG_TASK,
    Verdict.WARNING,
    Verdict.TIMEOUT,
    Verdict.COMMAND_FAILED,
    Verdict.OK,
)
"""Verdicts from the most to the least severe: a run's verdict is the first that applies."""


class ReportType(enum.Enum):
    """What printed a kernel report: the kernel's own paths, or one of its debugging tools."""

    PANIC = "panic"
    OOPS = "oops"
    BUG = "bug"
    WARNING = "warning"
    SOFT_LOCKUP = "soft-lockup"
    HUNG_TASK = "hung-task"
    RCU_STALL = "rcu-stall"
    KASAN = "kasan"
    KMSAN = "kmsan"
    KCSAN = "kcsan"
    KFENCE = "kfence"
    UBSAN = "ubsan"
    LOCKDEP = "lockdep"
    KMEMLEAK = "kmemleak"
    REFCOUNT = "refcount"
    MIGHT_SLEEP = "might-sleep"

    @property
    def verdict(self) -> Verdict:
        """The verdict a report of this type gives a run."""
        return REPORT_VERDICTS[self]


REPORT_VERDICTS: dict[ReportType, Verdict] = {
    ReportType.PANIC: Verdict.PANIC,
    ReportType.OOPS: Verdict.OOPS,
    ReportType.BUG: Verdict.BUG,
    ReportType.WARNING: Verdict.WARNING,
    ReportType.SOFT_LOCKUP: Verdict.SOFT_LOCKUP,
    ReportType.HUNG_TASK: Verdict.HUNG_TASK,
    ReportType.RCU_STALL: Verdict.RCU_STALL,
    ReportType.KASAN: Verdict.BUG,
    ReportType.KMSAN: Verdict.BUG,
    ReportType.KFENCE: Verdict.BUG,
    ReportType.KMEMLEAK: Verdict.BUG,
    ReportType.MIGHT_SLEEP: Verdict.BUG,
    ReportType.KCSAN: Verdict.WARNING,
    ReportType.UBSAN: Verdict.WARNING,
    ReportType.LOCKDEP: Verdict.WARNING,
    ReportType.REFCOUNT: Verdict.WARNING,
}
"""Memory-safety tools and sleeping in atomic context are bugs; races, undefined behaviour,
locking and reference-count reports are warnings (the kernel carries on)."""

FAIL_ON_CHOICES: tuple[str, ...] = tuple(
    v.value for v in Verdict if v not in (Verdict.OK,)
)
"""Verdicts ``--fail-on`` accepts."""
