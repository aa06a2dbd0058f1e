"""virtio-console (virtio 1.2 section 5.3) with ``VIRTIO_CONSOLE_F_MULTIPORT``.

Port 0 is the console (``hvc0``: ``console=hvc0`` on the kernel command line); ports 1
and up are named ports for programs (``/dev/vportNpM``, ``/sys/class/virtio-ports/*/name``).
A :class:`ConsolePort` is a name, a host-side byte sink (what the guest writes) and a
source (:meth:`ConsolePort.push` queues bytes for the guest to read).

Queues (5.3.2): 0/1 receive/transmit of port 0, 2/3 the control receive/transmit queues,
then 4/5 for port 1, 6/7 for port 2, and so on. The control protocol (5.3.6.2): the
driver sends DEVICE_READY; the device announces each port (DEVICE_ADD); the driver answers
PORT_READY; the device then names the port (PORT_NAME), marks port 0 as the console
(CONSOLE_PORT) and opens the host end (PORT_OPEN).

Interrupts for output (named ports only, once the I/O thread serves the device's timers:
:meth:`ConsoleDevice.host_fds`): Linux's driver frees used output buffers itself before
each write and waits for the interrupt only when all of a queue's buffers are in flight,
so the interrupt for a used buffer is held back (:mod:`.signal_delay`) until a quarter of
the queue's buffers (:data:`TX_SIGNAL_QUEUE_SHARE`) are used or :data:`TX_SIGNAL_DELAY`
passes. A writer streaming output then costs one interrupt (and its InterruptStatus read
and InterruptACK write, two exits) per 16 buffers of a 64-buffer queue instead of one
each; the bytes reach the port's sink at once either way, and output a message of
another port drains first (below) is signalled at once.

Order across ports: a port can name others whose output must reach their sinks first
(:attr:`ConsolePort.drain_first`). Before each buffer of that port goes to its sink, the
device takes every buffer already available on the others' transmit queues: a program
that queues output on one port and then a message on another ("the command exited")
is heard in that order, although each queue has its own notification.
"""

from __future__ import annotations

import collections
import logging
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vmboot.devices.virtio import spec
from vmboot.devices.virtio.device import QueueNotify, VirtioDevice
from vmboot.devices.virtio.queue import DescriptorChain, GuestRam, gather, scatter
from vmboot.devices.virtio.signal_delay import SignalDelay
from vmboot.errors import BootConfigError, DeviceStateError

log = logging.getLogger("vmboot.devices.virtio")

QUEUE_SIZE = 64
MAX_PORTS = 16
TX_SIGNAL_DELAY = 10e-3
"""Seconds the interrupt for a named port's used output may wait for company: how long a
writer that found every buffer in flight may wait beyond the host's taking them."""
TX_SIGNAL_QUEUE_SHARE = 4
"""The interrupt for a named port's used output waits for at most 1/4 of the queue's
buffers (the size the driver chose): the driver never runs short of room for long."""
MAX_PENDING_INPUT = 1 << 20
"""Bytes of host input kept for a port the guest is not reading (more are dropped, counted)."""
_CONTROL = struct.Struct("<IHH")
RX, TX, CONTROL_RX, CONTROL_TX = 0, 1, 2, 3

ByteSink = Callable[[bytes], object]


@dataclass
class ConsolePort:
    """A port: ``name`` (empty for the console, port 0), where the guest's output goes
    (``sink``), and input waiting for the guest."""

    name: str
    sink: ByteSink | None = None
    pending: collections.deque[bytes] = field(default_factory=collections.deque)
    pending_bytes: int = 0
    dropped: int = 0
    guest_open: bool = False
    kick: Callable[[], None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    drain_first: tuple[ConsolePort, ...] = field(default=(), repr=False, compare=False)
    """Ports of the same device whose available output is taken before each buffer of
    this one is handed to :attr:`sink` (see the module's note on order)."""

    def push(self, data: bytes) -> int:
        """Queue ``data`` for the guest to read (any thread); the bytes accepted."""
        with self.lock:
            room = MAX_PENDING_INPUT - self.pending_bytes
            taken = data[:max(room, 0)]
            self.dropped += len(data) - len(taken)
            if taken:
                self.pending.append(bytes(taken))
                self.pending_bytes += len(taken)
        if taken and self.kick is not None:
            self.kick()
        return len(taken)

    def take(self, limit: int) -> bytes:
        with self.lock:
            out = bytearray()
            while self.pending and len(out) < limit:
                chunk = self.pending.popleft()
                n = limit - len(out)
                out += chunk[:n]
                if len(chunk) > n:
                    self.pending.appendleft(chunk[n:])
            self.pending_bytes -= len(out)
            return bytes(out)


def rx_queue(port: int) -> int:
    return RX if port == 0 else 2 * port + 2


def tx_queue(port: int) -> int:
    """The transmit queue (guest to host) of ``port``."""
    return TX if port == 0 else 2 * port + 3


def port_of_queue(index: int) -> tuple[int, bool]:
    """(port, is_transmit) of a data queue index (not the control queues 2 and 3)."""
    if index < 2:
        return 0, index == TX
    return index // 2 - 1, index % 2 == 1


class ConsoleDevice(VirtioDevice):
    device_id: ClassVar[spec.DeviceId] = spec.DeviceId.CONSOLE
    name: ClassVar[str] = "console"

    def __init__(self, ports: Sequence[ConsolePort]) -> None:
        if not ports:
            raise BootConfigError("virtio-console: no ports; port 0 (the console) is needed")
        if len(ports) > MAX_PORTS:
            raise BootConfigError(f"virtio-console: {len(ports)} ports; at most {MAX_PORTS}")
        names = [p.name for p in ports[1:]]
        if len(set(names)) != len(names) or not all(names):
            raise BootConfigError(f"virtio-console: port names {names} must be non-empty and "
                                  "different from each other")
        self.ports = list(ports)
        self._drain_first: dict[int, tuple[int, ...]] = {}
        for i, port in enumerate(self.ports):
            first = [j for other in port.drain_first
                     for j, p in enumerate(self.ports) if p is other]
            if len(first) != len(port.drain_first) or i in first:
                raise BootConfigError(
                    f"virtio-console: port {port.name!r} drains ports "
                    f"{[p.name for p in port.drain_first]} first; each must be another port "
                    f"of this device ({names})")
            if first:
                self._drain_first[i] = tuple(first)
        super().__init__((QUEUE_SIZE,) * (2 * len(ports) + 2), 1 << spec.CONSOLE_F_MULTIPORT)
        self._control_out: collections.deque[bytes] = collections.deque()
        self._owed: set[int] = set()
        """Transmit queues drained out of turn whose used buffers the driver has not been
        interrupted for yet (their next processing reports them)."""
        self._tx_signals: dict[int, SignalDelay] = {}
        """Held-back interrupts of the named ports' transmit queues, by queue index (made
        by :meth:`host_fds`: without an I/O thread serving their timers, none is held)."""
        for i, port in enumerate(self.ports):
            port.kick = self._kicker(rx_queue(i))

    def _kicker(self, queue: int) -> Callable[[], None]:
        def kick() -> None:
            notify = self._notify
            if notify is not None:
                notify(queue)
        return kick

    def describe(self) -> dict[str, Any]:
        return {"ports": [p.name or "console" for p in self.ports]}

    def host_fds(self) -> dict[int, int]:
        """The timers of the held-back output interrupts: timer fd -> its transmit queue."""
        if not self._tx_signals:
            at_once = QUEUE_SIZE // TX_SIGNAL_QUEUE_SHARE
            self._tx_signals = {tx_queue(i): SignalDelay(TX_SIGNAL_DELAY, at_once)
                                for i in range(1, len(self.ports))}
        return {signal.fd: index for index, signal in self._tx_signals.items()}

    def activate(self, memory: GuestRam, notify: QueueNotify) -> None:
        super().activate(memory, notify)
        for index, signal in self._tx_signals.items():
            signal.at_once = max(1, self.queues[index].size // TX_SIGNAL_QUEUE_SHARE)
            self.watch_host_fd(signal.fd, True)

    def close(self) -> None:
        for signal in self._tx_signals.values():
            signal.close()

    def config_bytes(self) -> bytes:
        return struct.pack("<HHII", 0, 0, len(self.ports), 0)

    def reset(self) -> None:
        for signal in self._tx_signals.values():
            self.watch_host_fd(signal.fd, False)
            signal.reset()
        super().reset()
        self._control_out.clear()
        self._owed.clear()
        for p in self.ports:
            p.guest_open = False

    def _control(self, port: int, event: int, value: int, extra: bytes = b"") -> None:
        self._control_out.append(_CONTROL.pack(port, event, value) + extra)

    # -- queues -----------------------------------------------------------------------------
    def process_queue(self, index: int) -> bool:
        memory = self.memory
        if memory is None:
            return False
        if index == CONTROL_TX:
            used = self._drain(index, self._on_control)
            return self._flush_control() or used
        if index == CONTROL_RX:
            return self._flush_control()
        port, transmit = port_of_queue(index)
        if transmit:
            sink = self.ports[port].sink
            first = self._drain_first.get(port, ())

            def deliver(data: bytes) -> None:
                for other in first:
                    self._drain_out_of_turn(other)
                if sink is not None:
                    sink(data)

            q = self.queues[index]
            before = q.next_used
            used = self._drain(index, deliver)
            signal = self._tx_signals.get(index)
            if index in self._owed:  # output before a message of another port: signal now
                self._owed.discard(index)
                if signal is not None:
                    signal.reset()
                return True
            if signal is None:
                return used
            return signal.completed((q.next_used - before) & 0xFFFF)
        return self._fill_rx(index, self.ports[port])

    def _drain_out_of_turn(self, port: int) -> None:
        """Hand ``port``'s available output to its sink now; its queue's own notification
        later finds it empty and interrupts the driver for what was used here."""
        index = tx_queue(port)
        if not self.queues[index].ready:
            return
        sink = self.ports[port].sink
        if self._drain(index, lambda data: sink(data) if sink is not None else None):
            self._owed.add(index)
            if self._notify is not None:
                self._notify(index)

    def _drain(self, index: int, handle: Callable[[bytes], object]) -> bool:
        memory = self.memory
        assert memory is not None

        def take(chain: DescriptorChain) -> int:
            handle(gather(memory, chain.readable))
            return 0

        return self.serve_each(index, take)

    def _fill_rx(self, index: int, port: ConsolePort) -> bool:
        memory = self.memory
        assert memory is not None

        def give(chain: DescriptorChain) -> int:
            return scatter(memory, chain.writable, port.take(chain.writable_bytes))

        return self.serve_each(index, give, more=lambda: port.pending_bytes > 0)

    def _flush_control(self) -> bool:
        memory = self.memory
        assert memory is not None
        q = self.queues[CONTROL_RX]
        used = False
        while self._control_out:
            chain = q.pop(memory)
            if chain is None:
                if q.drained(memory):
                    break
                continue
            message = self._control_out.popleft()
            q.add_used(memory, chain.head, scatter(memory, chain.writable, message))
            used = True
        return used

    def _on_control(self, message: bytes) -> None:
        if len(message) < _CONTROL.size:
            log.warning("virtio-console: a %d-byte control message ignored", len(message))
            return
        port, event, value = _CONTROL.unpack_from(message)
        if event == spec.CONSOLE_DEVICE_READY:
            if value == 1:
                for i in range(len(self.ports)):
                    self._control(i, spec.CONSOLE_DEVICE_ADD, 1)
            return
        if port >= len(self.ports):
            log.warning("virtio-console: control event %d for port %d, which does not exist",
                        event, port)
            return
        if event == spec.CONSOLE_PORT_READY and value == 1:
            if port == 0:
                self._control(0, spec.CONSOLE_CONSOLE_PORT, 1)
            else:
                self._control(port, spec.CONSOLE_PORT_NAME, 1, self.ports[port].name.encode())
            self._control(port, spec.CONSOLE_PORT_OPEN, 1)
        elif event == spec.CONSOLE_PORT_OPEN:
            self.ports[port].guest_open = bool(value)

    def state(self) -> dict[str, Any]:
        """Counters, control messages not yet delivered, and for each port whether the
        guest has it open and the host input it has not read yet."""
        pending = []
        for p in self.ports:
            with p.lock:
                pending.append(b"".join(p.pending).hex())
        return {**super().state(), "control_out": [m.hex() for m in self._control_out],
                "guest_open": [p.guest_open for p in self.ports], "pending": pending,
                "owed": sorted(self._owed | {i for i, s in self._tx_signals.items()
                                             if s.waiting})}

    def check_state(self, state: dict[str, Any]) -> None:
        n = len(self.ports)
        for key, kind in (("guest_open", bool), ("pending", str)):
            value = state.get(key)
            if (not isinstance(value, list) or len(value) != n
                    or not all(isinstance(v, kind) for v in value)):
                raise DeviceStateError(f"virtio-console state: {key} is not a list of {n} "
                                       f"{kind.__name__} values (one a port); the machine has "
                                       f"ports {[p.name or 'console' for p in self.ports]}")
        for text in (*state["pending"], *state.get("control_out", [])):
            try:
                bytes.fromhex(text)
            except (TypeError, ValueError):
                raise DeviceStateError("virtio-console state: pending input or a control "
                                       "message is not hex") from None
        owed = state.get("owed", [])
        queues = len(self.queues)
        if not isinstance(owed, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < queues for i in owed):
            raise DeviceStateError(f"virtio-console state: owed is {owed!r}, not a list of queue "
                                   f"indexes 0..{queues - 1} (the device has {queues} queues)")

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self._owed = set(state.get("owed", []))
        self._control_out = collections.deque(bytes.fromhex(m) for m in state.get("control_out", []))
        for p, is_open, pending in zip(self.ports, state["guest_open"], state["pending"],
                                       strict=True):
            p.guest_open = bool(is_open)
            data = bytes.fromhex(pending)
            with p.lock:
                p.pending.clear()
                p.pending_bytes = 0
                if data:
                    p.pending.append(data)
                    p.pending_bytes = len(data)
