"""The virtio devices a :class:`~vmboot.vmm.machine.Machine` is asked for, built in order:
disks first (``vda``, ``vdb``... in the order given), then the console, the RNG, and any
other devices the caller made."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from vmboot.errors import BootConfigError

if TYPE_CHECKING:
    from vmboot.devices.console import ConsoleOutput
    from vmboot.devices.virtio.block import Disk
    from vmboot.devices.virtio.console import ConsolePort
    from vmboot.devices.virtio.device import VirtioDevice
    from vmboot.devices.virtio.setup import NotificationChoice, VirtioDevices
    from vmboot.devices.virtio.share import Share

ConsoleChoice = Literal["serial", "virtio"]
CONSOLE_CHOICES: tuple[str, ...] = ("serial", "virtio")


@dataclass(frozen=True)
class VirtioChoices:
    disks: Sequence[Disk] = ()
    console_device: ConsoleChoice = "serial"
    console_ports: Sequence[ConsolePort] = ()
    rng: bool = False
    devices: Sequence[VirtioDevice] = ()
    notifications: NotificationChoice = "auto"
    shares: Sequence[Share] = ()


def console_sink(console: ConsoleOutput) -> ConsolePort:
    """Port 0 of a virtio console, writing into the machine's console output."""
    from vmboot.devices.virtio.console import ConsolePort

    def write(data: bytes) -> None:
        for byte in data:
            console.put(byte)
        console.flush()

    return ConsolePort("", write)


def build_virtio(choices: VirtioChoices, console: ConsoleOutput) -> VirtioDevices:
    """Open the disks and make the devices (every file is opened before anything runs)."""
    from vmboot.devices.virtio.setup import VirtioDevices

    if choices.console_device not in CONSOLE_CHOICES:
        raise BootConfigError(f"console_device: {choices.console_device!r} is not one of "
                              f"{', '.join(CONSOLE_CHOICES)}")
    if choices.shares:
        from vmboot.devices.virtio.share import check_shares

        check_shares(choices.shares)  # before any file is opened or virtiofsd started
    devices: list[VirtioDevice] = []
    console_port = None
    try:
        if choices.disks:
            from vmboot.devices.virtio.block import BlockDevice

            devices += [BlockDevice(d) for d in choices.disks]
        if choices.console_device == "virtio" or choices.console_ports:
            from vmboot.devices.virtio.console import ConsoleDevice

            console_port = console_sink(console)
            devices.append(ConsoleDevice([console_port, *choices.console_ports]))
        if choices.rng:
            from vmboot.devices.virtio.rng import RngDevice

            devices.append(RngDevice())
        if choices.shares:
            from vmboot.devices.virtio.fs import FsDevice

            for share in choices.shares:
                devices.append(FsDevice(share))
        devices += list(choices.devices)
        result = VirtioDevices(devices, choices.notifications)
    except BaseException:
        for d in devices:
            close = getattr(d, "close", None)
            if close is not None:
                close()
        raise
    if choices.console_device == "virtio":
        result.console_port = console_port
    return result
