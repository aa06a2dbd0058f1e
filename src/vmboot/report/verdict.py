"""One verdict per run or console log, from its kernel reports and the VM's state."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vmboot.errors import UsageError
from vmboot.report.kinds import FAIL_ON_CHOICES, SEVERITY, Verdict
from vmboot.vmm.exits import ExitReason

if TYPE_CHECKING:
    from vmboot.report.classify import KernelReport, Symbolizer

EXIT_VERDICTS: dict[ExitReason, Verdict] = {
    ExitReason.SHUTDOWN: Verdict.TRIPLE_FAULT,
    ExitReason.INTERNAL_ERROR: Verdict.EMULATION_FAILURE,
    ExitReason.PANIC: Verdict.PANIC,
    ExitReason.TIMEOUT: Verdict.TIMEOUT,
    ExitReason.HLT: Verdict.COMMAND_FAILED,
    ExitReason.FAIL_ENTRY: Verdict.COMMAND_FAILED,
    ExitReason.ERROR: Verdict.COMMAND_FAILED,
}
"""What the way a run stopped says on its own (a reset, a poweroff or a stop say nothing)."""


@dataclass
class Reading:
    """A verdict and the kernel reports it rests on."""

    verdict: Verdict
    reports: list[KernelReport] = field(default_factory=list)

    @property
    def kinds(self) -> set[Verdict]:
        """The verdict and every report's own verdict (what ``--fail-on`` looks at)."""
        return {self.verdict, *(r.type.verdict for r in self.reports)}

    def triggered(self, fail_on: frozenset[Verdict]) -> list[Verdict]:
        """The verdicts of ``fail_on`` this reading shows, most severe first."""
        return [v for v in SEVERITY if v in fail_on and v in self.kinds]

    def as_dict(self) -> dict[str, object]:
        return {"verdict": self.verdict.value, "reports": [r.as_dict() for r in self.reports]}


def most_severe(verdicts: Iterable[Verdict]) -> Verdict:
    """The most severe of ``verdicts`` (:data:`~vmboot.report.kinds.SEVERITY`), ``ok`` if none."""
    present = set(verdicts)
    return next((v for v in SEVERITY if v in present), Verdict.OK)


def decide(reports: Iterable[KernelReport], exit_reason: ExitReason | None = None,
           command_failed: bool = False) -> Verdict:
    """The verdict of a run: the most severe of its reports, its exit reason and its command."""
    found = [r.type.verdict for r in reports]
    if exit_reason is not None and exit_reason in EXIT_VERDICTS:
        found.append(EXIT_VERDICTS[exit_reason])
    if command_failed:
        found.append(Verdict.COMMAND_FAILED)
    return most_severe(found)


def read_console(log: str | bytes, exit_reason: ExitReason | None = None,
                 command_failed: bool = False, symbolize: Symbolizer | None = None) -> Reading:
    """Classify a console log (and, for a run, how it stopped) into one :class:`Reading`."""
    reports: list[KernelReport] = []
    if log:  # an empty console (a clean warm run) has no report: the classifier stays unloaded
        from vmboot.report.classify import find_reports

        reports = find_reports(log, symbolize)
    return Reading(decide(reports, exit_reason, command_failed), reports)


def parse_fail_on(text: str) -> frozenset[Verdict]:
    """``--fail-on warning,oops``: the verdicts that make a run fail even if it succeeded."""
    chosen = set()
    for word in (w.strip() for w in text.split(",")):
        if not word:
            continue
        if word not in FAIL_ON_CHOICES:
            raise UsageError(f"--fail-on: {word!r} is not a verdict; choose from "
                             f"{', '.join(FAIL_ON_CHOICES)} (comma-separated)")
        chosen.add(Verdict(word))
    if not chosen:
        raise UsageError(f"--fail-on: {text!r} names no verdict; give e.g. warning,oops")
    return frozenset(chosen)
