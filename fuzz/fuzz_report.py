"""Console log -> kernel reports and a verdict (``vmboot report``), with a symbolizer."""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

import json
from pathlib import Path

from fuzz.harness import Target, atheris_main
from vmboot.report import Verdict, read_console
from vmboot.report.kinds import ReportType

LOGS = Path(__file__).resolve().parent.parent / "tests" / "data" / "console-logs"
SEED_NAMES = ("debian-6.1.0-57-oops.log", "debian-6.1.0-57-rcu-stall.log",
              "syzkaller/247.log", "syzkaller/157.log", "syzkaller/449.log", "syzkaller/51.log",
              "syzkaller/594.log", "syzkaller/69.log")
SEED_BYTES = 6 << 10
"""Each seed is the part of a real log around its first report."""


def _seeds() -> list[bytes]:
    seeds = []
    for name in SEED_NAMES:
        path = LOGS / name
        if not path.exists():
            continue
        data = path.read_bytes()
        reports = read_console(data).reports
        lines = data.splitlines(keepends=True)
        start = reports[0].first_line - 1 if reports else 0
        seeds.append(b"".join(lines[max(0, start - 3):])[:SEED_BYTES])
    return seeds


def _offsets() -> list[int]:
    offs: set[int] = set()
    for seed in _seeds():
        pos = 0
        for line in seed.splitlines(keepends=True)[:80]:
            offs.update((pos, pos + 1, pos + 15, pos + 16))
            pos += len(line)
    return sorted(offs)


def _symbolize(address: int) -> str | None:
    """A symbolizer that answers oddly: names, names with offsets, and nothing."""
    return (None, "f", f"g+{address & 0xfff:#x}/0x1000", "+0x")[address % 4]


def one_input(data: bytes) -> None:
    line_count = len(data.decode("utf-8", "replace").splitlines())
    for symbolize in (None, _symbolize):
        reading = read_console(data, symbolize=symbolize)
        assert isinstance(reading.verdict, Verdict)
        for report in reading.reports:
            assert isinstance(report.type, ReportType)
            assert 1 <= report.first_line <= report.last_line <= line_count, report.as_dict()
            assert "\n" not in report.title and report.title
        json.dumps(reading.as_dict())


TARGET = Target("report", one_input, _seeds, _offsets, max_len=1 << 15,
                description="read_console on console logs, with and without a symbolizer")

if __name__ == "__main__":
    atheris_main(TARGET)
