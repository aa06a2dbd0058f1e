"""A machine's virtio devices: where they sit, how the guest finds them, how they are wired.

:class:`VirtioDevices` places each device in the 32-bit MMIO hole (:data:`MMIO_BASE` up,
one page apart) with its own interrupt line from :data:`IRQS`, gives the kernel command
line parameters that announce them (``virtio_mmio.device=<size>@<base>:<irq>``,
``CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES``), attaches the transports to the MMIO bus, and, once
the VM exists, wires the notifications:

- ``ioeventfd``: each queue's eventfd is a KVM ioeventfd on ``QueueNotify`` (matched on
  the queue index), each device's interrupt an irqfd, and the acknowledgement of a
  used-buffer interrupt an ioeventfd on ``InterruptAck``: the vCPU never leaves KVM for a
  notification or an ordinary acknowledgement, and the I/O thread does the work;
- ``exits``: the fallback where KVM lacks KVM_CAP_IOEVENTFD or KVM_CAP_IRQFD: the
  ``QueueNotify`` write exits to the vCPU thread, which signals the same eventfd, and
  interrupts are pulses on the line (KVM_IRQ_LINE).

It depends on the VM only through the small :class:`NotificationHost` protocol.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from vmboot.devices.bus import MmioBus
from vmboot.devices.virtio import spec
from vmboot.devices.virtio.device import VirtioDevice
from vmboot.devices.virtio.io_thread import IoThread, QueueServe, drain_eventfd, new_eventfd
from vmboot.devices.virtio.mmio import MmioTransport
from vmboot.devices.virtio.queue import GuestRam
from vmboot.errors import BootConfigError

if TYPE_CHECKING:
    from vmboot.devices.virtio.fs import FsDevice

log = logging.getLogger("vmboot.devices.virtio")

MMIO_BASE = 0xD0000000
"""Guest-physical address of the first virtio-mmio device (in the 3-4 GiB hole)."""
MMIO_STRIDE = 0x1000
"""Address step between devices (a page each)."""
IRQS = (5, 6, 7, 9, 10, 11, 14, 15)
"""Interrupt lines for virtio devices: ISA lines the PC platform leaves free (COM1 4,
COM2 3, RTC 8 and the i8042 1 and 12 are taken)."""
MAX_DEVICES = len(IRQS)


class NotificationPath(enum.Enum):
    IOEVENTFD = "ioeventfd/irqfd"
    EXITS = "exits"


NotificationChoice = Literal["auto", "ioeventfd", "exits"]
NOTIFICATION_CHOICES: tuple[str, ...] = ("auto", "ioeventfd", "exits")


class NotificationHost(Protocol):
    """What wiring needs from a VM (``vmboot.hv.kvm.KvmVM`` has it)."""

    memory: Any

    def notification_fds_supported(self) -> bool: ...

    def register_ioeventfd(self, address: int, length: int, fd: int,
                           datamatch: int | None = None) -> None: ...

    def register_irqfd(self, fd: int, gsi: int) -> None: ...

    def irq_line(self, irq: int, level: bool | int) -> None: ...


def _pulse(irq_line: Callable[[int, bool], object], irq: int) -> Callable[[], None]:
    def pulse() -> None:
        irq_line(irq, True)
        irq_line(irq, False)
    return pulse


class VirtioDevices:
    """The virtio devices of one machine, in order (``vda`` is the first block device)."""

    def __init__(self, devices: Sequence[VirtioDevice],
                 notifications: NotificationChoice = "auto") -> None:
        if len(devices) > MAX_DEVICES:
            raise BootConfigError(f"virtio devices: {len(devices)} requested; at most "
                                  f"{MAX_DEVICES} (one interrupt line each: {IRQS})")
        if notifications not in NOTIFICATION_CHOICES:
            raise BootConfigError(f"virtio notifications: {notifications!r} is not one of "
                                  f"{', '.join(NOTIFICATION_CHOICES)}")
        self.devices = list(devices)
        self.choice = notifications
        self.path: NotificationPath | None = None
        self.transports: list[MmioTransport] = []
        self.io_thread: IoThread | None = None
        self._irqfds: list[int] = []
        self._backend_fds: list[int] = []
        self.console_port: Any = None
        """The host end of the virtio console (port 0) when the console is on hvc0."""
        counts: dict[str, int] = {}
        self.names: list[str] = []
        for d in self.devices:
            n = counts.get(d.name, 0)
            counts[d.name] = n + 1
            self.names.append(f"virtio-{d.name}{n}")

    def __bool__(self) -> bool:
        return bool(self.devices)

    @property
    def needs_shared_memory(self) -> bool:
        """A device's queues are served by another process, which maps guest RAM."""
        return any(getattr(d, "served_externally", False) for d in self.devices)

    def placement(self) -> list[tuple[int, int]]:
        """(base, irq) of each device."""
        return [(MMIO_BASE + i * MMIO_STRIDE, IRQS[i]) for i in range(len(self.devices))]

    def cmdline_parameters(self) -> str:
        return " ".join(f"virtio_mmio.device={spec.MMIO_SIZE:#x}@{base:#x}:{irq}"
                        for base, irq in self.placement())

    def extend_cmdline(self, cmdline: str) -> str:
        """``cmdline`` with the devices' parameters, before any ``--`` (what follows it
        is init's arguments, which the kernel does not parse)."""
        params = self.cmdline_parameters()
        if not params:
            return cmdline
        words = cmdline.split(" ")
        if "--" in words:
            at = words.index("--")
            return " ".join([*words[:at], params, *words[at:]]).strip()
        return f"{cmdline} {params}".strip()

    def attach(self, mmio_bus: MmioBus, memory: GuestRam | None = None) -> None:
        """Make the transports and put them on ``mmio_bus`` (guest RAM may come later)."""
        for device, name, (base, irq) in zip(self.devices, self.names, self.placement(),
                                             strict=True):
            t = MmioTransport(device, memory, base, irq, name)
            mmio_bus.attach_device(base, spec.MMIO_SIZE, t, name)
            self.transports.append(t)

    def connect(self, vm: NotificationHost) -> NotificationPath | None:
        """Give the transports guest RAM, wire notifications, start the I/O thread
        (nothing at all, and None, for a machine without virtio devices)."""
        if not self.transports:
            return None
        supported = vm.notification_fds_supported()
        if self.choice == "ioeventfd" and not supported:
            raise BootConfigError("virtio notifications 'ioeventfd': this KVM lacks "
                                  "KVM_CAP_IOEVENTFD or KVM_CAP_IRQFD; use 'auto' or 'exits'")
        use_fds = supported and self.choice != "exits"
        io = IoThread()
        self.io_thread = io
        for t in self.transports:
            t.memory = vm.memory
            t.device.attach_io_thread(io, _queue_serve(t))
            external = getattr(t.device, "served_externally", False)
            for i, fd in enumerate(t.queue_fds):
                if use_fds:
                    vm.register_ioeventfd(t.base + spec.MmioReg.QUEUE_NOTIFY, 4, fd, datamatch=i)
                if not external:
                    io.add(fd, _queue_callback(t, i))
            if external:
                self._serve_externally(io, t)
            if use_fds:
                irqfd = new_eventfd()
                self._irqfds.append(irqfd)
                vm.register_irqfd(irqfd, t.irq)
                t.interrupt = _irqfd_writer(irqfd)
                t.ioeventfd = True
                vm.register_ioeventfd(t.base + spec.MmioReg.INTERRUPT_ACK, 4, t.ack_fd,
                                      datamatch=spec.INTERRUPT_USED_BUFFER)
                t.acks_in_kernel = True
            else:
                t.interrupt = _pulse(vm.irq_line, t.irq)
        self.path = NotificationPath.IOEVENTFD if use_fds else NotificationPath.EXITS
        io.start()
        log.info("virtio: %d devices, notifications through %s", len(self.transports),
                 self.path.value)
        return self.path

    def _serve_externally(self, io: IoThread, t: MmioTransport) -> None:
        """A back end process reads the queue eventfds; the I/O thread watches its call
        eventfds (to set InterruptStatus, then interrupt) and its death."""
        device = cast("FsDevice", t.device)
        calls = [new_eventfd() for _ in t.queue_fds]
        self._backend_fds += calls
        device.bind_notifications(t.queue_fds, calls)
        for fd in calls:
            io.add(fd, _backend_call(t, fd))
        death = device.death_fd()
        self._backend_fds.append(death)

        def died() -> None:
            io.remove(death)
            with t.lock:
                log.error("%s", device.backend_died())
            for i, fd in enumerate(t.queue_fds):
                io.add(fd, _queue_callback(t, i))
                t.kick(i)
        io.add(death, died)

    def quiesce(self) -> None:
        """Serve, on this thread, what the driver made available but the I/O thread has not
        taken yet (e.g. the console's last output when a run ends)."""
        for t in self.transports:
            if t.live:
                for i, q in enumerate(t.device.queues):
                    if q.ready:
                        t.process(i)

    def close(self) -> None:
        """Stop the I/O thread, close the fds and the devices' files (idempotent)."""
        if self.io_thread is not None:
            self.io_thread.stop()
            self.io_thread = None
        for t in self.transports:
            t.close()
        for d in self.devices:
            close = getattr(d, "close", None)
            if close is not None:
                close()
        for fd in self._irqfds + self._backend_fds:
            os.close(fd)
        self._irqfds = []
        self._backend_fds = []

    def report(self) -> dict[str, Any]:
        """For ``--json`` and ``-v``: the devices, where they are, and what they did."""
        return {
            "notification_path": None if self.path is None else self.path.value,
            "devices": [
                {"name": t.name, "type": t.device.name, "device_id": int(t.device.device_id),
                 "base": f"{t.base:#x}", "size": spec.MMIO_SIZE, "irq": t.irq,
                 "requests": t.device.requests, "notifications": t.notifications,
                 "notify_exits": t.notify_exits,
                 "interrupts": t.interrupts, "status": t.status, "error": t.error,
                 **_describe(t.device)}
                for t in self.transports
            ],
        }


def _describe(device: VirtioDevice) -> dict[str, Any]:
    describe = getattr(device, "describe", None)
    return dict(describe()) if describe is not None else {}


def _queue_callback(t: MmioTransport, index: int) -> Callable[[], None]:
    return lambda: t.on_queue_event(index)


def _backend_call(t: MmioTransport, fd: int) -> Callable[[], None]:
    def call() -> None:
        if drain_eventfd(fd):
            t.backend_used()
    return call


def _queue_serve(t: MmioTransport) -> QueueServe:
    def serve(index: int) -> bool:
        if not t.live:  # reset or broken: nothing until the next activation
            return False
        t.process(index)
        return True
    return serve


def _irqfd_writer(fd: int) -> Callable[[], None]:
    return lambda: os.eventfd_write(fd, 1)
