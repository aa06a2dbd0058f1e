"""The legacy PC platform vmboot gives a Linux guest, and how extra devices are attached.

Port map (the interrupt controllers and the PIT are KVM's in-kernel ones, not here)::

    0x060        i8042 data
    0x061        system control port B (KVM serves it itself when the in-kernel PIT is on)
    0x064        i8042 status / command  (0xFE: pulses the reset line)
    0x070-0x071  CMOS RTC
    0x080        POST code
    0x3F8-0x3FF  COM1, 16550A, IRQ 4  (the console; more ports via ``serial_ports``)
    0xCF8-0xCFF  PCI configuration: no host bridge (all-ones)

Everything else is answered by the bus: all-ones, logged once per address.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from vmboot.devices import i8042, misc, rtc
from vmboot.devices.bus import MmioBus, MmioDevice, PortBus, PortDevice
from vmboot.devices.console import ConsoleOutput
from vmboot.devices.i8042 import I8042
from vmboot.devices.misc import PciConfigAbsent, PostCode, SystemControlB
from vmboot.devices.rtc import Clock, CmosRtc
from vmboot.devices.serial import COM1, Serial16550A, SerialPort
from vmboot.errors import BootConfigError


class BusKind(enum.Enum):
    PORT = "port"
    MMIO = "mmio"


@dataclass(frozen=True)
class ExtraDevice:
    """A device to add to a machine: ``length`` addresses from ``start`` on ``bus``.

    The VMM wires it as the platform's own devices
    (:func:`vmboot.vmm.wiring.connect_devices`): ``connect_irq``, ``connect_reset`` and
    ``connect_stop``, whichever it has.
    """

    name: str
    start: int
    length: int
    device: PortDevice | MmioDevice
    bus: BusKind = BusKind.PORT

    def attach(self, port_bus: PortBus, mmio_bus: MmioBus) -> None:
        if self.bus is BusKind.PORT:
            if not (hasattr(self.device, "port_read") and hasattr(self.device, "port_write")):
                raise BootConfigError(
                    f"extra device {self.name!r}: {type(self.device).__name__} has no "
                    f"port_read/port_write, so it cannot go on the port bus"
                )
            port_bus.attach(self.start, self.length, self.device, self.name)
        else:
            if not (hasattr(self.device, "mmio_read") and hasattr(self.device, "mmio_write")):
                raise BootConfigError(
                    f"extra device {self.name!r}: {type(self.device).__name__} has no "
                    f"mmio_read/mmio_write, so it cannot go on the MMIO bus"
                )
            mmio_bus.attach(self.start, self.length, self.device, self.name)


class PcPlatform:
    """The legacy devices of a PC that Linux needs, attached to a port bus."""

    def __init__(
        self,
        console: ConsoleOutput | None = None,
        serial_ports: Sequence[SerialPort] = (COM1,),
        clock: Clock = time.time,
        serial_outputs: Mapping[str, ConsoleOutput] | None = None,
    ) -> None:
        """``serial_outputs``: where the UARTs after the first send their bytes, by port name
        (e.g. ``{"COM2": ConsoleOutput(sink)}``); a port not named gets a capture-only output."""
        if not serial_ports:
            raise BootConfigError("serial_ports: empty; the first port carries the console")
        self.console = console if console is not None else ConsoleOutput()
        self.serial_ports = tuple(serial_ports)
        self.serials: dict[str, Serial16550A] = {}
        outputs = dict(serial_outputs or {})
        unknown = sorted(set(outputs) - {p.name for p in self.serial_ports[1:]})
        if unknown:
            raise BootConfigError(
                f"serial_outputs: {', '.join(unknown)} not among the non-console serial ports "
                f"({', '.join(p.name for p in self.serial_ports[1:]) or 'none'})"
            )
        for i, port in enumerate(self.serial_ports):
            if i == 0:
                output = self.console
            else:
                output = outputs[port.name] if port.name in outputs else ConsoleOutput()
            self.serials[port.name] = Serial16550A(output=output, irq=port.irq)
        self.i8042 = I8042()
        self.rtc = CmosRtc(clock)
        self.post = PostCode()
        self.pci = PciConfigAbsent()
        self.port_b = SystemControlB()

    @property
    def console_serial(self) -> Serial16550A:
        """The UART whose output is the console (the first of ``serial_ports``)."""
        return self.serials[self.serial_ports[0].name]

    def attach(self, port_bus: PortBus) -> None:
        port_bus.attach(i8042.DATA_PORT, 1, self.i8042.data, "i8042 data")
        port_bus.attach(misc.SYSTEM_CONTROL_B_PORT, 1, self.port_b, "system control B")
        port_bus.attach(i8042.COMMAND_PORT, 1, self.i8042.command, "i8042 command")
        port_bus.attach(rtc.INDEX_PORT, rtc.PORT_COUNT, self.rtc, "CMOS RTC")
        port_bus.attach(misc.POST_CODE_PORT, 1, self.post, "POST code")
        for port in self.serial_ports:
            dev = self.serials[port.name]
            port_bus.attach(port.base, dev.length, dev, f"{port.name} (16550A)")
        port_bus.attach(misc.PCI_CONFIG_ADDRESS_PORT, misc.PCI_CONFIG_PORT_COUNT, self.pci,
                        "PCI config (absent)")

    def devices(self) -> Iterable[object]:
        yield from self.serials.values()
        yield from (self.i8042, self.rtc, self.post, self.pci, self.port_b)
