"""Console lines as the kernel printed them: timestamps and caller ids removed, frames parsed.

A console log comes from vmboot, QEMU, a CI system or a bug tracker, from kernels 4.x to
6.x: lines may carry a syslog level (``<4>``), a timestamp (``[   12.345678]``), a caller id
(``[T123]``, ``[    T1]``, ``[C0]``), or none, and other output may be glued in front of a
kernel line (a shell prompt without its newline). :func:`kernel_text` returns the part the
kernel wrote; :func:`parse_frame` reads one stack-trace line of either format::

    6.x:  func+0x1a/0x30 [module]        ? func+0x1a/0x30        func mm/x.c:12 [inline]
    4.x:  [<ffffffff81234567>] func+0x1a/0x30        [<ffffffff81234567>] 0xffffffff81234567
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LEVEL = r"(?:<\d>)?"
_TIMESTAMP = r"\[\s*\d+\.\d+\]"
_CALLER = r"(?:\s?\[\s*[TC]\d+\])?"
PREFIX_RE = re.compile(rf"^{_LEVEL}{_TIMESTAMP}{_CALLER} ?")
INNER_PREFIX_RE = re.compile(rf"{_TIMESTAMP}{_CALLER} ?")
LEVEL_ONLY_RE = re.compile(r"^<\d>")

_SYM = r"[A-Za-z_$][\w.$]*"
_ADDR = r"[0-9a-f]{8,16}"
FRAME_RE = re.compile(
    rf"^\s*(?:\[<(?P<addr>{_ADDR})>\]\s*)?(?P<unreliable>\?\s+)?(?:\[<(?P<addr2>{_ADDR})>\]\s*)?"
    rf"(?P<symbol>{_SYM})\+(?P<offset>0x[0-9a-f]+)(?:/0x[0-9a-f]+)?(?:\s+\[(?P<module>[\w-]+)\])?"
)
INLINE_FRAME_RE = re.compile(rf"^\s*(?P<symbol>{_SYM}) [\w/.+-]+\.[chS]:\d+(?::\d+)? \[inline\]")
BARE_FRAME_RE = re.compile(
    rf"^\s*(?P<unreliable>\?\s+)?(?:\[<(?P<addr>{_ADDR})>\]\s*)?(?:0x(?P<addr2>{_ADDR}))?\s*$"
)
RIP_RE = re.compile(
    rf"^\s*(?:R|E)?IP:\s*(?:(?P<cs>[0-9a-f]{{4}}):)?(?:\[<(?P<addr>{_ADDR})>\]\s*)*"
    rf"(?:(?P<symbol>{_SYM})\+(?P<offset>0x[0-9a-f]+)|(?:0x)?(?P<bare>{_ADDR})\b)"
)
KERNEL_OFFSET_RE = re.compile(r"Kernel Offset: (0x[0-9a-f]+) from")
USER_CS = "0033"
"""The 64-bit user code segment: a RIP line with it is a user-mode address."""


@dataclass
class Frame:
    """One stack frame of a report: a symbol and offset, or only an address."""

    symbol: str | None
    offset: int | None = None
    address: int | None = None
    module: str | None = None
    unreliable: bool = False
    """Printed with ``?``: a stale return address the unwinder found on the stack."""

    def as_dict(self) -> dict[str, object]:
        return {"symbol": self.symbol, "offset": self.offset}


def kernel_text(line: str) -> str:
    """``line`` without its trailing newline, syslog level, timestamp and caller id.

    When other output was glued in front of a timestamped kernel line, the part from the
    timestamp on is returned.
    """
    line = line.rstrip("\r\n")
    m = PREFIX_RE.match(line)
    if m:
        return line[m.end():]
    m = INNER_PREFIX_RE.search(line)
    if m:
        return line[m.end():]
    m = LEVEL_ONLY_RE.match(line)
    return line[m.end():] if m else line


def _int(text: str | None) -> int | None:
    return None if text is None else int(text, 16)


def parse_frame(text: str) -> Frame | None:
    """The stack frame on one (prefix-free) line, or None."""
    m = FRAME_RE.match(text)
    if m:
        return Frame(m["symbol"], int(m["offset"], 16), _int(m["addr"] or m["addr2"]),
                     m["module"], m["unreliable"] is not None)
    m = INLINE_FRAME_RE.match(text)
    if m:
        return Frame(m["symbol"])
    m = BARE_FRAME_RE.match(text)
    if m and (m["addr"] or m["addr2"]):
        return Frame(None, None, _int(m["addr"] or m["addr2"]), None,
                     m["unreliable"] is not None)
    return None


def parse_rip(text: str) -> Frame | None:
    """The kernel-mode instruction pointer of a ``RIP:``/``IP:`` line, or None."""
    m = RIP_RE.match(text)
    if m is None or m["cs"] == USER_CS:
        return None
    if m["symbol"]:
        return Frame(m["symbol"], int(m["offset"], 16), _int(m["addr"]))
    return Frame(None, None, int(m["bare"], 16))


def kernel_offset(log: str) -> int | None:
    """The KASLR slide a panicking x86 kernel prints (``Kernel Offset: 0x1fa00000 from
    0xffffffff81000000``), or None: what to subtract from a printed address to look it up
    in the kernel's link-time symbols."""
    m = KERNEL_OFFSET_RE.search(log)
    return int(m.group(1), 16) if m else None
