"""The virtio-mmio transport, register layout version 2 (virtio 1.2 section 4.2).

:class:`MmioTransport` is an MMIO bus device: the driver's register reads and writes arrive
from the vCPU thread (:meth:`mmio_read`/:meth:`mmio_write`). Queue notifications are
eventfds, one a queue (:attr:`queue_fds`): KVM signals them itself when they are
registered as ioeventfds, or the transport signals them on a ``QueueNotify`` exit; either
way the device's work runs on the I/O thread (:meth:`on_queue_event`). Interrupts go out
through :attr:`interrupt` (an irqfd write, or a pulse on the interrupt line).

The driver acknowledges each interrupt (Linux reads ``InterruptStatus`` and writes the
value back to ``InterruptAck``). The usual value, used buffers only, can be taken by KVM
too (:attr:`ack_fd`, an ioeventfd matched on that value): the vCPU then leaves KVM once an
interrupt instead of twice. Such an acknowledgement is applied before anything reads or
sets ``InterruptStatus`` (:meth:`_take_acks`), so the driver never sees a bit it cleared.
``InterruptStatus`` has a lock of its own (:attr:`MmioTransport.status_lock`): the driver's
read of it, the one exit to vmboot of each interrupt, never waits for a queue being served
(the I/O thread holds :attr:`MmioTransport.lock` while a frame goes to its backend).

Status handling follows 2.1 and 3.1: writing 0 resets the device; the driver may only add
status bits; ``FEATURES_OK`` is refused (stays clear) when the driver accepted features the
device did not offer or did not accept ``VIRTIO_F_VERSION_1``; at ``DRIVER_OK`` each ready
queue is checked against guest RAM. A broken driver (a bad queue, a malformed chain) sets
``DEVICE_NEEDS_RESET`` with a configuration-change interrupt, is logged once, and the
device does nothing more until it is reset.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from vmboot.devices.state import field_bool, field_int, field_optional_int
from vmboot.devices.virtio import spec
from vmboot.devices.virtio.device import VirtioDevice
from vmboot.devices.virtio.io_thread import drain_eventfd, new_eventfd
from vmboot.devices.virtio.queue import GuestRam, QueueError, QueueState
from vmboot.errors import DeviceStateError, GuestMemoryError

log = logging.getLogger("vmboot.devices.virtio")

_U32 = 0xFFFFFFFF
_REGISTER_SIZE = 4
Interrupt = Callable[[], None]
"""Deliver one interrupt edge to the guest."""


class MmioTransport:
    """One virtio device behind virtio-mmio registers at ``base`` with interrupt ``irq``."""

    def __init__(self, device: VirtioDevice, memory: GuestRam | None, base: int, irq: int,
                 name: str) -> None:
        self.device = device
        self.memory = memory
        self.base = base
        self.irq = irq
        self.name = name
        self.lock = threading.RLock()
        self.status_lock = threading.Lock()
        """Guards :attr:`interrupt_status` alone; taken after :attr:`lock` when both are."""
        self.queue_fds = [new_eventfd() for _ in device.queues]
        self.interrupt: Interrupt = lambda: None
        self.ioeventfd = False
        """KVM signals :attr:`queue_fds` itself (QueueNotify writes never reach :meth:`mmio_write`)."""
        self.ack_fd = new_eventfd()
        """Signalled by KVM for an ``InterruptAck`` write of :data:`spec.INTERRUPT_USED_BUFFER`
        once the wiring registered it as an ioeventfd (:attr:`acks_in_kernel`)."""
        self.acks_in_kernel = False
        self.notifications = 0
        """Queue notifications handled."""
        self.notify_exits = 0
        """QueueNotify writes that reached vmboot as MMIO exits (0 when KVM's ioeventfds take them)."""
        self.interrupts = 0
        """Interrupts sent."""
        self.error: str | None = None
        """Why the device needs a reset (None while it is healthy)."""
        self._logged: set[str] = set()
        self._reset_registers()
        device.on_config_change = self.config_changed

    def _reset_registers(self) -> None:
        self.status = 0
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.driver_features = 0
        self.queue_sel = 0
        with self.status_lock:
            self.interrupt_status = 0
        self.config_generation = 0

    def close(self) -> None:
        for fd in self.queue_fds:
            os.close(fd)
        self.queue_fds = []
        if self.ack_fd >= 0:
            os.close(self.ack_fd)
            self.ack_fd = -1

    # -- helpers ----------------------------------------------------------------------------
    def _log_once(self, key: str, message: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning("%s: %s (logged once)", self.name, message)

    def _queue(self) -> Any:
        if 0 <= self.queue_sel < len(self.device.queues):
            return self.device.queues[self.queue_sel]
        return None

    @property
    def live(self) -> bool:
        return bool(self.status & spec.STATUS_DRIVER_OK) and not (
            self.status & spec.STATUS_DEVICE_NEEDS_RESET)

    def _take_acks(self) -> None:
        """Apply the ``InterruptAck`` writes KVM took (:attr:`ack_fd`) since the last look.
        Called with :attr:`status_lock` held before ``InterruptStatus`` is read or set: an
        ack the driver wrote before now clears the bit; a bit set after it stays."""
        if self.acks_in_kernel and drain_eventfd(self.ack_fd):
            self.interrupt_status &= ~spec.INTERRUPT_USED_BUFFER

    def read_interrupt_status(self) -> int:
        with self.status_lock:
            self._take_acks()
            return self.interrupt_status

    def _raise_interrupt(self, bit: int) -> None:
        with self.status_lock:
            self._take_acks()
            self.interrupt_status |= bit
        self.interrupts += 1
        self.interrupt()
        if bit & spec.INTERRUPT_USED_BUFFER:
            self.device.used_buffers_signalled()

    def needs_reset(self, why: str) -> None:
        """The driver broke the contract: set DEVICE_NEEDS_RESET and tell it (4.2.3.4)."""
        with self.lock:
            self.error = why
            self._log_once("needs-reset", f"device needs reset: {why}")
            if self.status & spec.STATUS_DRIVER_OK:
                self.status |= spec.STATUS_DEVICE_NEEDS_RESET
                self._raise_interrupt(spec.INTERRUPT_CONFIG_CHANGE)
            else:
                self.status |= spec.STATUS_DEVICE_NEEDS_RESET

    def config_changed(self) -> None:
        """The device changed its configuration space: a new generation and, while the
        driver runs the device, a configuration-change interrupt (4.2.3.3)."""
        with self.lock:
            self.config_generation = (self.config_generation + 1) & _U32
            if self.live:
                self._raise_interrupt(spec.INTERRUPT_CONFIG_CHANGE)

    # -- registers --------------------------------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        if offset == spec.MmioReg.INTERRUPT_STATUS and size == _REGISTER_SIZE:
            return self.read_interrupt_status()  # without waiting for :attr:`lock`
        with self.lock:
            if offset >= spec.MmioReg.CONFIG:
                return self.device.read_config(offset - spec.MmioReg.CONFIG, size)
            if size != _REGISTER_SIZE or offset % _REGISTER_SIZE:
                self._log_once(f"read-size-{offset}", f"{size}-byte read of register {offset:#x}"
                               " (registers are 32-bit)")
                return 0
            return self._read_register(offset)

    def _read_register(self, offset: int) -> int:
        R = spec.MmioReg
        q = self._queue()
        if offset == R.MAGIC_VALUE:
            return spec.MMIO_MAGIC
        if offset == R.VERSION:
            return spec.MMIO_VERSION
        if offset == R.DEVICE_ID:
            return int(self.device.device_id)
        if offset == R.VENDOR_ID:
            return spec.MMIO_VENDOR_ID
        if offset == R.DEVICE_FEATURES:
            if self.device_features_sel > 1:
                return 0
            return (self.device.avail_features >> (32 * self.device_features_sel)) & _U32
        if offset == R.QUEUE_NUM_MAX:
            return 0 if q is None else int(q.max_size)
        if offset == R.QUEUE_READY:
            return 0 if q is None else int(q.ready)
        if offset == R.INTERRUPT_STATUS:
            return self.read_interrupt_status()
        if offset == R.STATUS:
            return self.status
        if offset == R.CONFIG_GENERATION:
            return self.config_generation
        if offset in (R.SHM_LEN_LOW, R.SHM_LEN_HIGH):
            return _U32  # no shared memory regions (4.2.2: length -1)
        if q is not None:
            pairs = {R.QUEUE_DESC_LOW: q.desc_table, R.QUEUE_DRIVER_LOW: q.avail_ring,
                     R.QUEUE_DEVICE_LOW: q.used_ring}
            for low, value in pairs.items():
                if offset == low:
                    return int(value) & _U32
                if offset == low + 4:
                    return int(value) >> 32
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        with self.lock:
            if offset >= spec.MmioReg.CONFIG:
                if self.status & spec.STATUS_DRIVER:
                    self.device.write_config(offset - spec.MmioReg.CONFIG, size, value)
                return
            if size != _REGISTER_SIZE or offset % _REGISTER_SIZE:
                self._log_once(f"write-size-{offset}", f"{size}-byte write of register "
                               f"{offset:#x} ignored (registers are 32-bit)")
                return
            self._write_register(offset, value & _U32)

    def _write_register(self, offset: int, value: int) -> None:
        R = spec.MmioReg
        if offset == R.QUEUE_NOTIFY:
            self._notify_by_exit(value)
        elif offset == R.STATUS:
            self._write_status(value)
        elif offset == R.INTERRUPT_ACK:
            with self.status_lock:
                self._take_acks()
                self.interrupt_status &= ~value
        elif offset == R.DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == R.DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == R.DRIVER_FEATURES:
            self._write_driver_features(value)
        elif offset == R.QUEUE_SEL:
            self.queue_sel = value
        elif offset in (R.QUEUE_NUM, R.QUEUE_READY, R.QUEUE_DESC_LOW, R.QUEUE_DESC_HIGH,
                        R.QUEUE_DRIVER_LOW, R.QUEUE_DRIVER_HIGH, R.QUEUE_DEVICE_LOW,
                        R.QUEUE_DEVICE_HIGH):
            self._write_queue(offset, value)
        else:
            self._log_once(f"write-{offset}", f"write {value:#x} to read-only or unknown "
                           f"register {offset:#x} ignored")

    def _write_driver_features(self, value: int) -> None:
        if not self.status & spec.STATUS_DRIVER or self.status & spec.STATUS_FEATURES_OK:
            self._log_once("features-late", "DriverFeatures written outside feature "
                           "negotiation (before DRIVER or after FEATURES_OK): ignored")
            return
        if self.driver_features_sel > 1:
            return
        shift = 32 * self.driver_features_sel
        self.driver_features = (self.driver_features & ~(_U32 << shift)) | (value << shift)

    def _write_queue(self, offset: int, value: int) -> None:
        R = spec.MmioReg
        q = self._queue()
        if q is None:
            self._log_once(f"queue-sel-{self.queue_sel}", f"QueueSel {self.queue_sel} is not "
                           f"a queue (the device has {len(self.device.queues)}): write ignored")
            return
        if self.status & spec.STATUS_DRIVER_OK and offset != R.QUEUE_READY:
            self._log_once("queue-live", "queue register written after DRIVER_OK: ignored")
            return
        if offset == R.QUEUE_READY:
            q.ready = bool(value & 1)
            return
        if q.ready:
            self._log_once("queue-ready", "queue register written while QueueReady=1: ignored")
            return
        if offset == R.QUEUE_NUM:
            q.size = value
            return
        attr = {R.QUEUE_DESC_LOW: "desc_table", R.QUEUE_DESC_HIGH: "desc_table",
                R.QUEUE_DRIVER_LOW: "avail_ring", R.QUEUE_DRIVER_HIGH: "avail_ring",
                R.QUEUE_DEVICE_LOW: "used_ring", R.QUEUE_DEVICE_HIGH: "used_ring"}[
            spec.MmioReg(offset)]
        old = int(getattr(q, attr))
        high = offset in (R.QUEUE_DESC_HIGH, R.QUEUE_DRIVER_HIGH, R.QUEUE_DEVICE_HIGH)
        new = (old & _U32) | (value << 32) if high else (old & ~_U32) | value
        setattr(q, attr, new)

    def _write_status(self, value: int) -> None:
        if value == 0:
            self.reset()
            return
        if value & ~self.status & spec.STATUS_DEVICE_NEEDS_RESET:
            value &= ~spec.STATUS_DEVICE_NEEDS_RESET  # only the device sets it
        if self.status & ~value & ~spec.STATUS_DEVICE_NEEDS_RESET:
            self._log_once("status-clear", f"status {value:#x} clears bits of {self.status:#x} "
                           "without a reset: ignored")
            return
        added = value & ~self.status
        if added & spec.STATUS_FEATURES_OK and not self._accept_features():
            value &= ~spec.STATUS_FEATURES_OK
            added &= ~spec.STATUS_FEATURES_OK
        if added & spec.STATUS_DRIVER_OK:
            if not self.status & spec.STATUS_FEATURES_OK and not value & spec.STATUS_FEATURES_OK:
                self._log_once("driver-ok-early", "DRIVER_OK without FEATURES_OK: ignored")
                return
            self.status = value | (self.status & spec.STATUS_DEVICE_NEEDS_RESET)
            self._activate()
            return
        self.status = value | (self.status & spec.STATUS_DEVICE_NEEDS_RESET)

    def _accept_features(self) -> bool:
        extra = self.driver_features & ~self.device.avail_features
        if extra:
            self._log_once("features-extra", f"driver accepted features {extra:#x} the device "
                           "does not offer: FEATURES_OK refused")
            return False
        if not self.driver_features >> spec.F_VERSION_1 & 1:
            self._log_once("features-legacy", "driver did not accept VIRTIO_F_VERSION_1 "
                           "(legacy drivers are not supported): FEATURES_OK refused")
            return False
        self.device.acked_features = self.driver_features
        return True

    @property
    def ram(self) -> GuestRam:
        if self.memory is None:
            raise QueueError(f"{self.name}: guest RAM is not connected yet")
        return self.memory

    def _activate(self) -> None:
        event_idx = self.device.has_feature(spec.F_EVENT_IDX)
        try:
            for i, q in enumerate(self.device.queues):
                q.event_idx = event_idx
                if q.ready:
                    try:
                        q.check_layout(self.ram)
                    except QueueError as e:
                        raise QueueError(f"queue {i}: {e}") from None
            self.device.activate(self.ram, self.kick)
        except QueueError as e:
            self.needs_reset(str(e))
            return
        for i, q in enumerate(self.device.queues):
            if q.ready:
                self.kick(i)  # buffers made available before DRIVER_OK are served now

    def reset(self) -> None:
        """Device reset (status 0): back to the state at power-on, the queues forgotten."""
        with self.lock:
            self.device.reset()
            self._reset_registers()
            self.error = None
            for fd in self.queue_fds:
                drain_eventfd(fd)
            if self.ack_fd >= 0:
                drain_eventfd(self.ack_fd)

    # -- notifications ----------------------------------------------------------------------
    def _notify_by_exit(self, value: int) -> None:
        self.notify_exits += 1
        index = value & 0xFFFF  # without VIRTIO_F_NOTIFICATION_DATA, the queue index
        if index >= len(self.queue_fds):
            self._log_once(f"notify-{index}", f"QueueNotify for queue {index}, which does not "
                           f"exist (the device has {len(self.queue_fds)}): ignored")
            return
        os.eventfd_write(self.queue_fds[index], 1)

    def kick(self, index: int) -> None:
        """Have the I/O thread run queue ``index`` (host-side work, e.g. console input)."""
        if 0 <= index < len(self.queue_fds):
            os.eventfd_write(self.queue_fds[index], 1)

    def backend_used(self) -> None:
        """A back end in another process used buffers (its call eventfd fired): set the
        used-buffer bit the driver's interrupt handler checks, then interrupt."""
        with self.lock:
            if self.live:
                self._raise_interrupt(spec.INTERRUPT_USED_BUFFER)

    def on_queue_event(self, index: int) -> None:
        """I/O thread: queue ``index``'s eventfd fired."""
        if not drain_eventfd(self.queue_fds[index]):
            return
        self.process(index)

    def process(self, index: int) -> None:
        """Run the device on queue ``index`` and interrupt the driver if it wants one."""
        with self.lock:
            self.notifications += 1
            if not self.live:
                if not self.status & spec.STATUS_DEVICE_NEEDS_RESET:
                    self._log_once("notify-early", f"notification of queue {index} before "
                                   "DRIVER_OK: ignored")
                return
            q = self.device.queues[index]
            if not q.ready:
                self._log_once(f"notify-not-ready-{index}", f"notification of queue {index}, "
                               "which is not ready: ignored")
                return
            try:
                used = self.device.process_queue(index)
                if used and q.needs_interrupt(self.ram):
                    self._raise_interrupt(spec.INTERRUPT_USED_BUFFER)
            except (QueueError, GuestMemoryError) as e:
                self.needs_reset(f"queue {index}: {e}")
            except Exception as e:  # a device bug: contain it to this device, keep the VM
                log.exception("%s: queue %d: the device failed", self.name, index)
                self.needs_reset(f"queue {index}: device error {type(e).__name__}: {e}")

    # -- state ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Transport, queue and device state as plain data (JSON-ready), versioned."""
        with self.lock:
            interrupt_status = self.read_interrupt_status()
            return {
                "version": STATE_VERSION,
                "kind": self.device.name,
                "status": self.status,
                "device_features_sel": self.device_features_sel,
                "driver_features_sel": self.driver_features_sel,
                "driver_features": self.driver_features,
                "acked_features": self.device.acked_features,
                "queue_sel": self.queue_sel,
                "interrupt_status": interrupt_status,
                "config_generation": self.config_generation,
                "queues": [vars(q.state()) for q in self.device.queues],
                "device": self.device.state(),
            }

    def _check_state(self, state: Mapping[str, Any]) -> list[QueueState]:
        """Every field of a saved :meth:`state` checked; nothing is set."""
        tag = f"{self.name} (virtio-{self.device.name})"
        if state.get("version") != STATE_VERSION:
            raise DeviceStateError(f"{tag} state: version {state.get('version')!r}; this vmboot "
                                   f"restores version {STATE_VERSION}: take the snapshot again")
        if state.get("kind") != self.device.name:
            raise DeviceStateError(f"{tag} state: saved from a virtio-{state.get('kind')} device; "
                                   "make the machine with the devices in the snapshot's order")
        for key in _REGISTERS:
            field_int(tag, state, key, _U32)
        for key in ("driver_features", "acked_features"):
            field_int(tag, state, key, (1 << 64) - 1)
        queues = state.get("queues")
        if not isinstance(queues, list) or len(queues) != len(self.device.queues):
            raise DeviceStateError(f"{tag} state: {len(queues) if isinstance(queues, list) else 0}"
                                   f" queues saved, the device has {len(self.device.queues)}")
        out = []
        for i, (q, qs) in enumerate(zip(self.device.queues, queues, strict=True)):
            qtag = f"{tag} queue {i}"
            if not isinstance(qs, dict):
                raise DeviceStateError(f"{qtag} state: not an object")
            for key in ("desc_table", "avail_ring", "used_ring"):
                field_int(qtag, qs, key, (1 << 64) - 1)
            for key in ("next_avail", "next_used"):
                field_int(qtag, qs, key, 0xFFFF)
            field_optional_int(qtag, qs, "signalled_used", 0xFFFF)
            field_int(qtag, qs, "size", q.max_size)
            field_bool(qtag, qs, "ready")
            try:
                out.append(QueueState(**qs))
            except TypeError as e:
                raise DeviceStateError(f"{qtag} state: {e}") from None
        if not isinstance(state.get("device"), dict):
            raise DeviceStateError(f"{tag} state: 'device' is not an object")
        return out

    def restore(self, state: Mapping[str, Any]) -> None:
        """Put back a :meth:`state` (checked first); the device is re-activated if the driver
        had it running. Interrupts owed are sent by :meth:`resume`, once the interrupt
        controllers have their state back."""
        with self.lock:
            queues = self._check_state(state)
            self.device.check_state(state["device"])
            self.reset()
            for q, qs in zip(self.device.queues, queues, strict=True):
                q.restore(qs)
            with self.status_lock:
                for key in _REGISTERS:
                    setattr(self, key, int(state[key]))
            self.driver_features = int(state["driver_features"])
            self.device.acked_features = int(state["acked_features"])
            self.device.restore(state["device"])
            if self.live:
                event_idx = self.device.has_feature(spec.F_EVENT_IDX)
                for q in self.device.queues:
                    q.event_idx = event_idx
                self.device.activate(self.ram, self.kick)

    def resume(self) -> None:
        """After a restore: serve what the driver made available before the snapshot and
        interrupt again if an interrupt was pending (the driver reads InterruptStatus)."""
        with self.lock:
            if not self.live:
                return
            for i, q in enumerate(self.device.queues):
                if q.ready:
                    self.kick(i)
            if self.read_interrupt_status():
                self.interrupts += 1
                self.interrupt()


STATE_VERSION = 1
"""Version of :meth:`MmioTransport.state`; a snapshot with another is refused."""
_REGISTERS = ("status", "device_features_sel", "driver_features_sel", "queue_sel",
              "interrupt_status", "config_generation")
