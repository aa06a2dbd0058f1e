"""Connecting devices to the VM and the run loop: interrupt lines, resets, requests to stop."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

from vmboot.devices.wiring import IrqLine, RaisesIrq, SharedIrqLines, SignalsReset
from vmboot.vmm.exits import ExitReason

StopHook = Callable[[ExitReason, str], object]
"""``stop(reason, detail)``: end the current run with this reason."""


@runtime_checkable
class StopsRun(Protocol):
    """A device that may end the run (e.g. a test or probe device reporting it is done)."""

    def connect_stop(self, stop: StopHook) -> None: ...


def connect_devices(devices: Iterable[object], irq_line: IrqLine | None,
                    stop: StopHook | None) -> None:
    """Give every device that wants them the VM's interrupt line and the run's stop hook; a
    device's reset signal ends the run with :attr:`ExitReason.RESET`.

    Each device gets its own source of one :class:`~vmboot.devices.wiring.SharedIrqLines`,
    so devices on the same ISA line (COM1 and COM3 on IRQ 4) drive it as the OR of theirs.
    """
    shared = SharedIrqLines(irq_line) if irq_line is not None else None
    for dev in devices:
        if shared is not None and isinstance(dev, RaisesIrq):
            dev.connect_irq(shared.source())
        if stop is None:
            continue
        if isinstance(dev, StopsRun):
            dev.connect_stop(stop)
        if isinstance(dev, SignalsReset):
            dev.connect_reset(_reset_stops(stop))


def _reset_stops(stop: StopHook) -> Callable[[str], object]:
    def on_reset(detail: str) -> object:
        return stop(ExitReason.RESET, detail)

    return on_reset
