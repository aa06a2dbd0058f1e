"""A guest vsock driver in miniature, over a virtio-vsock device on a MemoryVM: it keeps
rx and event buffers posted, sends packets on the tx queue and reads what the device put
in the rx queue (as Linux's virtio_transport does, two descriptors per rx buffer)."""

from __future__ import annotations

from dataclasses import dataclass, field

from virtio_support import DATA, Rig, rig
from vmboot.devices.virtio import vsock_packet as vp
from vmboot.devices.virtio.driver import notify
from vmboot.devices.virtio.vsock import VsockDevice
from vmboot.devices.virtio.vsock_host import VsockConfig

QUEUE_SIZE = 64
RX_SLOTS = QUEUE_SIZE // 2
RX_BUF = 4096
RX_BASE = DATA
RX_STRIDE = 0x1100
TX_BASE = DATA + 0x40000
TX_STRIDE = 0x11000
TX_SLOTS = 16
EVENT_BASE = DATA + 0x200000
EVENT_SLOTS = 4
GUEST_CID = 3
GUEST_BUF_ALLOC = 256 * 1024


@dataclass
class Packet:
    header: vp.Header
    payload: bytes


@dataclass
class Guest:
    r: Rig
    device: VsockDevice
    tx_slot: int = 0
    received: list[Packet] = field(default_factory=list)
    events: list[int] = field(default_factory=list)

    def post_rx(self, slot: int) -> None:
        q = self.r.queues[vp.RX_QUEUE]
        q.next_free = 2 * slot
        base = RX_BASE + slot * RX_STRIDE
        q.add_chain([], [(base, vp.HEADER_SIZE), (base + 0x40, RX_BUF)])

    def post_event(self, slot: int) -> None:
        q = self.r.queues[vp.EVENT_QUEUE]
        q.next_free = slot
        q.add_chain([], [(EVENT_BASE + slot * 0x10, vp.EVENT.size)])

    def send_raw(self, data: bytes, readable_len: int | None = None) -> None:
        q = self.r.queues[vp.TX_QUEUE]
        slot = self.tx_slot % TX_SLOTS
        self.tx_slot += 1
        at = TX_BASE + slot * TX_STRIDE
        self.r.vm.memory.write(at, data)
        q.next_free = slot
        q.add_chain([(at, len(data) if readable_len is None else readable_len)], [])
        notify(self.r.transport, vp.TX_QUEUE)
        self.pump()

    def send(self, op: vp.Op, src_port: int, dst_port: int, payload: bytes = b"", flags: int = 0,
             buf_alloc: int = GUEST_BUF_ALLOC, fwd_cnt: int = 0,
             packet_type: int = vp.PacketType.STREAM, src_cid: int | None = None) -> None:
        cid = self.device.guest_cid if src_cid is None else src_cid
        header = vp.Header(cid, vp.HOST_CID, src_port, dst_port, len(payload), packet_type,
                           op, flags, buf_alloc, fwd_cnt)
        self.send_raw(header.pack() + payload)

    def pump(self) -> None:
        """Serve the host sockets and every kicked queue until nothing moves; collect rx."""
        t = self.r.transport
        for _ in range(1000):
            self.device.poll_host()
            before = len(self.received) + len(self.events)
            for i in (vp.RX_QUEUE, vp.EVENT_QUEUE):
                t.on_queue_event(i)
            self._collect()
            if len(self.received) + len(self.events) == before:
                return

    def _collect(self) -> None:
        memory = self.r.vm.memory
        for head, length in self.r.queues[vp.RX_QUEUE].take_used():
            slot = head // 2
            base = RX_BASE + slot * RX_STRIDE
            header = vp.Header.unpack(memory.read(base, vp.HEADER_SIZE))
            assert length == vp.HEADER_SIZE + header.len
            self.received.append(Packet(header, memory.read(base + 0x40, header.len)))
            self.post_rx(slot)
        for head, length in self.r.queues[vp.EVENT_QUEUE].take_used():
            assert length == vp.EVENT.size
            self.events.append(vp.EVENT.unpack(memory.read(EVENT_BASE + head * 0x10, 4))[0])
            self.post_event(head)

    def take(self) -> list[Packet]:
        """What the device sent since the last call (after serving the host sockets)."""
        self.pump()
        out, self.received = self.received, []
        return out


def guest(config: VsockConfig | None = None) -> Guest:
    device = VsockDevice(config)
    g = Guest(rig(device, queue_size=QUEUE_SIZE), device)
    for slot in range(RX_SLOTS):
        g.post_rx(slot)
    for slot in range(EVENT_SLOTS):
        g.post_event(slot)
    notify(g.r.transport, vp.RX_QUEUE)
    notify(g.r.transport, vp.EVENT_QUEUE)
    return g
