"""virtio-fs (virtio 1.2 section 5.11): a host directory, served by virtiofsd over vhost-user.

The queues (``hiprio`` and one request queue) are served by another process: at the
driver's ``DRIVER_OK`` the device hands virtiofsd guest RAM (SET_MEM_TABLE with the memfd)
and each ready queue's layout, its *kick* eventfd (the transport's queue eventfd, which
KVM signals on ``QueueNotify``) and its *call* eventfd. The I/O thread watches the call
eventfds: the Linux driver's interrupt handler reads ``InterruptStatus`` and only looks at
the used rings when the used-buffer bit is set, so the transport sets that bit and then
raises the interrupt (as QEMU does with the call eventfds it watches itself).

When virtiofsd dies, the death is logged in one line and the device answers the requests
that remain, and every later one, with a FUSE ``EIO`` reply: the guest sees I/O errors
instead of hanging. Requests virtiofsd took but did not answer are taken to be the ones
between the used and the available index (virtiofsd completes them out of order only
under concurrent load).
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, cast

from vmboot.devices.vhost_user import messages as m
from vmboot.devices.vhost_user.frontend import VhostUserError, VhostUserFrontend, VringAddresses
from vmboot.devices.vhost_user.virtiofsd import Virtiofsd
from vmboot.devices.virtio import spec
from vmboot.devices.virtio.device import QueueNotify, VirtioDevice
from vmboot.devices.virtio.queue import GuestRam, QueueError, scatter
from vmboot.devices.virtio.share import TAG_BYTES, Share
from vmboot.errors import BootConfigError, DeviceStateError

log = logging.getLogger("vmboot.devices.virtio")

QUEUE_SIZE = 1024
REQUEST_QUEUES = 1
HIPRIO_QUEUE = 0
PASSED_FEATURES = (1 << spec.F_VERSION_1) | (1 << spec.F_EVENT_IDX) | (1 << spec.F_INDIRECT_DESC)
"""The virtio features vmboot lets the driver and virtiofsd agree on (ring features only:
the rings are the back end's, and vmboot's transport must not offer what it cannot pass)."""
PROTOCOL_FEATURES = m.ProtocolFeature.REPLY_ACK
FUSE_IN_HEADER = struct.Struct("<IIQQIIII")
"""len, opcode, unique, nodeid, uid, gid, pid, padding."""
FUSE_OUT_HEADER = struct.Struct("<IiQ")
"""len, error (a negative errno), unique."""


class SharedRam(GuestRam, Protocol):
    """Guest RAM another process can map (``GuestMemory(shared=True)``)."""

    regions: Sequence[Any]

    @property
    def fd(self) -> int: ...

    @property
    def host_address(self) -> int: ...

    def offset_of(self, gpa: int, length: int) -> int: ...


class FsDevice(VirtioDevice):
    """One virtio-fs share; :meth:`close` stops its virtiofsd."""

    device_id: ClassVar[spec.DeviceId] = spec.DeviceId.FS
    name: ClassVar[str] = "fs"
    served_externally: ClassVar[bool] = True
    """The queues are another process's: the I/O thread must not read their eventfds."""

    def __init__(self, share: Share, daemon: Virtiofsd | None = None) -> None:
        share.check()
        super().__init__((QUEUE_SIZE,) * (1 + REQUEST_QUEUES))
        self.share = share
        self.daemon = daemon or Virtiofsd.start(share.source, read_only=share.read_only)
        try:
            self.frontend = VhostUserFrontend.connect(self.daemon.socket_path,
                                                      f"virtio-fs {share.tag}")
            offered = self.frontend.negotiate(PASSED_FEATURES, PROTOCOL_FEATURES)
        except BaseException:
            self.daemon.stop()
            raise
        if not offered >> spec.F_VERSION_1 & 1:
            self.close()
            raise BootConfigError(f"virtio-fs {share.tag}: virtiofsd does not offer "
                                  "VIRTIO_F_VERSION_1 (a modern device); use a newer virtiofsd")
        self.avail_features = offered
        self.kick_fds: list[int] = []
        self.call_fds: list[int] = []
        self.started: list[int] = []
        """Queues handed to the back end (stopped with GET_VRING_BASE on reset)."""
        self.failure: str | None = None
        """One line saying how the back end died (None while it serves)."""
        self.failed_requests = 0
        self._restored_bases: list[int] = []
        """Where the saved back end stood in each queue (a restore; the fresh virtiofsd
        starts there)."""

    def describe(self) -> dict[str, Any]:
        return {"tag": self.share.tag, "source": str(self.share.source),
                "read_only": self.share.read_only, "backend_error": self.failure,
                "failed_requests": self.failed_requests}

    def config_bytes(self) -> bytes:
        return self.share.tag.encode().ljust(TAG_BYTES, b"\0") + struct.pack("<I", REQUEST_QUEUES)

    # -- wiring (the machine's virtio set-up) -------------------------------------------------
    def bind_notifications(self, kick_fds: Sequence[int], call_fds: Sequence[int]) -> None:
        """The eventfds the back end reads (kick) and signals (call), one pair a queue."""
        self.kick_fds, self.call_fds = list(kick_fds), list(call_fds)

    def death_fd(self) -> int:
        """A pidfd of virtiofsd: readable when it has exited (the caller closes it)."""
        return os.pidfd_open(self.daemon.process.pid)

    def backend_died(self) -> str:
        """virtiofsd has exited: from now on vmboot answers the queues itself, with EIO."""
        self.failure = self.daemon.failure() or f"virtiofsd for {self.share.source} exited"
        self.started = []
        memory = self.memory
        if memory is not None:
            for q in self.queues:
                if q.ready:
                    used = struct.unpack("<H", memory.read(q.used_ring + 2, 2))[0]
                    q.next_avail = q.next_used = used
        return f"virtio-fs {self.share.tag}: {self.failure}; its requests now fail with EIO"

    # -- lifetime -----------------------------------------------------------------------------
    def activate(self, memory: GuestRam, notify: QueueNotify) -> None:
        super().activate(memory, notify)
        if self.failure is not None:
            return
        ram = cast(SharedRam, memory)
        if not getattr(memory, "shared", False):
            raise QueueError(f"virtio-fs {self.share.tag}: guest RAM is private; the machine "
                             "must make shared RAM (GuestMemory(shared=True)) for virtiofsd")
        if len(self.kick_fds) != len(self.queues) or len(self.call_fds) != len(self.queues):
            raise QueueError(f"virtio-fs {self.share.tag}: notifications are not wired")
        base = ram.host_address
        try:
            self.frontend.set_features(self.acked_features)
            regions = [m.MemoryRegion(r.gpa, r.size, base + r.offset, r.offset)
                       for r in ram.regions]
            self.frontend.set_mem_table(regions, [ram.fd] * len(regions))
            self._start_vrings(ram, self._restored_bases)
        except VhostUserError as e:
            raise QueueError(str(e)) from None

    def _start_vrings(self, ram: SharedRam, bases: Sequence[int]) -> None:
        """Hand each ready queue to the back end, starting at ``bases[i]`` (0: the start)."""
        base = ram.host_address
        for i, q in enumerate(self.queues):
            if not q.ready:
                continue
            addresses = VringAddresses(
                base + ram.offset_of(q.desc_table, 1), base + ram.offset_of(q.used_ring, 1),
                base + ram.offset_of(q.avail_ring, 1))
            self.frontend.set_vring(i, q.size, addresses, self.kick_fds[i], self.call_fds[i],
                                    bases[i] if i < len(bases) else 0)
            self.frontend.enable_vring(i)
            self.started.append(i)

    def reset(self) -> None:
        for i in self.started:
            try:
                self.frontend.get_vring_base(i)
            except VhostUserError as e:
                log.warning("%s", e)
                break
        self.started = []
        super().reset()

    def process_queue(self, index: int) -> bool:
        """Only after the back end died: fail each request with EIO."""
        memory = self.memory
        if self.failure is None or memory is None:
            return False
        q = self.queues[index]
        used = False
        while (chain := q.pop(memory)) is not None:
            unique = 0
            if chain.readable and chain.readable[0].length >= FUSE_IN_HEADER.size:
                unique = FUSE_IN_HEADER.unpack(
                    memory.read(chain.readable[0].address, FUSE_IN_HEADER.size))[2]
            reply = FUSE_OUT_HEADER.pack(FUSE_OUT_HEADER.size, -errno.EIO, unique)
            written = scatter(memory, chain.writable, reply) if chain.writable else 0
            q.add_used(memory, chain.head, written)
            self.failed_requests += 1
            used = True
        return used

    # -- state --------------------------------------------------------------------------------
    def vring_bases(self) -> list[int]:
        """Where virtiofsd stands in each queue: GET_VRING_BASE stops a queue and answers
        the next available index it would read; the queues are then started again from
        there (the guest goes on after a snapshot). 0 for a queue it never had."""
        bases = [0] * len(self.queues)
        memory = self.memory
        if not self.started or memory is None:
            return bases
        try:
            for i in self.started:
                bases[i] = self.frontend.get_vring_base(i)
            self.started = []
            self._start_vrings(cast(SharedRam, memory), bases)
        except VhostUserError as e:
            raise DeviceStateError(f"virtio-fs {self.share.tag}: {e}") from None
        return bases

    def state(self) -> dict[str, Any]:
        """The share and each queue's vring base. Refused once the guest has used the share
        (a base is not 0: FUSE_INIT at least was served): a fresh virtiofsd, which a restore
        starts, cannot know the inodes and open files the guest holds."""
        bases = self.vring_bases()
        used = [f"queue {i} at {b}" for i, b in enumerate(bases) if b]
        if used:
            raise DeviceStateError(
                f"virtio-fs {self.share.tag}: the guest has used the share ({', '.join(used)} "
                "requests served): a restore starts a fresh virtiofsd, which cannot know the "
                f"files the guest holds; snapshot before the guest mounts {self.share.tag}")
        return {**super().state(), "tag": self.share.tag, "vring_bases": bases}

    def check_state(self, state: dict[str, Any]) -> None:
        tag, bases = state.get("tag"), state.get("vring_bases")
        if tag != self.share.tag:
            raise DeviceStateError(f"virtio-fs: tag: saved {tag!r}, this machine shares "
                                   f"{self.share.tag!r}; restore with the shares the snapshot "
                                   "was taken with")
        if (not isinstance(bases, list) or len(bases) != len(self.queues)
                or not all(isinstance(b, int) and 0 <= b < 1 << 16 for b in bases)):
            raise DeviceStateError(f"virtio-fs {self.share.tag}: vring_bases = {bases!r} is not "
                                   f"{len(self.queues)} 16-bit indices")

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self._restored_bases = [int(b) for b in state["vring_bases"]]

    def close(self) -> None:
        self.frontend.close()
        self.daemon.stop()

