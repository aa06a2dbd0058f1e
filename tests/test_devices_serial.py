"""The 16550A model against what Linux's 8250 driver does to it (probe, THRE test, output, input)."""

from __future__ import annotations

import itertools

import pytest

from vmboot.devices import serial as s
from vmboot.devices.bus import PortBus
from vmboot.devices.console import ConsoleOutput
from vmboot.devices.serial import COM1, Serial16550A


class Uart:
    """A UART on a real port bus, with its IRQ line recorded."""

    def __init__(self, sink: list[bytes] | None = None) -> None:
        self.edges: list[tuple[int, bool]] = []
        self.console = ConsoleOutput(sink=sink.append if sink is not None else None)
        self.dev = Serial16550A(self.console, irq=COM1.irq, irq_line=self._irq)
        self.bus = PortBus()
        self.bus.attach(COM1.base, self.dev.length, self.dev, "COM1")

    def _irq(self, irq: int, level: bool) -> None:
        self.edges.append((irq, level))

    def inb(self, reg: int) -> int:
        return self.bus.read(COM1.base + reg, 1)

    def outb(self, reg: int, value: int) -> None:
        self.bus.write(COM1.base + reg, 1, value)

    @property
    def level(self) -> bool:
        return self.edges[-1][1] if self.edges else False


def linux_autoconfig_type(u: Uart) -> str:
    """The register dance of Linux 6.1 autoconfig() (8250_port.c), reduced to its decisions."""
    # IER test: does the register hold exactly the 4 enable bits?
    u.outb(s.IER, 0)
    scratch = u.inb(s.IER) & 0x0F
    u.outb(s.IER, 0x0F)
    scratch2 = u.inb(s.IER) & 0x0F
    u.outb(s.IER, 0)
    if scratch != 0 or scratch2 != 0x0F:
        return "none"
    # Loopback test: MSR must mirror MCR (OUT2 -> DCD, RTS -> CTS).
    save_mcr = u.inb(s.MCR)
    u.outb(s.MCR, s.MCR_LOOP | 0x0A)
    status = u.inb(s.MSR) & 0xF0
    u.outb(s.MCR, save_mcr)
    if status != 0x90:
        return "none"
    u.outb(s.LCR, 0xBF)
    u.outb(s.FCR, 0)  # EFR on enhanced parts, FCR on a plain 16550A
    u.outb(s.LCR, 0)
    u.outb(s.FCR, s.FCR_ENABLE_FIFO)
    kind = u.inb(s.IIR) >> 6
    return {0: "8250/16450", 1: "16550 (buggy)", 2: "16550", 3: "16550A"}[kind]


def test_linux_autoconfig_detects_a_16550a() -> None:
    u = Uart()
    assert linux_autoconfig_type(u) == "16550A"
    assert u.inb(s.LSR) != 0xFF  # serial8250_startup's "LSR safety check"


def test_scratch_register_and_divisor_latch() -> None:
    u = Uart()
    u.outb(s.SCR, 0x5A)
    assert u.inb(s.SCR) == 0x5A
    u.outb(s.IER, 0x05)
    u.outb(s.LCR, s.LCR_DLAB | 0x03)
    u.outb(s.DLL, 0x01)
    u.outb(s.DLM, 0x00)
    assert (u.inb(s.DLL), u.inb(s.DLM)) == (0x01, 0x00)
    u.outb(s.LCR, 0x03)
    assert u.inb(s.IER) == 0x05  # divisor writes did not touch IER
    assert u.inb(s.LCR) == 0x03
    assert u.console.data == b""  # and nothing was transmitted


def test_thre_reasserts_when_thri_is_re_enabled() -> None:
    """serial8250_startup's THRE test: a UART that does not re-assert gets UART_BUG_THRE."""
    u = Uart()
    u.outb(s.FCR, s.FCR_ENABLE_FIFO)
    u.outb(s.IER, s.IER_THRI)
    iir1 = u.inb(s.IIR)
    u.outb(s.IER, 0)
    u.outb(s.IER, s.IER_THRI)
    iir = u.inb(s.IIR)
    u.outb(s.IER, 0)
    assert iir1 & 0x0F == s.IIR_THRI
    assert iir & 0x0F == s.IIR_THRI
    assert iir & s.IIR_FIFO_ENABLED == s.IIR_FIFO_ENABLED
    assert not u.level


def test_polled_console_output_reaches_capture_and_sink() -> None:
    chunks: list[bytes] = []
    u = Uart(chunks)
    for ch in b"Linux version 6.1\nno newline":
        while not u.inb(s.LSR) & s.LSR_THRE:
            pass
        u.outb(s.THR, ch)
    assert bytes(u.console.data) == b"Linux version 6.1\nno newline"
    assert chunks == [b"Linux version 6.1\n"]  # a chunk per line ...
    u.console.flush()
    assert chunks[-1] == b"no newline"  # ... and the rest on flush
    assert u.edges == []  # IER = 0: polled output raises no interrupt
    assert u.console.first_byte_at is not None


def test_interrupt_driven_output_gives_an_edge_per_burst() -> None:
    u = Uart()
    u.outb(s.MCR, s.MCR_OUT2 | s.MCR_RTS | s.MCR_DTR)
    u.outb(s.IER, s.IER_RDI | s.IER_THRI)  # start_tx
    assert u.edges == [(4, True)]
    text = b"hello from user space\n"
    sent = 0
    interrupts = 0
    while True:  # the ISR: read IIR, refill up to the FIFO size, until no interrupt is left
        iir = u.inb(s.IIR)
        if iir & s.IIR_NO_INT:
            break
        interrupts += 1
        assert iir & s.IIR_ID_MASK == s.IIR_THRI
        assert not u.level  # reading IIR acknowledged THRE
        for ch in text[sent : sent + 16]:
            u.outb(s.THR, ch)
        sent = min(sent + 16, len(text))
        if sent == len(text):
            u.outb(s.IER, s.IER_RDI)  # stop_tx
    assert bytes(u.console.data) == text
    assert interrupts == 2
    assert not u.level
    # Every raise is followed by a lower, and no call repeats the current level.
    levels = [lvl for _, lvl in u.edges]
    assert all(a != b for a, b in itertools.pairwise(levels))


def test_input_raises_rx_interrupt_and_is_read_in_order() -> None:
    u = Uart()
    u.outb(s.IER, s.IER_RDI)
    assert not u.level
    assert u.dev.push_input(b"ls\n") == 3
    assert u.level
    assert u.inb(s.IIR) & s.IIR_ID_MASK == s.IIR_RDI
    got = bytearray()
    while u.inb(s.LSR) & s.LSR_DR:
        got.append(u.inb(s.RBR))
    assert got == b"ls\n"
    assert not u.level
    assert u.inb(s.IIR) & s.IIR_NO_INT


def test_rx_priority_over_thre_and_fifo_clear() -> None:
    u = Uart()
    u.outb(s.IER, s.IER_RDI | s.IER_THRI)
    u.dev.push_input(b"x")
    assert u.inb(s.IIR) & s.IIR_ID_MASK == s.IIR_RDI
    u.outb(s.FCR, s.FCR_ENABLE_FIFO | s.FCR_CLEAR_RCVR)
    assert not u.inb(s.LSR) & s.LSR_DR
    assert u.inb(s.IIR) & s.IIR_ID_MASK == s.IIR_THRI


def test_loopback_returns_transmitted_bytes_as_input() -> None:
    u = Uart()
    u.outb(s.MCR, s.MCR_LOOP)
    u.outb(s.THR, 0x41)
    assert u.inb(s.LSR) & s.LSR_DR
    assert u.inb(s.RBR) == 0x41
    assert u.console.data == b""


def test_modem_status_deltas_in_loopback() -> None:
    u = Uart()
    u.outb(s.MCR, s.MCR_LOOP)
    u.outb(s.IER, s.IER_MSI)
    u.outb(s.MCR, s.MCR_LOOP | s.MCR_RTS)
    assert u.level
    assert u.inb(s.IIR) & 0x0F == s.IIR_MSI
    msr = u.inb(s.MSR)
    assert msr & s.MSR_CTS and msr & s.MSR_DCTS
    assert not u.inb(s.MSR) & s.MSR_DELTA_MASK  # reading cleared the deltas
    assert not u.level


def test_input_backlog_is_capped_and_counted() -> None:
    u = Uart()
    big = b"a" * (s.RX_BACKLOG_LIMIT + 10)
    assert u.dev.push_input(big) == s.RX_BACKLOG_LIMIT
    assert u.dev.rx_dropped == 10


def test_console_capture_limit_counts_dropped_bytes() -> None:
    out = ConsoleOutput(capture_limit=4)
    for b in b"abcdefg":
        out.put(b)
    assert bytes(out.data) == b"abcd"
    assert out.dropped == 3
    assert out.total == 7


def test_console_capture_limit_is_validated() -> None:
    from vmboot.errors import BootConfigError

    with pytest.raises(BootConfigError, match="capture_limit"):
        ConsoleOutput(capture_limit=-1)
