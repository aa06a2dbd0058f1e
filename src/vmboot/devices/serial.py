"""A 16550A UART, as Linux's 8250 driver expects to find it at COM1..COM4.

Register map (offsets from the base port; Linux include/uapi/linux/serial_reg.h)::

    off  DLAB=0 read / write          DLAB=1
    0    RBR (receive) / THR (send)   DLL (divisor low)
    1    IER (interrupt enable)       DLM (divisor high)
    2    IIR (read) / FCR (write)
    3    LCR (line control; bit 7 = DLAB)
    4    MCR (modem control; bit 4 = loopback)
    5    LSR (line status)
    6    MSR (modem status)
    7    SCR (scratch)

What the 8250 driver's probe and use rely on, and this model provides:

- IER keeps the 4 interrupt-enable bits and reads back exactly those;
- with FCR bit 0 set, IIR bits 7:6 read 11 (FIFOs enabled), which identifies a 16550A;
- in loopback (MCR bit 4), MSR reflects MCR: RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD,
  and transmitted bytes come back as received bytes;
- transmission is instantaneous: THR and the shift register are always empty
  (LSR THRE|TEMT), so a byte written to THR goes straight to the console;
- the THRE interrupt is raised when IER.THRI goes 0 -> 1 while THR is empty, and after
  each THR write; reading IIR while it reports THRE clears it (the driver's
  "does THRE re-assert" test and interrupt-driven output both depend on this);
- host input (:meth:`push_input`) raises the received-data interrupt.

The interrupt line is level-driven through ``irq_line(irq, level)`` (KVM_IRQ_LINE): it
is raised while any enabled interrupt is pending and lowered otherwise, so the in-kernel
PIC sees a fresh edge for every new interrupt. It is only called when the level changes.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from vmboot.devices.console import ConsoleOutput
from vmboot.devices.state import DeviceState, field_bool, field_bytes, field_int
from vmboot.devices.wiring import IrqLine

# Register offsets.
RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7
REGISTER_COUNT = 8

# IER bits.
IER_RDI = 0x01
"""Received data available."""
IER_THRI = 0x02
"""Transmitter holding register empty."""
IER_RLSI = 0x04
"""Receiver line status."""
IER_MSI = 0x08
"""Modem status."""
IER_MASK = 0x0F

# IIR values (bits 3:0) and bits.
IIR_NO_INT = 0x01
IIR_MSI = 0x00
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_RLSI = 0x06
IIR_ID_MASK = 0x0E
IIR_FIFO_ENABLED = 0xC0
"""Bits 7:6 = 11: FIFOs enabled and working (a 16550A; a 16550 reads 10)."""

# FCR bits.
FCR_ENABLE_FIFO = 0x01
FCR_CLEAR_RCVR = 0x02
FCR_CLEAR_XMIT = 0x04

# LCR bits.
LCR_DLAB = 0x80

# MCR bits.
MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
MCR_MASK = 0x1F

# LSR bits.
LSR_DR = 0x01
"""Receiver data ready."""
LSR_OE = 0x02
"""Overrun error."""
LSR_BI = 0x10
"""Break interrupt."""
LSR_THRE = 0x20
"""Transmit holding register empty."""
LSR_TEMT = 0x40
"""Transmitter empty."""
LSR_ERROR_BITS = LSR_OE | LSR_BI

# MSR bits.
MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_DELTA_MASK = 0x0F
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80

MSR_NOT_LOOPBACK = MSR_DCD | MSR_DSR | MSR_CTS
"""Outside loopback: carrier, data set ready and clear to send are asserted (a null modem)."""

DEFAULT_DIVISOR = 12
"""9600 baud from the 1.8432 MHz clock; only stored, the model does not time anything."""
RX_BACKLOG_LIMIT = 64 * 1024
"""Host input held for the guest at most; more is dropped and counted."""


@dataclass(frozen=True, slots=True)
class SerialPort:
    """Where a legacy PC UART sits: its first port and its ISA interrupt."""

    name: str
    base: int
    irq: int


COM1 = SerialPort("COM1", 0x3F8, 4)
COM2 = SerialPort("COM2", 0x2F8, 3)
COM3 = SerialPort("COM3", 0x3E8, 4)
COM4 = SerialPort("COM4", 0x2E8, 3)


class Serial16550A:
    """A 16550A UART on the port bus (8 registers). Thread-safe: host input may come from
    another thread while the vCPU thread touches the registers."""

    length = REGISTER_COUNT

    def __init__(
        self,
        output: ConsoleOutput | None = None,
        irq: int = COM1.irq,
        irq_line: IrqLine | None = None,
    ) -> None:
        self.output = output if output is not None else ConsoleOutput()
        self.irq = irq
        self._irq_line = irq_line
        self._lock = threading.Lock()
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.fcr = 0
        self.scr = 0
        self.divisor = DEFAULT_DIVISOR
        self.lsr_errors = 0
        self.msr_delta = 0
        self.thr_pending = False
        """A THRE interrupt is pending (cleared by reading IIR while it is reported)."""
        self.rx: deque[int] = deque()
        self.rx_dropped = 0
        self.irq_level = False

    def connect_irq(self, irq_line: IrqLine) -> None:
        """Attach the interrupt line (once the VM exists)."""
        self._irq_line = irq_line
        self.irq_level = False
        with self._lock:
            self._update_irq()

    # -- host side ---------------------------------------------------------------------------
    def push_input(self, data: bytes) -> int:
        """Queue bytes for the guest to receive; returns how many were accepted."""
        with self._lock:
            room = max(0, RX_BACKLOG_LIMIT - len(self.rx))
            accepted = data[:room]
            self.rx.extend(accepted)
            self.rx_dropped += len(data) - len(accepted)
            self._update_irq()
        return len(accepted)

    # -- snapshot state ----------------------------------------------------------------------
    def state(self) -> DeviceState:
        """The registers and the receive queue (the output and IRQ wiring are not state)."""
        with self._lock:
            return {
                "ier": self.ier, "lcr": self.lcr, "mcr": self.mcr, "fcr": self.fcr,
                "scr": self.scr, "divisor": self.divisor, "lsr_errors": self.lsr_errors,
                "msr_delta": self.msr_delta, "thr_pending": self.thr_pending,
                "rx": list(self.rx),
            }

    def restore(self, state: Mapping[str, object]) -> None:
        """Take back :meth:`state` (all fields checked first) and drive the IRQ line to match."""
        name = "16550A"
        regs = {f: field_int(name, state, f, 0xFF) for f in (
            "ier", "lcr", "mcr", "fcr", "scr", "lsr_errors", "msr_delta")}
        divisor = field_int(name, state, "divisor", 0xFFFF)
        thr_pending = field_bool(name, state, "thr_pending")
        rx = field_bytes(name, state, "rx", RX_BACKLOG_LIMIT)
        with self._lock:
            self.ier, self.lcr, self.mcr = regs["ier"] & IER_MASK, regs["lcr"], regs["mcr"] & MCR_MASK
            self.fcr, self.scr = regs["fcr"], regs["scr"]
            self.lsr_errors, self.msr_delta = regs["lsr_errors"], regs["msr_delta"]
            self.divisor, self.thr_pending = divisor, thr_pending
            self.rx = deque(rx)
            self.irq_level = False
            self._update_irq()

    # -- guest side --------------------------------------------------------------------------
    def port_read(self, offset: int, size: int) -> int:
        with self._lock:
            if offset == LSR:
                value = LSR_THRE | LSR_TEMT | self.lsr_errors | (LSR_DR if self.rx else 0)
                if self.lsr_errors:
                    self.lsr_errors = 0
                    self._update_irq()
                return value
            if offset == RBR:
                if self.lcr & LCR_DLAB:
                    return self.divisor & 0xFF
                if not self.rx:
                    return 0
                value = self.rx.popleft()
                if not self.rx:
                    self._update_irq()
                return value
            if offset == IIR:
                value = self._interrupt_id()
                if value == IIR_THRI:
                    self.thr_pending = False
                    self._update_irq()
                return value | (IIR_FIFO_ENABLED if self.fcr & FCR_ENABLE_FIFO else 0)
            if offset == IER:
                return (self.divisor >> 8) & 0xFF if self.lcr & LCR_DLAB else self.ier
            if offset == LCR:
                return self.lcr
            if offset == MCR:
                return self.mcr
            if offset == MSR:
                value = self._modem_status() | self.msr_delta
                if self.msr_delta:
                    self.msr_delta = 0
                    self._update_irq()
                return value
            return self.scr

    def port_write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        with self._lock:
            if offset == THR:
                if self.lcr & LCR_DLAB:
                    self.divisor = (self.divisor & 0xFF00) | value
                    return
                if self.mcr & MCR_LOOP:
                    self.rx.append(value)
                    self._update_irq()
                else:
                    self.output.put(value)
                # Only THRE can change here; with THRI off (polled console) nothing to update.
                if self.ier & IER_THRI and not self.thr_pending:
                    self.thr_pending = True
                    self._update_irq()
            elif offset == IER:
                if self.lcr & LCR_DLAB:
                    self.divisor = (self.divisor & 0x00FF) | (value << 8)
                    return
                old = self.ier
                self.ier = value & IER_MASK
                if (self.ier ^ old) & IER_THRI:
                    # Rising edge of THRI with THR empty (always, here): THRE is pending.
                    self.thr_pending = bool(self.ier & IER_THRI)
                    if not self.thr_pending:
                        self.output.flush()
                self._update_irq()
            elif offset == FCR:
                if value & FCR_CLEAR_RCVR:
                    self.rx.clear()
                self.fcr = value & ~(FCR_CLEAR_RCVR | FCR_CLEAR_XMIT)
                self._update_irq()
            elif offset == LCR:
                self.lcr = value
            elif offset == MCR:
                old_status = self._modem_status()
                self.mcr = value & MCR_MASK
                new_status = self._modem_status()
                self.msr_delta |= _msr_deltas(old_status, new_status)
                self._update_irq()
            elif offset == SCR:
                self.scr = value
            # LSR and MSR are read-only; writes are ignored as on the real part.

    # -- internals (called with the lock held) ----------------------------------------------
    def _modem_status(self) -> int:
        mcr = self.mcr
        if not mcr & MCR_LOOP:
            return MSR_NOT_LOOPBACK
        status = 0
        if mcr & MCR_RTS:
            status |= MSR_CTS
        if mcr & MCR_DTR:
            status |= MSR_DSR
        if mcr & MCR_OUT1:
            status |= MSR_RI
        if mcr & MCR_OUT2:
            status |= MSR_DCD
        return status

    def _interrupt_id(self) -> int:
        """The highest-priority pending, enabled interrupt (IIR bits 3:0)."""
        ier = self.ier
        if ier & IER_RLSI and self.lsr_errors:
            return IIR_RLSI
        if ier & IER_RDI and self.rx:
            return IIR_RDI
        if ier & IER_THRI and self.thr_pending:
            return IIR_THRI
        if ier & IER_MSI and self.msr_delta:
            return IIR_MSI
        return IIR_NO_INT

    def _update_irq(self) -> None:
        level = self._interrupt_id() != IIR_NO_INT
        if level != self.irq_level:
            self.irq_level = level
            if self._irq_line is not None:
                self._irq_line(self.irq, level)


def _msr_deltas(old: int, new: int) -> int:
    """MSR delta bits for a change of the modem status lines (RI: trailing edge only)."""
    changed = old ^ new
    delta = 0
    if changed & MSR_CTS:
        delta |= MSR_DCTS
    if changed & MSR_DSR:
        delta |= MSR_DDSR
    if changed & MSR_DCD:
        delta |= MSR_DDCD
    if old & MSR_RI and not new & MSR_RI:
        delta |= MSR_TERI
    return delta
