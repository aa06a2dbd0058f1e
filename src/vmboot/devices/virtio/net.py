"""virtio-net (virtio 1.2 section 5.1): one receive/transmit queue pair in front of a
host backend (:mod:`vmboot.net`).

Offered: ``VIRTIO_NET_F_MAC``, ``F_STATUS`` (the link goes down when the backend goes
away), ``F_MTU``, ``F_MRG_RXBUF`` (a frame may span several receive buffers), and the
backend's checksum and TSO offloads when it carries the virtio-net header (TAP with
``IFF_VNET_HDR``). Not offered: ``VIRTIO_F_INDIRECT_DESC`` (:data:`NOT_OFFERED`).

The backend's fd is served on the I/O thread (:meth:`VirtioDevice.host_fds`): when it is
readable, the receive queue is processed. When the guest has no receive buffers, the frame
in hand is held and the fd unwatched until the guest adds buffers (its notification
processes the receive queue again). When the backend cannot take a whole frame (passt's
socket buffer is full), it keeps the rest, and the device takes no more chains from the
transmit queue until the fd becomes writable and the rest is sent: the guest is held back,
the I/O thread (and every other device on it) never waits.

Everything from the guest is checked: a transmitted chain shorter than the header, a frame
longer than the MTU (or the TSO limit) plus headers, or a chain pointing outside guest RAM
is dropped and counted, and the device goes on working.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from typing import Any, ClassVar

from vmboot.devices.virtio import spec
from vmboot.devices.virtio.device import VirtioDevice
from vmboot.devices.virtio.queue import (
    DescriptorChain,
    GuestRam,
    QueueError,
    Virtqueue,
    memory_fence,
    views,
)
from vmboot.devices.virtio.signal_delay import SignalDelay
from vmboot.errors import BootConfigError, DeviceStateError
from vmboot.net.backend import FrameDropped, NetBackend, NetBackendDown

log = logging.getLogger("vmboot.devices.virtio")

QUEUE_SIZE = 256
RX, TX = 0, 1
_U16 = struct.Struct("<H")
_HOST_GSO = (1 << spec.NET_F_HOST_TSO4) | (1 << spec.NET_F_HOST_TSO6) | (1 << spec.NET_F_HOST_UFO)
_GUEST_GSO = (1 << spec.NET_F_GUEST_TSO4) | (1 << spec.NET_F_GUEST_TSO6) | (
    1 << spec.NET_F_GUEST_UFO)
BATCH_FRAMES = 32
"""Frames moved in one direction per turn of the I/O thread. The guest gets its interrupt
at the end of a turn, and the other queue and devices get theirs: a backend that never
stops sending (passt retransmitting to a slow guest) must not starve the guest's
acknowledgements on the transmit queue."""
TX_SIGNAL_DELAY = 1e-3
"""Seconds the interrupt for sent frames may wait for company (:mod:`.signal_delay`): a
reply to what was sent usually comes within it, and one interrupt then serves both (the
reply's interrupt ends the wait: :meth:`NetDevice.used_buffers_signalled`). Only frees
frames the driver already let go of; the frames themselves leave at once."""
TX_SIGNAL_AT_ONCE = QUEUE_SIZE // 4
"""Sent frames whose interrupt never waits (the driver may be running short of room)."""
NOT_OFFERED = 1 << spec.F_INDIRECT_DESC
"""Transport features virtio-net leaves out. With indirect descriptors Linux's driver
allocates and frees a table for every frame of two or more parts (each TCP segment: its
headers and its data), work the guest does per frame where its kernel code is emulated;
a frame's parts then take a descriptor each in the transmit ring (Firecracker offers no
indirect descriptors for its net device either)."""
LOCAL_MAC_PREFIX = 0x02
"""First octet of a derived MAC address: locally administered, unicast."""


def mac_for_name(name: str) -> bytes:
    """A MAC address stable for a VM name: locally administered, the rest from its hash."""
    return bytes([LOCAL_MAC_PREFIX]) + hashlib.sha256(name.encode()).digest()[:5]


def parse_mac(text: str) -> bytes:
    parts = text.split(":")
    try:
        mac = bytes(int(p, 16) for p in parts if len(p) == 2)
    except ValueError:
        mac = b""
    if len(parts) != spec.ETH_ADDR_LEN or len(mac) != spec.ETH_ADDR_LEN:
        raise BootConfigError(f"mac: {text!r} is not six two-digit hex octets "
                              "(e.g. 02:00:00:00:00:01)")
    if mac[0] & 1:
        raise BootConfigError(f"mac: {text} is a multicast address (the first octet is odd); "
                              "use a unicast one such as 02:...")
    return mac


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


class NetDevice(VirtioDevice):
    device_id: ClassVar[spec.DeviceId] = spec.DeviceId.NET
    name: ClassVar[str] = "net"

    def __init__(self, backend: NetBackend, mac: bytes) -> None:
        if len(mac) != spec.ETH_ADDR_LEN:
            raise BootConfigError(f"virtio-net: MAC address of {len(mac)} bytes; "
                                  f"{spec.ETH_ADDR_LEN} needed")
        features = ((1 << spec.NET_F_MAC) | (1 << spec.NET_F_STATUS) | (1 << spec.NET_F_MTU)
                    | (1 << spec.NET_F_MRG_RXBUF) | backend.offload_features)
        super().__init__((QUEUE_SIZE, QUEUE_SIZE), features)
        self.avail_features &= ~NOT_OFFERED
        self.backend = backend
        self.mac = mac
        self.link_up = True
        self._tx_signal: SignalDelay | None = None
        """Made with the device's host fds (an I/O thread serves its timer); without one,
        every completion is signalled at once."""
        self._held: bytes | None = None
        """A frame from the backend (with the virtio header when the backend carries one)
        waiting for receive buffers."""
        self.counters = {"rx_frames": 0, "rx_bytes": 0, "tx_frames": 0, "tx_bytes": 0,
                         "rx_dropped": 0, "tx_short": 0, "tx_oversized": 0,
                         "tx_dropped": 0, "bad_chains": 0}
        """Frames and bytes each way, and what was dropped: rx_dropped (a frame larger than
        the guest can take), tx_short (a chain without a whole header), tx_oversized (over
        the MTU or TSO limit), tx_dropped (the backend refused it or is down), bad_chains (a
        chain pointing outside guest RAM or the queue)."""

    # -- configuration ---------------------------------------------------------------------
    def config_bytes(self) -> bytes:
        status = spec.NET_S_LINK_UP if self.link_up else 0
        return self.mac + struct.pack("<HHH", status, 1, self.backend.mtu)

    def describe(self) -> dict[str, Any]:
        return {"mac": format_mac(self.mac), "link": "up" if self.link_up else "down",
                **self.backend.describe(), **self.counters}

    def host_fds(self) -> dict[int, int]:
        fd = self.backend.fileno()
        if fd < 0:
            return {}
        if self._tx_signal is None:
            self._tx_signal = SignalDelay(TX_SIGNAL_DELAY, TX_SIGNAL_AT_ONCE)
        return {fd: RX, self._tx_signal.fd: TX}

    def host_fds_writable(self) -> dict[int, int]:
        fd = self.backend.fileno()
        return {fd: TX} if fd >= 0 else {}

    def _watch(self, on: bool) -> None:
        fd = self.backend.fileno()
        if fd >= 0:
            self.watch_host_fd(fd, on and self.link_up)

    def _watch_writable(self, on: bool) -> None:
        fd = self.backend.fileno()
        if fd >= 0:
            self.watch_host_fd_writable(fd, on and self.link_up)

    @property
    def header_size(self) -> int:
        return spec.NET_HDR_SIZE

    def max_frame(self, gso_features: int) -> int:
        """The largest Ethernet frame (without the virtio header) allowed in one direction."""
        if self.acked_features & gso_features:
            return spec.NET_MAX_GSO_FRAME
        return self.backend.mtu + spec.ETH_HEADER_SIZE + spec.ETH_VLAN_TAG_SIZE

    # -- lifetime ---------------------------------------------------------------------------
    def activate(self, memory: GuestRam, notify: Any) -> None:
        super().activate(memory, notify)
        self.backend.set_offloads(self.acked_features)
        self._watch(True)
        if self._tx_signal is not None:
            self.watch_host_fd(self._tx_signal.fd, True)

    def reset(self) -> None:
        self._watch(False)
        self._watch_writable(False)
        if self._tx_signal is not None:
            self.watch_host_fd(self._tx_signal.fd, False)
            self._tx_signal.reset()
        super().reset()
        self._held = None

    def used_buffers_signalled(self) -> None:
        """Any used-buffer interrupt tells the driver of the sent frames too: the timer of
        those held back is stopped, so it neither wakes the I/O thread nor interrupts again
        (a received frame's interrupt per frame sent, not one each)."""
        if self._tx_signal is not None:
            self._tx_signal.reset()

    def close(self) -> None:
        log.info("virtio-net: %s", ", ".join(f"{k} {v}" for k, v in self.counters.items()))
        self.backend.close()
        if self._tx_signal is not None:
            self._tx_signal.close()

    def link_down(self, why: str) -> None:
        if self.link_up:
            self.link_up = False
            log.warning("virtio-net: link down: %s", why)
            self._watch(False)
            self._watch_writable(False)
            self.on_config_change()

    # -- queues -----------------------------------------------------------------------------
    def process_queue(self, index: int) -> bool:
        if self.memory is None:
            return False
        return self._transmit(self.memory) if index == TX else self._receive(self.memory)

    def _pop_checked(self, memory: GuestRam, q: Virtqueue) -> DescriptorChain | bool | None:
        """The next chain; None when there is none; False for a malformed chain, which is
        counted and returned to the driver as used. A head outside the queue cannot be
        returned: the ring itself is broken and :class:`QueueError` (a device reset) follows."""
        taken = q.next_avail
        try:
            return q.pop(memory)
        except QueueError as e:
            if q.next_avail == taken:  # the available index itself is out of range
                raise
            head = _U16.unpack(memory.read(q.avail_ring + 4 + 2 * (taken % q.size), 2))[0]
            if head >= q.size:
                raise
            self.counters["bad_chains"] += 1
            log.debug("virtio-net: chain %d dropped: %s", head, e)
            q.add_used(memory, head, 0)
            return False

    def _transmit(self, memory: GuestRam) -> bool:
        """Send what the driver made available; True when the driver should be signalled
        (now, or when the delay of :attr:`_tx_signal` ran out)."""
        q = self.queues[TX]
        before = q.next_used
        used = self._transmit_batch(memory, q)
        if self._tx_signal is None:
            return used
        return self._tx_signal.completed((q.next_used - before) & 0xFFFF)

    def _transmit_batch(self, memory: GuestRam, q: Virtqueue) -> bool:
        used = False
        if not self._backend_ready():
            return used
        limit = self.max_frame(_HOST_GSO)
        strip = 0 if self.backend.vnet_hdr else self.header_size
        for _ in range(BATCH_FRAMES):
            chain = self._pop_checked(memory, q)
            if chain is False:
                used = True
                continue
            if chain is None:
                if q.drained(memory):
                    return used
                continue
            assert isinstance(chain, DescriptorChain)
            taken = self._send(memory, chain, limit, strip)
            q.add_used(memory, chain.head, 0)  # what the backend kept is a copy
            self.requests += 1
            used = True
            if not taken:  # the backend's peer is full: no more until it is writable
                self._watch_writable(True)
                return used
        if self._notify is not None:
            self._notify(TX)  # more may be waiting: another turn
        return used

    def _backend_ready(self) -> bool:
        """Whether the backend takes frames: what it kept of the last one (its peer was
        full) is sent first; while some is left, the fd is watched for writability."""
        if not self.link_up:
            return True  # frames are dropped and counted
        try:
            if not self.backend.flush():
                self._watch_writable(True)
                return False
        except NetBackendDown as e:
            self.link_down(str(e))
            return True
        self._watch_writable(False)
        return True

    def _send(self, memory: GuestRam, chain: DescriptorChain, limit: int, strip: int) -> bool:
        """Send the chain's frame (or drop and count it); False when the backend kept part
        of it for later (:meth:`_backend_ready`)."""
        size = chain.readable_bytes
        if size < self.header_size:
            self.counters["tx_short"] += 1
            return True
        if size - self.header_size > limit:
            self.counters["tx_oversized"] += 1
            return True
        if not self.link_up:
            self.counters["tx_dropped"] += 1
            return True
        whole = views(memory, chain.readable)
        parts = _skip(whole, strip) if strip else whole
        taken = True
        try:
            taken = self.backend.send(parts)
            self.counters["tx_frames"] += 1
            self.counters["tx_bytes"] += size - self.header_size
        except FrameDropped:
            self.counters["tx_dropped"] += 1
        except NetBackendDown as e:
            self.counters["tx_dropped"] += 1
            self.link_down(str(e))
        finally:
            for v in (*parts, *whole):
                v.release()
        return taken

    def _next_frame(self) -> bytes | None:
        if self._held is not None:
            frame, self._held = self._held, None
            return frame
        if not self.link_up:
            return None
        try:
            return self.backend.recv()
        except NetBackendDown as e:
            self.link_down(str(e))
            return None

    def _receive(self, memory: GuestRam) -> bool:
        try:
            return self._receive_batch(memory)
        finally:
            # The backend is watched exactly while no frame waits for receive buffers: a
            # held frame is retried when the driver adds buffers (its notification).
            self._watch(self._held is None)

    def _receive_batch(self, memory: GuestRam) -> bool:
        q = self.queues[RX]
        used = False
        limit = self.header_size + self.max_frame(_GUEST_GSO)
        added = 0 if self.backend.vnet_hdr else self.header_size
        for _ in range(BATCH_FRAMES):
            frame = self._next_frame()
            if frame is None:
                return used
            size = len(frame) + added
            if size > limit or size < self.header_size:
                self.counters["rx_dropped"] += 1
                continue
            result = self._deliver(memory, q, frame)
            if result is None:  # no room: keep the frame until the guest adds buffers
                self._held = frame
                if not _more_buffers_since(memory, q):
                    return used
                continue
            used = used or result
        # More may be waiting, in the backend's own buffer where the fd's readiness does
        # not show it: another turn, after the other queues' and devices'.
        if self._notify is not None:
            self._notify(RX)
        return used

    def _deliver(self, memory: GuestRam, q: Virtqueue, frame: bytes) -> bool | None:
        """Put ``frame`` (from the backend, after a header of its own or one made here) in
        receive buffers: True when done, False when it was dropped, None when there are not
        enough buffers yet (nothing was taken)."""
        mergeable = self.has_feature(spec.NET_F_MRG_RXBUF)
        hdr = self.header_size
        if self.backend.vnet_hdr:
            header, body = bytearray(frame[:hdr]), memoryview(frame)[hdr:]
        else:
            header, body = bytearray(hdr), memoryview(frame)
        total = hdr + len(body)
        chains: list[DescriptorChain] = []
        room = 0
        while room < total:
            chain = self._pop_checked(memory, q)
            if chain is False:
                if not chains:
                    continue
                break  # a malformed chain among the frame's: the frame is dropped
            if chain is None:
                q.next_avail = (q.next_avail - len(chains)) & 0xFFFF  # not taken after all
                return None
            assert isinstance(chain, DescriptorChain)
            chains.append(chain)
            room += chain.writable_bytes
            if not mergeable:
                break
        if room < total or any(c.writable_bytes < hdr for c in chains[:1]):
            self.counters["rx_dropped"] += 1
            for c in chains:
                q.add_used(memory, c.head, 0)
            return True
        if mergeable:
            _U16.pack_into(header, spec.NET_HDR_NUM_BUFFERS_OFFSET, len(chains))
        for head, length in _scatter(memory, chains, (memoryview(header), body)):
            q.add_used(memory, head, length)
        self.requests += 1
        self.counters["rx_frames"] += 1
        self.counters["rx_bytes"] += len(body)
        return True

    # -- state ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The queues are the transport's; here the link, the counters, the MAC and what the
        backend was (a restore reattaches the machine's own backend: the same TAP
        interface by name, or a fresh passt)."""
        return {**super().state(), "link_up": self.link_up, "counters": dict(self.counters),
                "mac": format_mac(self.mac), "backend": self.backend.describe()}

    def check_state(self, state: dict[str, Any]) -> None:
        """Refuse a saved device whose MAC or backend this one does not have: the restored
        guest keeps the MAC it read at boot, and its TAP interface is opened by name."""
        saved_mac = state.get("mac")
        if saved_mac is not None and saved_mac != format_mac(self.mac):
            raise DeviceStateError(
                f"virtio-net: mac: saved {saved_mac}, this machine's is {format_mac(self.mac)}; "
                f"restore with mac {saved_mac} (--mac {saved_mac}, or the same VM name)")
        saved = state.get("backend")
        if not isinstance(saved, dict):
            return
        now = self.backend.describe()
        for key in ("backend", "tap"):
            if saved.get(key) != now.get(key):
                raise DeviceStateError(
                    f"virtio-net: {key}: saved {saved.get(key)!r}, this machine has "
                    f"{now.get(key)!r}; restore with the network the snapshot was taken with "
                    f"(--net {'user' if saved.get('backend') == 'user' else 'tap=' + str(saved.get('tap'))})")

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.link_up = bool(state.get("link_up", True))
        self.counters.update({k: int(v) for k, v in state.get("counters", {}).items()})
        self._held = None  # a frame in hand when the guest was saved went with its backend


def _skip(parts: list[memoryview], count: int) -> list[memoryview]:
    """``parts`` without their first ``count`` bytes."""
    out = []
    for v in parts:
        if count >= len(v):
            count -= len(v)
            continue
        out.append(v[count:])
        count = 0
    return out


def _scatter(memory: GuestRam, chains: list[DescriptorChain],
             pieces: tuple[memoryview, ...]) -> list[tuple[int, int]]:
    """Write ``pieces`` in order across the chains' writable buffers, each piece straight
    from where it lies (no joined copy); each chain's head and the bytes written into it."""
    out = []
    index, at = 0, 0  # the piece being written, and how far
    for c in chains:
        written = 0
        for b in c.writable:
            address, room = b.address, b.length
            while room and index < len(pieces):
                piece = pieces[index]
                n = min(room, len(piece) - at)
                memory.write(address, piece[at:at + n])
                address += n
                room -= n
                written += n
                at += n
                if at == len(piece):
                    index, at = index + 1, 0
            if index == len(pieces):
                break
        out.append((c.head, written))
    return out


def _more_buffers_since(memory: GuestRam, q: Virtqueue) -> bool:
    """Ask the driver to notify when it adds any buffer after the ones there now (the
    device's avail_event at the driver's current index), then re-check: True when buffers
    came in meanwhile."""
    seen = q.avail_idx(memory)
    if q.event_idx:
        memory.write(q.used_ring + 4 + spec.USED_ELEM_SIZE * q.size, _U16.pack(seen))
    memory_fence()
    return q.avail_idx(memory) != seen
