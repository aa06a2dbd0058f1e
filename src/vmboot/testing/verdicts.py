"""Whether a test's guest failed the test, and what the test report shows about it.

After each test the plugin reads the guest (:func:`judge`): how its run ended (a panic,
a triple fault, stopped because it hung) and the kernel's reports on its console (an oops,
a BUG, a soft lockup... while the guest went on), as ``vmboot exec`` reads a run
(:mod:`vmboot.report`). A verdict in the session's ``fail_on`` (by default
:data:`DEFAULT_FAIL_ON`: every kernel failure, not warnings) fails the test with one line,
and the report gets sections: the kernel's reports, the symbolised stack traces vmboot took
(every vCPU at the panic, at each oops, or while hung), and the end of the console.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vmboot.report.kinds import Verdict
from vmboot.report.verdict import parse_fail_on
from vmboot.testing import names

if TYPE_CHECKING:
    from vmboot.report import Reading
    from vmboot.testing.guest_vm import GuestVM
    from vmboot.vmm.machine import RunResult

DEFAULT_FAIL_ON: frozenset[Verdict] = parse_fail_on(names.DEFAULT_FAIL_ON)
"""Verdicts that fail a test by default (:data:`vmboot.testing.names.DEFAULT_FAIL_ON`)."""
CONSOLE_TAIL_LINES = 60
"""Lines of the console's end that a failed test's report shows."""
SECTION_REPORTS = "vmboot kernel report"
SECTION_TRACE = "vmboot trace"
SECTION_CONSOLE = "vmboot console"


@dataclass
class GuestFailure:
    """Why the guest failed the test: its verdict, one line, and the report's sections."""

    verdict: Verdict
    summary: str
    sections: list[tuple[str, str]] = field(default_factory=list)


def judge(vm: GuestVM, fail_on: frozenset[Verdict] = DEFAULT_FAIL_ON) -> GuestFailure | None:
    """The guest's failure after a test, or None. A guest still running with a kernel report
    in ``fail_on`` on its console is stopped first, so that its run's traces are complete."""
    from vmboot.report import read_console

    ended = vm.ended
    reading: Reading
    if ended is None:
        reading = read_console(vm.console)
        if not reading.triggered(fail_on):
            return None
        ended = vm.stop()
    if ended is not None:
        reading = ended.read_console()
    triggered = reading.triggered(fail_on)
    if vm.hung and Verdict.TIMEOUT in fail_on and Verdict.TIMEOUT not in triggered:
        triggered.append(Verdict.TIMEOUT)
    if not triggered:
        return None
    verdict = triggered[0]
    return GuestFailure(verdict, _summary(verdict, reading, ended, vm.hung),
                        _sections(reading, ended, vm.console))


def _summary(verdict: Verdict, reading: Reading, ended: RunResult | None, hung: bool) -> str:
    titles = [r.title for r in reading.reports if r.type.verdict is verdict]
    if titles:
        what = titles[0]
    elif ended is not None and ended.panic_message:
        what = ended.panic_message
    elif ended is not None:
        what = ended.exit.one_line()
    else:
        what = verdict.value
    hang = " (the guest stopped answering and was stopped)" if hung else ""
    return f"the guest failed the test: {verdict.value}: {what}{hang}"


def _sections(reading: Reading, ended: RunResult | None, console: str) -> list[tuple[str, str]]:
    sections: list[tuple[str, str]] = []
    if reading.reports:
        sections.append((SECTION_REPORTS, "\n\n".join(
            f"{r.type.value}: {r.title}\n" + "\n".join(r.lines) for r in reading.reports)))
    trace = _trace_text(ended)
    if trace:
        sections.append((SECTION_TRACE, trace))
    tail = "\n".join(console.splitlines()[-CONSOLE_TAIL_LINES:])
    if tail:
        sections.append((SECTION_CONSOLE, tail))
    return sections


def _trace_text(ended: RunResult | None) -> str:
    """The stacks vmboot took: at the end of the run (panic, hang) and at each oops."""
    if ended is None:
        return ""
    parts: list[str] = []
    if ended.stack_trace_text:
        parts.append(f"at the end of the run ({ended.exit.one_line()}):\n{ended.stack_trace_text}")
    parts.extend(f"at {message}:\n{trace}" for message, trace in ended.oopses if trace)
    if ended.hang is not None:
        parts.append(ended.hang.render())
    parts.extend(f"note: {n}" for n in ended.notes)
    return "\n".join(parts)
