"""How a device reaches the rest of the machine: interrupt lines and requests to end the run.

A device gets these as plain callables, so it can be unit-tested with a list-appending
lambda and wired to KVM (``vm.irq_line``) and the run loop by :class:`vmboot.vmm.machine.Machine`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from vmboot.vmm.exits import ExitReason

IrqLine = Callable[[int, bool], object]
"""``irq_line(irq, level)``: drive an interrupt line of the in-kernel interrupt controller."""

StopHook = Callable[[ExitReason, str], object]
"""``stop(reason, detail)``: end the current run with this reason (e.g. RESET after 0xFE)."""


@runtime_checkable
class StopsRun(Protocol):
    """A device that may end the run; the machine hands it its stop hook before the run."""

    def connect_stop(self, stop: StopHook) -> None: ...


@runtime_checkable
class RaisesIrq(Protocol):
    """A device with an interrupt line; the machine connects it once the VM exists."""

    def connect_irq(self, irq_line: IrqLine) -> None: ...
