"""CMOS RTC: host time in BCD/binary, 12/24 hour, status registers, CMOS RAM."""

from __future__ import annotations

import calendar

import pytest

from vmboot.devices import rtc as r
from vmboot.devices.bus import PortBus
from vmboot.devices.rtc import CmosRtc

# 2024-02-29 15:04:05 UTC, a Thursday.
T = calendar.timegm((2024, 2, 29, 15, 4, 5, 0, 0, 0))


def make() -> tuple[CmosRtc, PortBus]:
    dev = CmosRtc(clock=lambda: float(T))
    bus = PortBus()
    bus.attach(r.INDEX_PORT, r.PORT_COUNT, dev, "rtc")
    return dev, bus


def cmos(bus: PortBus, reg: int, nmi_off: bool = True) -> int:
    bus.write(r.INDEX_PORT, 1, reg | (0x80 if nmi_off else 0))
    return bus.read(r.DATA_PORT, 1)


def test_bcd_24_hour_default() -> None:
    _, bus = make()
    got = [cmos(bus, reg) for reg in (r.REG_SECONDS, r.REG_MINUTES, r.REG_HOURS, r.REG_DAY,
                                      r.REG_MONTH, r.REG_YEAR, r.REG_CENTURY, r.REG_WEEKDAY)]
    assert got == [0x05, 0x04, 0x15, 0x29, 0x02, 0x24, 0x20, 5]


def test_binary_and_12_hour_mode() -> None:
    _, bus = make()
    bus.write(r.INDEX_PORT, 1, r.REG_B)
    bus.write(r.DATA_PORT, 1, r.B_BINARY)  # binary, 12-hour
    assert cmos(bus, r.REG_HOURS) == 3 | r.HOUR_PM
    assert cmos(bus, r.REG_YEAR) == 24
    assert cmos(bus, r.REG_DAY) == 29


@pytest.mark.parametrize(("hour", "want"), [(0, 0x12), (11, 0x11), (12, 0x12 | r.HOUR_PM)])
def test_12_hour_bcd_edges(hour: int, want: int) -> None:
    t = calendar.timegm((2024, 1, 1, hour, 0, 0, 0, 0, 0))
    dev = CmosRtc(clock=lambda: float(t))
    dev.write_register(r.REG_B, 0)
    assert dev.read_register(r.REG_HOURS) == want


def test_status_registers() -> None:
    _, bus = make()
    assert not cmos(bus, r.REG_A) & r.A_UIP
    assert cmos(bus, r.REG_B) == r.B_24_HOUR
    assert cmos(bus, r.REG_C) == 0
    assert cmos(bus, r.REG_D) & r.D_VALID_RAM
    bus.write(r.INDEX_PORT, 1, r.REG_D)
    bus.write(r.DATA_PORT, 1, 0)
    assert cmos(bus, r.REG_D) & r.D_VALID_RAM  # read-only


def test_cmos_ram_round_trip_and_index_readback() -> None:
    dev, bus = make()
    bus.write(r.INDEX_PORT, 1, 0x80 | 0x40)
    bus.write(r.DATA_PORT, 1, 0xA5)
    assert cmos(bus, 0x40, nmi_off=False) == 0xA5
    assert dev.index == 0x40


def test_bcd() -> None:
    assert [r.to_bcd(v) for v in (0, 9, 10, 59, 99)] == [0x00, 0x09, 0x10, 0x59, 0x99]
