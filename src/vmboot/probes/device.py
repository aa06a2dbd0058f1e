"""``ProbeDevice``: the host end of the probe ports; collects the report, ends the run on DONE."""

from __future__ import annotations

from vmboot.probes.protocol import PORT_BASE, PORT_COUNT, PORT_DATA, PORT_KEY, WORD_SIZE, Key
from vmboot.probes.report import ProbeReport
from vmboot.vmm.exits import ExitReason
from vmboot.vmm.wiring import StopHook

_KEY_OFFSET = PORT_KEY - PORT_BASE
_DATA_OFFSET = PORT_DATA - PORT_BASE
_ALL_ONES = 0xFFFFFFFF
DONE_DETAIL = "the probe reported done"


class ProbeDevice:
    """A :class:`~vmboot.devices.bus.PortDevice` for ``[PORT_BASE, PORT_BASE + PORT_COUNT)``.

    Attach it with :meth:`attach`; give it the runner's stop hook (``connect_stop``) so that
    the DONE record ends the run with :attr:`ExitReason.POWEROFF`.
    """

    port_base = PORT_BASE
    port_count = PORT_COUNT

    def __init__(self, stop: StopHook | None = None) -> None:
        self.report = ProbeReport()
        self._stop = stop

    def connect_stop(self, stop: StopHook) -> None:
        self._stop = stop

    def port_read(self, offset: int, size: int) -> int:
        return _ALL_ONES

    def port_write(self, offset: int, size: int, value: int) -> None:
        if size != WORD_SIZE:
            self.report.errors.append(
                f"port {PORT_BASE + offset:#x}: {size}-byte write of {value:#x}; the probe "
                f"protocol uses {WORD_SIZE}-byte OUTs only"
            )
            return
        if offset == _KEY_OFFSET:
            self.report.begin(value)
        elif offset == _DATA_OFFSET:
            self.report.add_word(value)
            last = self.report.records[-1] if self.report.records else None
            if last is not None and last.kind == Key.DONE and last.u64() is not None \
                    and self._stop is not None:
                self._stop(ExitReason.POWEROFF, DONE_DETAIL)
        else:
            self.report.errors.append(
                f"port {PORT_BASE + offset:#x}: write of {value:#x} to an unused probe port "
                f"(key {PORT_KEY:#x}, data {PORT_DATA:#x})"
            )
