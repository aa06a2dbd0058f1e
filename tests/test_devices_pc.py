"""The PC platform on a port bus: what Linux probes gets a sane answer, extra devices attach."""

from __future__ import annotations

import logging

import pytest

from vmboot.devices import misc
from vmboot.devices.bus import MmioBus, PortBus
from vmboot.devices.pc import BusKind, ExtraDevice, PcPlatform
from vmboot.devices.serial import COM1, COM2
from vmboot.errors import BootConfigError
from vmboot.vmm.exits import ExitReason
from vmboot.vmm.wiring import connect_devices


def test_platform_ports(caplog: pytest.LogCaptureFixture) -> None:
    pc = PcPlatform(serial_ports=(COM1, COM2))
    bus = PortBus()
    pc.attach(bus)
    names = {name for _, _, name in bus.devices()}
    assert {"COM1 (16550A)", "COM2 (16550A)", "i8042 data", "i8042 command", "CMOS RTC"} <= names
    with caplog.at_level(logging.INFO, logger="vmboot.devices"):
        bus.write(0xCF8, 4, 0x80000000)  # pci_check_type1
        assert bus.read(0xCF8, 4) == 0xFFFFFFFF
        assert bus.read(0xCFC, 2) == 0xFFFF
        bus.write(misc.POST_CODE_PORT, 1, 0x12)
    assert caplog.records == []  # known ports: nothing logged as unhandled
    assert pc.post.last_code == 0x12
    assert bus.read(0x64, 1) & 0x02 == 0
    # Each UART has its own output; only COM1's is the console.
    bus.write(COM2.base, 1, ord("2"))
    bus.write(COM1.base, 1, ord("1"))
    assert bytes(pc.console.data) == b"1"
    assert bytes(pc.serials["COM2"].output.data) == b"2"


def test_port_b_refresh_bit_toggles() -> None:
    dev = misc.SystemControlB()
    a, b = dev.port_read(0, 1), dev.port_read(0, 1)
    assert (a ^ b) == misc.PORT_B_REFRESH
    dev.port_write(0, 1, 0xFF)
    assert dev.port_read(0, 1) & misc.PORT_B_WRITABLE == misc.PORT_B_WRITABLE


def test_unknown_port_is_all_ones() -> None:
    bus = PortBus()
    PcPlatform().attach(bus)
    assert bus.read(0x2F8, 1) == 0xFF  # no COM2 by default


def test_connect_devices_wires_irq_and_stop() -> None:
    pc = PcPlatform()
    irqs: list[tuple[int, bool]] = []
    stops: list[ExitReason] = []
    connect_devices(pc.devices(), lambda i, lvl: irqs.append((i, lvl)),
                    lambda reason, detail: stops.append(reason))
    pc.console_serial.port_write(1, 1, 0x02)  # IER.THRI
    pc.i8042.write_command(0xFE)
    assert irqs == [(4, True)]
    assert stops == [ExitReason.RESET]


class Reporter:
    def __init__(self) -> None:
        self.seen: list[int] = []

    def port_read(self, offset: int, size: int) -> int:
        return 0x42

    def port_write(self, offset: int, size: int, value: int) -> None:
        self.seen.append(value)


def test_extra_device_attaches_and_rejects_wrong_bus() -> None:
    rep = Reporter()
    ports, mmio = PortBus(), MmioBus()
    ExtraDevice("report", 0xE9, 1, rep).attach(ports, mmio)
    ports.write(0xE9, 1, 7)
    assert rep.seen == [7]
    with pytest.raises(BootConfigError, match="mmio_read"):
        ExtraDevice("report", 0xD000_0000, 0x1000, rep, BusKind.MMIO).attach(ports, mmio)
    with pytest.raises(BootConfigError, match="overlaps"):
        ExtraDevice("again", 0xE9, 1, rep).attach(ports, mmio)


def test_platform_needs_a_serial_port() -> None:
    with pytest.raises(BootConfigError, match="serial_ports"):
        PcPlatform(serial_ports=())
