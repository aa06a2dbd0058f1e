"""Every vCPU's kernel stack at once: the host-side equivalent of the kernel's NMI backtrace.

:func:`trace_cpus` traces each vCPU of a sequence (1 or N) with
:func:`vmboot.debug.trace.capture_stack_trace`, labelled by CPU number. A vCPU in user
mode has no kernel stack to show; one whose stack cannot be read gets its error instead
of frames, and the other CPUs are still traced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vmboot.debug.frames import StackFrame, format_trace
from vmboot.debug.symbol_sources import SymbolSource
from vmboot.debug.trace import capture_stack_trace
from vmboot.errors import DebugError, HypervisorError
from vmboot.hv.base import VirtualCPU
from vmboot.hv.registers import GENERAL_REGISTERS, Register, SegmentRegister

USER_PRIVILEGE = 3
"""CPL of guest user mode (the low two bits of CS)."""
PRIVILEGE_MASK = 0x3


@dataclass(frozen=True)
class CpuTrace:
    """One vCPU: its number, registers, and kernel frames (or why there are none)."""

    cpu: int
    registers: dict[Register, int]
    frames: list[StackFrame] = field(default_factory=list)
    user_mode: bool = False
    error: str | None = None

    @property
    def rip(self) -> int:
        return self.registers.get(Register.RIP, 0)

    def render(self) -> str:
        """``CPU n:`` then the registers and call trace, as the kernel's NMI backtrace."""
        head = f"CPU {self.cpu}:"
        if self.user_mode:
            return f"{head} in user mode at RIP {self.rip:#x} (no kernel stack)\n"
        if self.error is not None:
            partial = format_trace(self.frames) if self.frames else ""
            return f"{head} no stack trace: {self.error}\n{partial}"
        return f"{head}\n{format_trace(self.frames, self.registers)}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "cpu": self.cpu,
            "rip": self.rip,
            "user_mode": self.user_mode,
            "error": self.error,
            "frames": [{"pc": f.pc, "symbol": f.symbol, "offset": f.offset, "size": f.size,
                        "reliable": f.reliable, "note": f.note} for f in self.frames],
        }


def in_user_mode(vcpu: VirtualCPU) -> bool:
    """True when the vCPU runs at CPL 3."""
    return vcpu.get_segment(SegmentRegister.CS).selector & PRIVILEGE_MASK == USER_PRIVILEGE


def trace_cpus(vcpus: Sequence[VirtualCPU], *, vmlinux: SymbolSource | None = None,
               system_map: SymbolSource | None = None, kernel: SymbolSource | None = None,
               slide: int | None = None, max_frames: int = 16) -> list[CpuTrace]:
    """A :class:`CpuTrace` per vCPU, in the order given (``slide=None``: detected)."""
    out: list[CpuTrace] = []
    for vcpu in vcpus:
        regs = vcpu.get_registers(GENERAL_REGISTERS)
        try:
            user = in_user_mode(vcpu)
        except (HypervisorError, NotImplementedError, KeyError):
            user = False
        if user:
            out.append(CpuTrace(vcpu.index, regs, user_mode=True))
            continue
        try:
            frames = capture_stack_trace(vcpu, vmlinux=vmlinux, system_map=system_map,
                                         kernel=kernel, max_frames=max_frames,
                                         slide="auto" if slide is None else slide)
        except DebugError as exc:
            got = [f for f in getattr(exc, "frames", []) if isinstance(f, StackFrame)]
            out.append(CpuTrace(vcpu.index, regs, got, error=str(exc)))
            continue
        out.append(CpuTrace(vcpu.index, regs, frames))
    return out


def render_cpu_traces(traces: Sequence[CpuTrace]) -> str:
    """Every CPU's trace, one after the other."""
    return "".join(t.render() for t in traces)
