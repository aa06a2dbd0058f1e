"""How a device reaches the rest of the machine: interrupt lines and a reset signal.

A device gets these as plain callables, so it can be unit-tested with a list-appending
lambda and wired to KVM (``vm.irq_line``) and the run loop by the VMM
(:func:`vmboot.vmm.wiring.connect_devices`). Devices know nothing of the VMM: a reset is
a signal the device raises (as Firecracker's i8042 writes its ``reset_evt``), and the VMM
decides that it ends the run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol, runtime_checkable

IrqLine = Callable[[int, bool], object]
"""``irq_line(irq, level)``: drive an interrupt line of the in-kernel interrupt controller."""

ResetHook = Callable[[str], object]
"""``on_reset(detail)``: the device pulsed the CPU reset line (``detail`` says how)."""


@runtime_checkable
class SignalsReset(Protocol):
    """A device that can reset the machine; the VMM hands it what to call before the run."""

    def connect_reset(self, on_reset: ResetHook) -> None: ...


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
