"""Shared ISA interrupt lines (COM1+COM3 on IRQ 4, COM2+COM4 on IRQ 3) and the exec UARTs."""

from __future__ import annotations

import pytest

from vmboot.devices.bus import PortBus
from vmboot.devices.console import ConsoleOutput
from vmboot.devices.pc import PcPlatform
from vmboot.devices.serial import (
    COM1,
    COM2,
    COM3,
    COM4,
    IER,
    IIR,
    IIR_NO_INT,
    IIR_THRI,
    MCR,
    MSR,
)
from vmboot.devices.wiring import SharedIrqLines
from vmboot.errors import BootConfigError
from vmboot.vmm.wiring import connect_devices

THRI = 0x02


def test_line_is_the_or_of_its_sources() -> None:
    calls: list[tuple[int, bool]] = []
    lines = SharedIrqLines(lambda irq, level: calls.append((irq, level)))
    a, b = lines.source(), lines.source()
    a(4, True)
    b(4, True)          # already high: no new call
    a(4, False)         # b still asserts it: stays high
    assert calls == [(4, True)]
    assert lines.level(4)
    b(4, False)
    assert calls == [(4, True), (4, False)]
    assert not lines.level(4)


def test_lines_are_independent_and_repeats_do_not_drive() -> None:
    calls: list[tuple[int, bool]] = []
    lines = SharedIrqLines(lambda irq, level: calls.append((irq, level)))
    a, b = lines.source(), lines.source()
    a(3, True)
    a(3, True)
    b(4, True)
    b(4, False)
    b(4, False)
    a(3, False)
    assert calls == [(3, True), (4, True), (4, False), (3, False)]


def four_uart_platform() -> tuple[PcPlatform, list[tuple[int, bool]], dict[str, ConsoleOutput]]:
    outputs = {"COM2": ConsoleOutput(), "COM3": ConsoleOutput(), "COM4": ConsoleOutput()}
    pc = PcPlatform(serial_ports=(COM1, COM2, COM3, COM4), serial_outputs=outputs)
    calls: list[tuple[int, bool]] = []
    connect_devices(pc.devices(), lambda irq, level: calls.append((irq, level)), None)
    return pc, calls, outputs


def test_two_uarts_on_irq4_keep_the_line_up_until_both_are_served() -> None:
    pc, calls, _ = four_uart_platform()
    com1, com3 = pc.serials["COM1"], pc.serials["COM3"]
    com1.port_write(IER, 1, THRI)     # THRE pending on COM1 -> line 4 up
    com3.port_write(IER, 1, THRI)     # and on COM3: still up, no second call
    assert calls == [(4, True)]
    assert com1.port_read(IIR, 1) & 0x0F == IIR_THRI   # reading IIR clears COM1's THRE
    assert calls == [(4, True)]       # COM3 still pending: a per-UART line would drop here
    assert com3.port_read(IIR, 1) & 0x0F == IIR_THRI
    assert calls == [(4, True), (4, False)]
    assert com1.port_read(IIR, 1) & 0x0F == IIR_NO_INT


def test_uarts_write_to_their_own_outputs() -> None:
    pc, _, outputs = four_uart_platform()
    bus = PortBus()
    pc.attach(bus)
    for base, byte in ((COM1.base, b"c"), (COM2.base, b"o"), (COM3.base, b"e"), (COM4.base, b"s")):
        bus.write(base, 1, byte[0])
    assert bytes(pc.console.data) == b"c"
    assert [bytes(outputs[n].data) for n in ("COM2", "COM3", "COM4")] == [b"o", b"e", b"s"]


def test_com4_passes_the_8250_loopback_probe() -> None:
    """ttyS3 (0x2E8) has no UPF_SKIP_TEST: the driver writes MCR=0x1A and wants MSR 7:4 = 0x9."""
    pc, _, outputs = four_uart_platform()
    bus = PortBus()
    pc.attach(bus)
    bus.write(COM4.base + MCR, 1, 0x1A)
    assert bus.read(COM4.base + MSR, 1) & 0xF0 == 0x90
    bus.write(COM4.base, 1, 0x55)     # in loopback a sent byte comes back, not out
    assert bus.read(COM4.base, 1) == 0x55
    bus.write(COM4.base + MCR, 1, 0x00)
    bus.write(COM4.base, 1, 0x41)     # out of loopback, bytes go to the output again
    assert bytes(outputs["COM4"].data) == b"A"


def test_serial_outputs_must_name_a_non_console_port() -> None:
    with pytest.raises(BootConfigError, match="COM9"):
        PcPlatform(serial_ports=(COM1, COM2), serial_outputs={"COM9": ConsoleOutput()})
    with pytest.raises(BootConfigError, match="COM1"):
        PcPlatform(serial_ports=(COM1, COM2), serial_outputs={"COM1": ConsoleOutput()})
