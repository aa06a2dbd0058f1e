"""How a device reaches the rest of the machine: interrupt lines and requests to end the run.

A device gets these as plain callables, so it can be unit-tested with a list-appending
lambda and wired to KVM (``vm.irq_line``) and the run loop by :class:`vmboot.vmm.machine.Machine`.
"""

from __future__ import annotations

import threading
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


class SharedIrqLines:
    """Interrupt lines that several devices drive at once: each line is the OR of its devices.

    ISA UARTs share lines (COM1 and COM3 on IRQ 4, COM2 and COM4 on IRQ 3). A device
    drives its line with ``irq_line(irq, level)`` and only reports its own level, so two
    devices on one line must not reach KVM directly: the second one's "low" would drop
    the first one's pending interrupt. Give each device its own :meth:`source`; the
    underlying line is raised when the first device asserts it and lowered when the last
    one lets go, and it is only driven when that OR changes. Thread-safe.
    """

    def __init__(self, irq_line: IrqLine) -> None:
        self._irq_line = irq_line
        self._lock = threading.Lock()
        self._asserted: dict[int, set[int]] = {}
        self._next_source = 0

    def source(self) -> IrqLine:
        """A fresh ``irq_line`` callable for one device."""
        with self._lock:
            source_id = self._next_source
            self._next_source += 1

        def drive(irq: int, level: bool) -> None:
            with self._lock:
                asserted = self._asserted.setdefault(irq, set())
                before = bool(asserted)
                if level:
                    asserted.add(source_id)
                else:
                    asserted.discard(source_id)
                if bool(asserted) != before:
                    self._irq_line(irq, not before)

        return drive

    def level(self, irq: int) -> bool:
        """The level the underlying line was last driven to (False if never)."""
        with self._lock:
            return bool(self._asserted.get(irq))
