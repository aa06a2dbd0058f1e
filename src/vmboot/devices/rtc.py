"""The MC146818 CMOS real-time clock at ports 0x70 (index) and 0x71 (data).

Reading a time register gives the host's current UTC time, in BCD or binary and in 12- or
24-hour form as register B asks (Linux ``mc146818_get_time``). Status registers:

- A: update-in-progress (bit 7) always 0, so a reader never waits; the divider bits read
  as a running 32.768 kHz time base;
- B: writable; bit 2 (DM) binary mode, bit 1 (24/12) 24-hour mode; default BCD, 24-hour;
- C: interrupt flags, always 0 (no RTC interrupts are generated);
- D: bit 7 (VRT) 1: the battery-backed RAM is valid.

The other bytes of the 128-byte CMOS RAM read back what was written (zero at start).
Bit 7 of the index port is the NMI mask on a PC; it is accepted and ignored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from vmboot.devices.state import DeviceState, field_bytes, field_int
from vmboot.errors import DeviceStateError

INDEX_PORT = 0x70
DATA_PORT = 0x71
PORT_COUNT = 2
INDEX_MASK = 0x7F
"""Bit 7 of the index is the PC's NMI-disable bit, not part of the register number."""
CMOS_SIZE = 128

REG_SECONDS = 0x00
REG_SECONDS_ALARM = 0x01
REG_MINUTES = 0x02
REG_MINUTES_ALARM = 0x03
REG_HOURS = 0x04
REG_HOURS_ALARM = 0x05
REG_WEEKDAY = 0x06
REG_DAY = 0x07
REG_MONTH = 0x08
REG_YEAR = 0x09
REG_A = 0x0A
REG_B = 0x0B
REG_C = 0x0C
REG_D = 0x0D
REG_CENTURY = 0x32
"""The century byte, where ACPI's FADT would point on a PC (IBM AT convention)."""

A_UIP = 0x80
A_DIVIDER_32KHZ = 0x20
A_RATE_1024HZ = 0x06
A_DEFAULT = A_DIVIDER_32KHZ | A_RATE_1024HZ
B_SET = 0x80
B_BINARY = 0x04
B_24_HOUR = 0x02
B_DEFAULT = B_24_HOUR
D_VALID_RAM = 0x80
HOUR_PM = 0x80
"""In 12-hour mode, bit 7 of the hours register marks PM."""

Clock = Callable[[], float]
"""Seconds since the Unix epoch (``time.time``)."""


def to_bcd(value: int) -> int:
    return (value // 10) << 4 | (value % 10)


class CmosRtc:
    """CMOS RAM with a real-time clock. Attach at 0x70, 2 ports."""

    length = PORT_COUNT

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self.index = 0
        self.ram = bytearray(CMOS_SIZE)
        self.ram[REG_A] = A_DEFAULT
        self.ram[REG_B] = B_DEFAULT
        self.ram[REG_D] = D_VALID_RAM

    def state(self) -> DeviceState:
        """The index register and CMOS RAM (the time is the host's clock, not state)."""
        return {"index": self.index, "ram": list(self.ram)}

    def restore(self, state: Mapping[str, object]) -> None:
        index = field_int("CMOS RTC", state, "index", INDEX_MASK)
        ram = field_bytes("CMOS RTC", state, "ram", CMOS_SIZE)
        if len(ram) != CMOS_SIZE:
            raise DeviceStateError(f"CMOS RTC state: ram is {len(ram)} bytes; CMOS RAM is {CMOS_SIZE}")
        self.index, self.ram = index, bytearray(ram)

    def port_read(self, offset: int, size: int) -> int:
        if offset == 0:
            return self.index
        return self.read_register(self.index)

    def port_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.index = value & INDEX_MASK
        else:
            self.write_register(self.index, value & 0xFF)

    def read_register(self, index: int) -> int:
        if index == REG_C:
            return 0
        if index == REG_D:
            return D_VALID_RAM
        if index == REG_A:
            return self.ram[REG_A] & ~A_UIP
        clock_value = self._clock_register(index)
        return self.ram[index] if clock_value is None else clock_value

    def write_register(self, index: int, value: int) -> None:
        if index in (REG_C, REG_D):
            return  # read-only
        self.ram[index] = value

    def _clock_register(self, index: int) -> int | None:
        if index not in _CLOCK_FIELDS:
            return None
        t = time.gmtime(self._clock())
        b = self.ram[REG_B]
        if index == REG_HOURS:
            hour = t.tm_hour
            pm = 0
            if not b & B_24_HOUR:
                pm = HOUR_PM if hour >= 12 else 0
                hour = hour % 12 or 12
            return self._encode(hour, b) | pm
        value = {
            REG_SECONDS: t.tm_sec % 60,  # a leap second reads as 0
            REG_MINUTES: t.tm_min,
            REG_WEEKDAY: (t.tm_wday + 1) % 7 + 1,  # 1 = Sunday
            REG_DAY: t.tm_mday,
            REG_MONTH: t.tm_mon,
            REG_YEAR: t.tm_year % 100,
            REG_CENTURY: t.tm_year // 100,
        }[index]
        return self._encode(value, b)

    @staticmethod
    def _encode(value: int, b: int) -> int:
        return value if b & B_BINARY else to_bcd(value)


_CLOCK_FIELDS = frozenset(
    (REG_SECONDS, REG_MINUTES, REG_HOURS, REG_WEEKDAY, REG_DAY, REG_MONTH, REG_YEAR, REG_CENTURY)
)
