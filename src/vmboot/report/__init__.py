"""Kernel reports on a console, and one verdict per run (see :mod:`vmboot.report.verdict`).

::

    from vmboot.report import read_console
    reading = read_console(open("console.log", "rb").read())
    reading.verdict.value, [(r.type.value, r.title) for r in reading.reports]
"""

from vmboot.report.classify import KernelReport, find_reports
from vmboot.report.kinds import ReportType, Verdict
from vmboot.report.lines import Frame
from vmboot.report.verdict import Reading, decide, parse_fail_on, read_console

__all__ = ["Frame", "KernelReport", "Reading", "ReportType", "Verdict", "decide", "find_reports",
           "parse_fail_on", "read_console"]
