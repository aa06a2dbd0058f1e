"""The devices' plain-data state: state() then restore() into a fresh device gives the same
registers, and a bad saved state is refused before anything changes."""

from __future__ import annotations

import json

import pytest

from vmboot.devices.i8042 import I8042
from vmboot.devices.rtc import CMOS_SIZE, CmosRtc
from vmboot.devices.serial import IER, LCR, SCR, THR, Serial16550A
from vmboot.devices.state import SavesState
from vmboot.errors import DeviceStateError


def _busy_serial() -> tuple[Serial16550A, list[tuple[int, bool]]]:
    lines: list[tuple[int, bool]] = []
    uart = Serial16550A(irq_line=lambda irq, level: lines.append((irq, level)))
    uart.port_write(LCR, 1, 0x03)
    uart.port_write(SCR, 1, 0x5A)
    uart.port_write(IER, 1, 0x01)  # receive-data interrupt
    uart.push_input(b"abc")
    uart.port_write(THR, 1, ord("x"))
    return uart, lines


def test_every_device_speaks_the_protocol() -> None:
    for device in (Serial16550A(), CmosRtc(), I8042()):
        assert isinstance(device, SavesState)
        json.dumps(device.state())  # plain data


def test_serial_state_round_trips_and_drives_the_irq() -> None:
    uart, _ = _busy_serial()
    saved = uart.state()
    lines: list[tuple[int, bool]] = []
    fresh = Serial16550A(irq_line=lambda irq, level: lines.append((irq, level)))
    fresh.restore(json.loads(json.dumps(saved)))
    assert fresh.state() == saved
    assert fresh.irq_level and lines == [(fresh.irq, True)]  # data waiting, RDI enabled
    assert fresh.port_read(THR, 1) == ord("a")


def test_rtc_and_i8042_state_round_trip() -> None:
    rtc = CmosRtc(clock=lambda: 0.0)
    rtc.port_write(0, 1, 0x30)
    rtc.port_write(1, 1, 0x42)
    fresh_rtc = CmosRtc(clock=lambda: 0.0)
    fresh_rtc.restore(rtc.state())
    assert fresh_rtc.state() == rtc.state() and fresh_rtc.ram[0x30] == 0x42
    kbc = I8042()
    kbc.command.port_write(0, 1, 0x60)  # write the configuration byte: data expected next
    fresh_kbc = I8042()
    fresh_kbc.restore(kbc.state())
    assert fresh_kbc.state() == kbc.state() and fresh_kbc.expecting == 0x60


@pytest.mark.parametrize(("device", "field", "value", "reason"), [
    ("serial", "lcr", 256, r"lcr = 256 is not an integer in 0\.\.0xff"),
    ("serial", "rx", [1, 300], "rx is not a list of at most"),
    ("serial", "thr_pending", 1, "thr_pending = 1 is not true or false"),
    ("rtc", "ram", [0] * (CMOS_SIZE - 1), f"ram is {CMOS_SIZE - 1} bytes"),
    ("i8042", "output", "x", "output = 'x'"),
])
def test_a_bad_state_is_refused_and_changes_nothing(device: str, field: str, value: object,
                                                     reason: str) -> None:
    target: SavesState
    if device == "serial":
        target = _busy_serial()[0]
    elif device == "rtc":
        target = CmosRtc(clock=lambda: 0.0)
    else:
        target = I8042()
    before = target.state()
    bad = dict(before)
    bad[field] = value
    with pytest.raises(DeviceStateError, match=reason):
        target.restore(bad)
    assert target.state() == before
