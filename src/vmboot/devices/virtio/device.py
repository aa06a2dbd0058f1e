"""What a virtio device is, independent of its transport.

A device is a small class: its :class:`~.spec.DeviceId`, the features it offers, its
configuration space, the maximum size of each of its queues, and what it does when the
driver makes buffers available (:meth:`VirtioDevice.process_queue`). The transport owns
the common state (status, negotiated features, the queues' addresses and indices) and
calls :meth:`activate` at ``DRIVER_OK`` and :meth:`reset` when the driver resets it.

A device tells the transport that it used buffers by returning True from
:meth:`process_queue` (the transport decides whether to interrupt), or, for work started
on the host side (console input), through the ``notify`` callable it is given at
activation. It never imports the VMM.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, ClassVar

from vmboot.devices.virtio import spec
from vmboot.devices.virtio.io_thread import HostFdWatch, HostFdWatcher, IoThread, QueueServe
from vmboot.devices.virtio.queue import DescriptorChain, GuestRam, Virtqueue

QueueNotify = Callable[[int], None]
"""``notify(queue_index)``: the device added used buffers to this queue from host-side work."""


class VirtioDevice:
    """Base class of vmboot's virtio devices."""

    device_id: ClassVar[spec.DeviceId]
    name: ClassVar[str]
    """A short kind name for listings ("block", "console", "rng")."""

    def __init__(self, queue_sizes: tuple[int, ...], features: int = 0) -> None:
        self.avail_features = spec.TRANSPORT_FEATURES | features
        self.acked_features = 0
        self.queues = [Virtqueue(size) for size in queue_sizes]
        self.memory: GuestRam | None = None
        self._notify: QueueNotify | None = None
        self.requests = 0
        """Requests (chains) completed since the machine started (kept across resets)."""
        self.on_config_change: Callable[[], None] = lambda: None
        """Set by the transport: the configuration space changed (e.g. a network link went
        down); the driver gets a configuration-change interrupt."""
        self.watch_host_fd: HostFdWatch = lambda fd, on: None
        """Set by the wiring when the device has :meth:`host_fds`; none is watched at first."""
        self.watch_host_fd_writable: HostFdWatch = lambda fd, on: None
        """Set with :attr:`watch_host_fd`: start or stop serving one of the
        :meth:`host_fds_writable` when it becomes writable; none is watched at first."""

    # -- configuration space ----------------------------------------------------------------
    def config_bytes(self) -> bytes:
        """The device-specific configuration space, as the driver reads it."""
        return b""

    def read_config(self, offset: int, size: int) -> int:
        data = self.config_bytes()
        chunk = data[offset:offset + size] if 0 <= offset < len(data) else b""
        return int.from_bytes(chunk.ljust(size, b"\0"), "little")

    def write_config(self, offset: int, size: int, value: int) -> None:
        """Writes to read-only fields are ignored (the default)."""

    def host_fds(self) -> dict[int, int]:
        """Host file descriptors (a network backend's socket) the I/O thread serves for the
        device: fd -> the queue processed when it becomes readable. The device turns each on
        and off with :attr:`watch_host_fd` (off while it has nowhere to put what it reads)."""
        return {}

    def host_fds_writable(self) -> dict[int, int]:
        """Host fds (among :meth:`host_fds`) the device may wait on to become writable: fd ->
        the queue processed then. The device turns each on with :attr:`watch_host_fd_writable`
        while the fd's peer cannot take more (a network backend's full socket buffer)."""
        return {}

    def attach_io_thread(self, io: IoThread, serve: QueueServe) -> None:
        """The wiring gives every device the I/O thread, once, before it starts: the one way
        host fds are served there. ``serve(queue)`` processes a queue on it. The default
        serves :meth:`host_fds` and :meth:`host_fds_writable` through a
        :class:`~vmboot.devices.virtio.io_thread.HostFdWatcher` (:attr:`watch_host_fd`,
        :attr:`watch_host_fd_writable`); a device whose fds come and go (vsock's
        connections) registers them with ``io`` itself."""
        fds = self.host_fds()
        if fds:
            watcher = HostFdWatcher(io, serve, fds, self.host_fds_writable())
            self.watch_host_fd = watcher.readable
            self.watch_host_fd_writable = watcher.writable

    # -- lifetime ---------------------------------------------------------------------------
    def has_feature(self, bit: int) -> bool:
        return bool(self.acked_features >> bit & 1)

    def activate(self, memory: GuestRam, notify: QueueNotify) -> None:
        """The driver set ``DRIVER_OK``: the queues are checked and live."""
        self.memory = memory
        self._notify = notify

    def reset(self) -> None:
        """Back to the state before the driver found the device (requests keeps counting)."""
        self.memory = None
        self._notify = None
        self.acked_features = 0
        for q in self.queues:
            q.reset()

    def serve_each(self, index: int, serve: Callable[[DescriptorChain], int],
                   more: Callable[[], bool] = lambda: True) -> bool:
        """Take every chain the driver made available on queue ``index``, ``serve`` it (it
        returns the bytes it wrote into the chain) and give it back as used; True if any was.
        ``more``: checked before each chain; serving stops when it says there is nothing left
        to give (a receive queue filled from host-side data).

        The loop of a device that answers each request by itself (block, rng, console)."""
        memory = self.memory
        if memory is None:
            return False
        q = self.queues[index]
        used = False
        while more():
            chain = q.pop(memory)
            if chain is None:
                if q.drained(memory):
                    break
                continue
            q.add_used(memory, chain.head, serve(chain))
            self.requests += 1
            used = True
        return used

    def used_buffers_signalled(self) -> None:
        """The transport just sent a used-buffer notification. On virtio-mmio one covers
        every queue (4.2.2: the driver looks at each), so a device holding back the
        notification of another queue's used buffers (:mod:`.signal_delay`) owes none
        for them now. The default holds nothing back."""

    def process_queue(self, index: int) -> bool:
        """The driver notified queue ``index``: handle what it made available.

        Returns True if used buffers were added (the transport may then interrupt). May raise
        :class:`~.queue.QueueError` (the device then needs a reset).
        """
        raise NotImplementedError

    # -- state ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Device-specific state as plain data (the transport adds the common state)."""
        return {"requests": self.requests}

    def check_state(self, state: dict[str, Any]) -> None:
        """Raise :class:`~vmboot.errors.DeviceStateError` naming a saved field that does not
        fit this device (called before anything is restored; the default checks nothing)."""

    def restore(self, state: dict[str, Any]) -> None:
        self.requests = int(state.get("requests", 0))


def le_fields(fmt: str, *values: int) -> bytes:
    """Pack a little-endian configuration-space layout."""
    return struct.pack("<" + fmt, *values)
