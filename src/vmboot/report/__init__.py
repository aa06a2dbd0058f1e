"""Kernel reports on a console, and one verdict per run (see :mod:`vmboot.report.verdict`).

::

    from vmboot.report import read_console
    reading = read_console(open("console.log", "rb").read())
    reading.verdict.value, [(r.type.value, r.title) for r in reading.reports]

The names below are imported when first used (PEP 562): reading a console with no report
in it does not load the report titles and their patterns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmboot.lazy_names import names_from

if TYPE_CHECKING:
    from vmboot.report.classify import KernelReport, find_reports
    from vmboot.report.kinds import ReportType, Verdict
    from vmboot.report.lines import Frame
    from vmboot.report.verdict import Reading, decide, parse_fail_on, read_console

_HOMES = {
    "KernelReport": "classify", "find_reports": "classify",
    "ReportType": "kinds", "Verdict": "kinds",
    "Frame": "lines",
    "Reading": "verdict", "decide": "verdict", "parse_fail_on": "verdict",
    "read_console": "verdict",
}
"""Each public name's module under ``vmboot.report``."""

__all__ = ["Frame", "KernelReport", "Reading", "ReportType", "Verdict", "decide", "find_reports",
           "parse_fail_on", "read_console"]


__getattr__ = names_from(__name__, _HOMES)
