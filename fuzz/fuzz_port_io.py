"""A hostile guest's port I/O: every legacy PC device (16550A UARTs, i8042, CMOS RTC, POST,
PCI config, port B) and the probe report device, driven by arbitrary IN/OUT sequences
with sizes 1, 2, 4 (and invalid ones), as the KVM run loop would deliver them.

Contract: a guest cannot make the host raise anything but a VmbootError; reads return a
value that fits the access size; the console capture stays within its limit.
"""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

from fuzz.harness import Bytes, Target, atheris_main
from vmboot.devices.bus import PortBus
from vmboot.devices.console import ConsoleOutput
from vmboot.devices.pc import PcPlatform
from vmboot.probes.device import ProbeDevice
from vmboot.probes.protocol import PORT_BASE, PORT_COUNT

CAPTURE = 4096
PORTS = (0x3F8, 0x3F9, 0x3FA, 0x3FB, 0x3FC, 0x3FD, 0x3FE, 0x3FF, 0x60, 0x61, 0x64, 0x70, 0x71, 0x80,
         0xCF8, 0xCFC, 0xCFE, PORT_BASE, PORT_BASE + 1, PORT_BASE + 4, PORT_BASE + PORT_COUNT - 1, 0xFFFF)


def one_input(data: bytes) -> None:
    src = Bytes(data)
    console = ConsoleOutput(capture_limit=CAPTURE)
    platform = PcPlatform(console, clock=lambda: 1_700_000_000.0)
    bus = PortBus()
    platform.attach(bus)
    probe = ProbeDevice(stop=lambda reason, detail: None)
    bus.attach_device(PORT_BASE, PORT_COUNT, probe, "probe")
    while src.remaining:
        op = src.uint(1)
        port = src.choice(PORTS) + (src.uint(1) % 8 if op & 0x40 else 0)
        size = (1, 2, 4, 1, 2, 4, 3, 8)[op & 7]
        if op & 0x80:
            value = bus.read(port & 0xFFFF, size)
            assert 0 <= value < 1 << (8 * size), (port, size, value)
        else:
            bus.write(port & 0xFFFF, size, src.uint(4))
    assert len(console.data) <= CAPTURE
    probe.report.as_dict()
    _ = probe.report.done, probe.report.records_before_done


def _seeds() -> list[bytes]:
    out_byte = bytes([0x00, 0x00]) + b"A\0\0\0"  # OUT 0x3f8 <- 'A'
    probe_key = bytes([0x02, PORTS.index(PORT_BASE)]) + b"\x01\0\0\0"
    probe_data = bytes([0x02, PORTS.index(PORT_BASE + 4)]) + b"\x2a\0\0\0"
    rtc = bytes([0x00, PORTS.index(0x70), 0x0A, 0, 0, 0, 0x80, PORTS.index(0x71)])
    kbd = bytes([0x00, PORTS.index(0x64), 0xFE, 0, 0, 0])
    return [out_byte * 8, probe_key + probe_data * 3, rtc * 4, kbd, out_byte + rtc + probe_key + kbd]


TARGET = Target("port_io", one_input, _seeds, max_len=4096,
                description="PC legacy devices and the probe device under hostile port I/O")

if __name__ == "__main__":
    atheris_main(TARGET)
