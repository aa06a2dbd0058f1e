"""Why a run stopped: a structured exit reason with the vCPU's registers at that moment."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ExitReason(enum.Enum):
    """How a guest run ended (not every KVM exit: only the ones that end a run)."""

    RESET = "reset"
    """The guest asked for a reset (i8042 0xFE, or a reboot system event)."""
    POWEROFF = "poweroff"
    """The guest powered off (system event, or a probe's 'done' port)."""
    HLT = "hlt"
    """The vCPU halted with interrupts off: it can never wake up."""
    SHUTDOWN = "shutdown"
    """Triple fault."""
    FAIL_ENTRY = "fail_entry"
    """KVM could not enter the guest (bad vCPU state)."""
    INTERNAL_ERROR = "internal_error"
    """KVM gave up, e.g. an instruction it cannot emulate."""
    TIMEOUT = "timeout"
    """The run's time limit passed."""
    STOPPED = "stopped"
    """Another thread asked the run to stop."""
    PANIC = "panic"
    """The guest kernel reported a panic (on the console, or through pvpanic)."""
    ERROR = "error"
    """vmboot itself failed while running the guest."""
    DEBUG = "debug"
    """A debug exception the host asked for (KVM_SET_GUEST_DEBUG): a hardware breakpoint or
    watchpoint hit, or a single step done. ``VmExit.dr6`` says which."""


@dataclass
class VmExit:
    """The end of a run: the reason, a one-line description, and the vCPU state at that point."""

    reason: ExitReason
    detail: str = ""
    registers: dict[str, int] = field(default_factory=dict)
    """Register name (lower case, e.g. ``"rip"``) -> value, when the vCPU could be read."""
    instruction_bytes: bytes | None = None
    """For an emulation failure: the bytes at RIP, when KVM or guest memory gave them."""
    symbol: str | None = None
    """For an emulation failure or a hang: ``function+0xoff`` of RIP, when symbols are known."""
    dr6: int | None = None
    """For a debug exit: DR6 (bits 0-3: which breakpoint slot fired; bit 14: single step)."""

    @property
    def clean(self) -> bool:
        """True for the ways a guest is meant to end (reset or poweroff)."""
        return self.reason in (ExitReason.RESET, ExitReason.POWEROFF)

    def one_line(self) -> str:
        """A one-line summary for a terminal."""
        parts = [self.reason.value]
        if self.detail:
            parts.append(self.detail)
        rip = self.registers.get("rip")
        if rip is not None and not self.clean:
            parts.append(f"rip={rip:#x}" + (f" <{self.symbol}>" if self.symbol else ""))
        if self.instruction_bytes:
            parts.append("bytes=" + self.instruction_bytes.hex(" "))
        return ": ".join(parts[:2]) + ("" if len(parts) <= 2 else " (" + ", ".join(parts[2:]) + ")")
