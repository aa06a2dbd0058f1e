"""What the stub needs from a virtual machine, and how a stopped guest is described.

A :class:`GdbTarget` is paused while gdb inspects it: the stub reads and writes registers
and memory only between :meth:`GdbTarget.pause` (or a stop the target reports) and the next
:meth:`GdbTarget.resume`. The VMM implements it around its vCPU run loops.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from vmboot.hv.base import VirtualCPU

SIGINT = 2
SIGTRAP = 5


class StopKind(enum.Enum):
    INTERRUPTED = "interrupted"
    """Paused on request (gdb's Ctrl-C): reported as SIGINT."""
    BREAKPOINT = "breakpoint"
    """A hardware breakpoint or watchpoint hit, or a single step finished: SIGTRAP."""
    EXITED = "exited"
    """The guest ended (reset, power-off, a fatal exit): reported with ``W``; nothing to resume."""


@dataclass(frozen=True, slots=True)
class StopEvent:
    kind: StopKind
    cpu: int = 0
    """The vCPU that stopped (gdb's thread ``cpu + 1``)."""
    watch_address: int | None = None
    """For a watchpoint hit, the data address (DR6 names which debug register fired)."""
    watch_kind: str = ""
    """``watch``, ``rwatch`` or ``awatch`` for a watchpoint hit."""
    detail: str = ""

    @property
    def signal(self) -> int:
        return SIGINT if self.kind is StopKind.INTERRUPTED else SIGTRAP


class GdbTarget(Protocol):
    """A paused-or-running guest seen by the stub."""

    watchpoints: bool
    """Whether data breakpoints (gdb's ``watch``/``awatch``) fire on this host."""

    @property
    def vcpus(self) -> Sequence[VirtualCPU]:
        """Every vCPU; gdb thread ``n`` is ``vcpus[n - 1]``."""
        ...

    def pause(self) -> StopEvent:
        """Stop every vCPU (returns once all are out of KVM_RUN)."""
        ...

    def resume(self, step_cpu: int | None = None) -> None:
        """Let every vCPU run again; with ``step_cpu``, that one executes one instruction."""
        ...

    def wait_stop(self, timeout: float) -> StopEvent | None:
        """The next stop after :meth:`resume`, or None when ``timeout`` seconds pass first."""
        ...

    def set_debug_registers(self, dr7: int, addresses: Sequence[int]) -> None:
        """Program DR0-DR3 and DR7 on every vCPU (hardware breakpoints and watchpoints)."""
        ...

    def kernel_offset(self) -> int | None:
        """The KASLR slide of the guest kernel, when known (answers ``qOffsets``)."""
        ...
