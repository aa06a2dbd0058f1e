"""The stack-frame record and the kernel-style text rendering of a trace."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vmboot.hv.registers import Register

TRACE_REGISTERS: tuple[tuple[Register, ...], ...] = (
    (Register.RIP, Register.RSP, Register.RBP, Register.RFLAGS),
    (Register.RAX, Register.RBX, Register.RCX, Register.RDX),
    (Register.RSI, Register.RDI, Register.R8, Register.R9),
    (Register.R10, Register.R11, Register.R12, Register.R13),
    (Register.R14, Register.R15),
    (Register.CR0, Register.CR2, Register.CR3, Register.CR4),
)
"""The register lines of :func:`format_trace`, in the order the kernel's oops prints them."""

UNRELIABLE_MARK = "?"
"""Printed before a frame found by scanning the stack, as the kernel does."""


@dataclass(frozen=True, slots=True)
class StackFrame:
    """One frame: ``pc`` (RIP for frame 0, a return address after), its ``symbol`` and ``offset``.

    ``symbol`` is ``"??"`` for an address no symbol contains. ``reliable`` is False for
    frames guessed by the stack scan. ``size`` is the symbol's size (0 when unknown).
    ``note`` says why the unwinder could not go on from this frame (empty when it could).
    """

    index: int
    pc: int
    symbol: str
    offset: int
    reliable: bool = True
    size: int = 0
    note: str = ""

    def describe(self) -> str:
        """``symbol+0xoff/0xsize`` (or ``??``)."""
        if self.symbol == "??":
            return "??"
        if self.size:
            return f"{self.symbol}+{self.offset:#x}/{self.size:#x}"
        return f"{self.symbol}+{self.offset:#x}"


def format_trace(frames: Sequence[StackFrame], registers: Mapping[Register, int] | None = None) -> str:
    """A kernel-oops-like rendering: the registers that are given, then the call trace."""
    lines: list[str] = []
    regs = registers or {}
    for group in TRACE_REGISTERS:
        parts = [f"{r.name}: {regs[r]:016x}" for r in group if r in regs]
        if parts:
            lines.append(" ".join(parts))
    lines.append("Call Trace:")
    if not frames:
        lines.append(" (no frames)")
    for f in frames:
        mark = f" {UNRELIABLE_MARK} " if not f.reliable else " "
        lines.append(f" #{f.index:<2d} {f.pc:016x}{mark}{f.describe()}")
        if f.note:
            lines.append(f"     ({f.note})")
    return "\n".join(lines) + "\n"
