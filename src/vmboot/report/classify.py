"""Find the kernel reports in a console log: each one whole, with its type, title and frames.

A report runs from its first line (a :data:`~vmboot.report.titles.HEADERS` match) through
its ``---[ end trace``/``---[ end Kernel panic`` line, the closing ``=====`` of a sanitizer
report, or its natural end: the last report-looking line before the next report or before
:data:`GAP_LINES` lines of other output. Other output interleaved inside a report is
tolerated; it stays in the line range but is never read as frames.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from vmboot.report.kinds import ReportType
from vmboot.report.lines import Frame, kernel_text, parse_frame, parse_rip
from vmboot.report.titles import (
    COMPILER_SUFFIX,
    CONTINUATIONS,
    HANG_ANCHORS,
    HANG_SKIP,
    HEADER_WORDS,
    HEADERS,
    MACHINERY,
    STALL_ANCHORS,
    SYSCALL_PREFIXES,
    FunctionFrom,
    Header,
)

Symbolizer = Callable[[int], str | None]
"""A kernel address -> ``function+0xoff/0xsize`` (or None), e.g. ``SymbolTable.lookup``."""

GAP_LINES = 40
"""Lines of other output after which a report without an end marker is over."""
MAX_REPORT_LINES = 4000
"""A report longer than this is cut (a flood of frames must not swallow the log)."""
HEADER_SCAN_CHARS = 512
"""Only this much of a line is matched against the headers (bounded regex work)."""

END_MARKER = re.compile(r"---\[ end (?:trace|Kernel panic)")
SANITIZER_END = re.compile(r"={20,}\s*$")
SANITIZERS = (ReportType.KASAN, ReportType.KMSAN, ReportType.KCSAN, ReportType.KFENCE,
              ReportType.UBSAN)
STACK_START = re.compile(
    r"^\s*(?:Call Trace|Call trace|Backtrace|stack backtrace|backtrace(?: \(crc [0-9a-f]+\))?)\s*:"
)
STACK_BREAK = re.compile(
    r"^\s*(?:Allocated by task|Freed by task|The buggy address|Memory state|Uninit was|"
    r"Local variable|Modules linked in|---\[|Showing|Last potentially|Second to last|"
    r"irq event stamp|other info|-> #|Kernel Offset|Disabling lock|\d+ locks? held|"
    r"INFO: lockdep|Read to 0x|Write to 0x|Reported by|value changed|Sending NMI|"
    r"NMI backtrace)"
)
MARKERS = re.compile(r"^\s*</?(?:IRQ|TASK|NMI|EOI|SOFTIRQ)>\s*$")
GP_KTHREAD = re.compile(r"\brcu_gp_kthread\+")
"""A frame of RCU's grace-period kthread, whose stack an RCU stall report shows first."""
IRQ_END = re.compile(r"^\s*</IRQ>|^\s*<EOI>")
LOCK_AT = re.compile(r"\bat: (?:\[<[0-9a-f]+>\]\s*)?(?P<symbol>[A-Za-z_$][\w.$]*)\+0x")
ACCESS = re.compile(r"^\s*(?P<access>Read|Write) of size \d+")
REPORTISH = re.compile(
    r"^(?:\s|\[<|\?|[A-Z]{1,3}\d*:\s|R[A-Z0-9]{1,2}:|CR\d|DR\d|Code:|Call [Tt]race|Modules|CPU|"
    r"Hardware name|Workqueue|Oops|#PF|PGD|P4D|IP:|task|Stack|---\[|irq event|hardirqs|softirqs|"
    r"The buggy|Memory state|Allocated|Freed|Last potentially|Second to last|Read of|Write of|"
    r"Uninit|Local variable|Bytes|Object|Redzone|Padding|page|flags|raw|head|INFO: lockdep|"
    r"Showing|\d+ locks? held|#\d+:|other info|the existing|-> #|stack backtrace|Possible|"
    r"\*\*\*|rcu:|\(detected|\(t=|Sending NMI|NMI backtrace|Task dump|Kernel Offset|Disabling|"
    r"refcount_t|=+|\s*$|[0-9a-f]{8,16}[: ]|Rebooting|Shutting down|unreferenced|comm |hex dump|"
    r"backtrace|invalid opcode|general protection|note:|Mem abort|Internal error|Kernel panic|"
    r"[a-z_]+\+0x)"
)
"""Lines a kernel report is made of (register dumps, frames, section headings, dumps)."""


@dataclass
class KernelReport:
    """One kernel report: its type, title, 1-based line range in the log, and frames."""

    type: ReportType
    title: str
    first_line: int
    last_line: int
    frames: list[Frame] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    """The report's lines as the kernel printed them (prefixes removed)."""

    def as_dict(self) -> dict[str, object]:
        return {
            "type": self.type.value,
            "title": self.title,
            "first_line": self.first_line,
            "last_line": self.last_line,
            "frames": [f.as_dict() for f in self.frames],
        }


def _header_of(text: str) -> tuple[Header, re.Match[str]] | None:
    head = text[:HEADER_SCAN_CHARS]
    if not HEADER_WORDS.search(head):
        return None
    for header in HEADERS:
        m = header.pattern.match(head)
        if m:
            return header, m
    return None


def find_reports(log: str | bytes, symbolize: Symbolizer | None = None) -> list[KernelReport]:
    """Every kernel report in ``log``, in the order they start.

    Frames printed as bare addresses (a kernel without kallsyms) get their symbol from
    ``symbolize`` when one is given.
    """
    if isinstance(log, bytes | bytearray):
        log = bytes(log).decode("utf-8", "replace")
    texts = [kernel_text(line) for line in log.splitlines()]
    starts: list[tuple[int, Header, re.Match[str]]] = []
    open_report = False
    for i, text in enumerate(texts):
        if open_report and CONTINUATIONS.match(text):
            continue
        found = _header_of(text)
        if found is not None:
            starts.append((i, *found))
            open_report = True
        elif END_MARKER.search(text):
            open_report = False
    reports = []
    for n, (start, header, match) in enumerate(starts):
        # A panic (panic_on_warn, panic_on_oops) is its own report but does not end the one
        # that caused it: the cause's stack is printed under the panic line.
        later = [s for s, h, _ in starts[n + 1:] if h.type is not ReportType.PANIC]
        limit = later[0] if later else len(texts)
        end = _report_end(texts, start, min(limit, start + MAX_REPORT_LINES), header.type)
        reports.append(_build(header, match, texts[start:end + 1], start, symbolize))
    return reports


def _report_end(texts: list[str], start: int, limit: int, type_: ReportType) -> int:
    """The index of a report's last line, between ``start`` and ``limit`` (exclusive)."""
    last = start
    for i in range(start + 1, limit):
        text = texts[i]
        if END_MARKER.search(text):
            return i
        if type_ in SANITIZERS and SANITIZER_END.match(text) and i > start + 1:
            return i
        if REPORTISH.match(text):
            last = i
        elif i - last > GAP_LINES:
            break
    return last


def _build(header: Header, match: re.Match[str], lines: list[str], start: int,
           symbolize: Symbolizer | None) -> KernelReport:
    frames, rip, after_irq = _frames(lines, header.type, symbolize)
    groups = {k: (v or "") for k, v in match.groupdict().items()}
    func = _title_function(header, groups, lines, frames, rip, after_irq)
    title = _format_title(header, groups, lines, func)
    shown = ([rip] if rip is not None else []) + [f for f in frames if not f.unreliable]
    if not shown:
        shown = frames
    return KernelReport(header.type, title, start + 1, start + len(lines), shown, lines)


def _frames(lines: list[str], type_: ReportType, symbolize: Symbolizer | None
            ) -> tuple[list[Frame], Frame | None, list[Frame]]:
    """The first stack section's frames, the faulting RIP before it, and the frames after
    the interrupt stack (where a stall's interrupted code is)."""
    sections = [i for i, text in enumerate(lines) if STACK_START.match(text)]
    begin = _chosen_section(lines, sections, type_)
    previous = max((i for i in sections if begin is not None and i < begin), default=-1)
    rip: Frame | None = None
    for text in lines[previous + 1:begin]:
        rip = parse_rip(text) or rip
    frames: list[Frame] = []
    after_irq: list[Frame] = []
    seen_irq_end = False
    if begin is not None:
        for text in lines[begin + 1:]:
            if STACK_BREAK.match(text) or (frames and STACK_START.match(text)):
                break
            if IRQ_END.match(text):
                seen_irq_end = True
                after_irq = []
                continue
            frame = parse_frame(text) or (parse_rip(text) if seen_irq_end else None)
            if frame is None:
                continue
            frames.append(frame)
            if seen_irq_end:
                after_irq.append(frame)
    if rip is None and begin is None:  # a report with no "Call Trace:" (kmemleak, old kernels)
        frames = [f for f in (parse_frame(t) for t in lines[1:]) if f is not None]
    for frame in ([rip] if rip is not None else []) + frames:
        if frame.symbol is None and frame.address is not None and symbolize is not None:
            _resymbolize(frame, symbolize)
    return frames, rip, after_irq


def _chosen_section(lines: list[str], sections: list[int], type_: ReportType) -> int | None:
    """The stack section that shows the bug: the first, but for lockdep the final ``stack
    backtrace:``, and for an RCU stall the first that is not the grace-period kthread's own."""
    if not sections:
        return None
    if type_ is ReportType.LOCKDEP:
        for i in sections:
            if lines[i].strip().startswith("stack backtrace"):
                return i
    if type_ is ReportType.RCU_STALL:
        for n, i in enumerate(sections):
            end = sections[n + 1] if n + 1 < len(sections) else len(lines)
            if not any(GP_KTHREAD.search(text) for text in lines[i:end]):
                return i
    return sections[0]


def _resymbolize(frame: Frame, symbolize: Symbolizer) -> None:
    assert frame.address is not None
    text = symbolize(frame.address)
    if not text:
        return
    m = re.match(r"(?P<symbol>[^+\s]+)(?:\+(?P<offset>0x[0-9a-f]+))?", text)
    if m:
        frame.symbol = m["symbol"]
        frame.offset = int(m["offset"], 16) if m["offset"] else 0


def clean_function(name: str) -> str:
    """A frame's function as a title shows it: no compiler suffix, no syscall wrapper prefix."""
    name = COMPILER_SUFFIX.sub("", name.split("+", 1)[0])
    for prefix in SYSCALL_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix):]
    return name


def _skipped(name: str, extra: tuple[str, ...]) -> bool:
    return MACHINERY.search(name) is not None or any(s in name for s in extra)


def _first_own(frames: list[Frame], extra: tuple[str, ...]) -> str | None:
    for frame in frames:
        if frame.symbol and not frame.unreliable and not _skipped(frame.symbol, extra):
            return frame.symbol
    return None


def _title_function(header: Header, groups: dict[str, str], lines: list[str],
                    frames: list[Frame], rip: Frame | None, after_irq: list[Frame]) -> str | None:
    how = header.function
    stack = ([rip] if rip is not None else []) + frames
    if how is FunctionFrom.NONE:
        return None
    if how is FunctionFrom.HEADER and groups.get("func"):
        name = groups["func"].split("+", 1)[0]
        if not _skipped(name, header.skip):
            return name
    if how is FunctionFrom.LOCK:
        for text in lines[1:]:
            m = LOCK_AT.search(text)
            if m and not _skipped(m["symbol"], header.skip):
                return m["symbol"]
    if how is FunctionFrom.STALL:
        own = [f for f in (after_irq or stack) if f.symbol and not f.unreliable]
        previous: str | None = None
        for frame in own:
            assert frame.symbol is not None
            if STALL_ANCHORS.search(frame.symbol):
                if "smp_call_function" in frame.symbol:
                    return "smp_call_function"
                if previous is not None:
                    return previous
                break
            if not _skipped(frame.symbol, header.skip):
                previous = frame.symbol
        return _first_own(own, header.skip)
    if how is FunctionFrom.HANG:
        names = [f.symbol for f in frames if f.symbol and not f.unreliable]
        for name in names:
            for anchor, group in HANG_ANCHORS.items():
                if anchor in name:
                    return group
        for name in names:
            if not any(s in name for s in HANG_SKIP) and not _skipped(name, header.skip):
                return name
        return None
    named = groups.get("func", "").split("+", 1)[0]
    return _first_own(stack, header.skip) or named or None


def _format_title(header: Header, groups: dict[str, str], lines: list[str],
                  func: str | None) -> str:
    fields = dict(groups)
    if header.type is ReportType.KASAN:
        kind = fields.get("kind", "")
        fields["kind"] = "invalid-free" if "invalid-free" in kind else kind
        fields["access"] = ""
        for text in lines[1:8]:
            m = ACCESS.match(text)
            if m:
                fields["access"] = " " + m["access"]
                break
    if header.type is ReportType.UBSAN:
        kind = fields.get("kind", "").strip()
        fields["kind"] = ("undefined-behaviour" if kind.lower() == "undefined behaviour"
                          else kind.replace(" ", "-"))
    if "what" in fields:
        what = re.sub(r"\s*(?:exitcode=)?0x[0-9a-f]+|\s+\d+\b", "", fields["what"])
        fields["what"] = what.strip().rstrip(" .")
    if func is None and "{func}" in header.title:
        return header.title.split(" in {func}")[0].format(**fields)
    fields["func"] = clean_function(func or "")
    return header.title.format(**fields)
