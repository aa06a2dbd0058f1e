"""Small answers for the legacy ports a booting kernel touches, so none of them is "unknown".

- :class:`PostCode`, port 0x80: the POST-code port. ``inb_p``/``outb_p`` write it as an I/O
  delay; writes are counted and the last value kept, reads return all-ones.
- :class:`PciConfigAbsent`, ports 0xCF8-0xCFF: PCI configuration mechanism #1 with no host
  bridge. Everything reads all-ones, so Linux's ``pci_check_type1`` (it writes 0x80000000
  to 0xCF8 and expects to read it back) finds no PCI. Unlike the bus's own answer for an
  unknown port, nothing is logged.
- :class:`SystemControlB`, port 0x61: NMI status and control (PC "port B"). Bit 4, the
  memory-refresh indicator, toggles on every read, which is what delay loops watch;
  bits 0-3 (speaker gate and enables) read back. With KVM's in-kernel PIT (PIT2), KVM
  serves this port itself and this device is never reached.
"""

from __future__ import annotations

POST_CODE_PORT = 0x80
PCI_CONFIG_ADDRESS_PORT = 0xCF8
PCI_CONFIG_PORT_COUNT = 8
"""0xCF8-0xCFB (address) and 0xCFC-0xCFF (data)."""
SYSTEM_CONTROL_B_PORT = 0x61

PORT_B_WRITABLE = 0x0F
"""Timer 2 gate, speaker data, parity-check and channel-check enables."""
PORT_B_REFRESH = 0x10
"""Toggles at every read, as the DRAM refresh request signal did."""


def all_ones(size: int) -> int:
    return (1 << (8 * size)) - 1


class PostCode:
    """Port 0x80: swallow writes, remember the last code."""

    length = 1

    def __init__(self) -> None:
        self.last_code: int | None = None
        self.writes = 0

    def port_read(self, offset: int, size: int) -> int:
        return all_ones(size)

    def port_write(self, offset: int, size: int, value: int) -> None:
        self.last_code = value
        self.writes += 1


class PciConfigAbsent:
    """0xCF8-0xCFF: no PCI host bridge; reads all-ones, writes ignored, nothing logged."""

    length = PCI_CONFIG_PORT_COUNT

    def port_read(self, offset: int, size: int) -> int:
        return all_ones(size)

    def port_write(self, offset: int, size: int, value: int) -> None:
        pass


class SystemControlB:
    """Port 0x61: refresh bit toggling on each read; the low control bits read back."""

    length = 1

    def __init__(self) -> None:
        self.control = 0
        self.refresh = 0

    def port_read(self, offset: int, size: int) -> int:
        self.refresh ^= PORT_B_REFRESH
        return self.control | self.refresh

    def port_write(self, offset: int, size: int, value: int) -> None:
        self.control = value & PORT_B_WRITABLE
