"""The virtio-vsock wire format (virtio 1.2 section 5.10): the packet header, its operations
and flags, and the event queue's one event, each defined once.

Every packet on the rx and tx queues starts with a 44-byte ``struct virtio_vsock_hdr``
(all fields little-endian); an ``RW`` packet's payload (``len`` bytes) follows it.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from vmboot.devices.virtio.vsock_defaults import DEFAULT_GUEST_CID as DEFAULT_GUEST_CID

HOST_CID = 2
"""VMADDR_CID_HOST: the address the guest uses for the host."""
MIN_GUEST_CID = 3
"""CIDs 0-2 are reserved (hypervisor, local, host); 0xFFFFFFFF is VMADDR_CID_ANY."""
MAX_GUEST_CID = 0xFFFFFFFE

F_STREAM = 0
"""VIRTIO_VSOCK_F_STREAM: stream sockets (the only kind vmboot offers)."""

RX_QUEUE, TX_QUEUE, EVENT_QUEUE = 0, 1, 2

MAX_PAYLOAD = 64 * 1024
"""VIRTIO_VSOCK_MAX_PKT_BUF_SIZE: the largest payload Linux sends or accepts in one packet."""

EVENT_TRANSPORT_RESET = 0
"""VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: every connection is gone; re-read the guest CID."""
EVENT = struct.Struct("<I")

HEADER = struct.Struct("<QQIIIHHIII")
HEADER_SIZE = HEADER.size  # 44


class PacketType(enum.IntEnum):
    STREAM = 1
    SEQPACKET = 2


class Op(enum.IntEnum):
    INVALID = 0
    REQUEST = 1
    RESPONSE = 2
    RST = 3
    SHUTDOWN = 4
    RW = 5
    CREDIT_UPDATE = 6
    CREDIT_REQUEST = 7


SHUTDOWN_RCV = 1
"""The sender will receive no more data."""
SHUTDOWN_SEND = 2
"""The sender will send no more data."""
SHUTDOWN_BOTH = SHUTDOWN_RCV | SHUTDOWN_SEND

OPS = frozenset(int(op) for op in Op if op is not Op.INVALID)


class MalformedPacket(ValueError):
    """A tx chain that is not a vsock packet (counted and dropped by the device)."""


@dataclass(frozen=True, slots=True)
class Header:
    src_cid: int
    dst_cid: int
    src_port: int
    dst_port: int
    len: int
    type: int
    op: int
    flags: int
    buf_alloc: int
    fwd_cnt: int

    def pack(self) -> bytes:
        return HEADER.pack(self.src_cid, self.dst_cid, self.src_port, self.dst_port, self.len,
                           self.type, self.op, self.flags, self.buf_alloc, self.fwd_cnt)

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> Header:
        if len(data) < HEADER_SIZE:
            raise MalformedPacket(f"vsock packet: {len(data)} bytes, shorter than the "
                                  f"{HEADER_SIZE}-byte header")
        return cls(*HEADER.unpack_from(data))


def parse_packet(data: bytes | bytearray | memoryview) -> tuple[Header, bytes]:
    """A tx chain's bytes as (header, payload); :class:`MalformedPacket` if they are not one."""
    header = Header.unpack(data)
    if header.op not in OPS:
        raise MalformedPacket(f"vsock packet: op {header.op} is not one of 1..{max(OPS)}")
    room = len(data) - HEADER_SIZE
    if header.len > room:
        raise MalformedPacket(f"vsock packet: len {header.len} is beyond the {room} payload "
                              "bytes the buffer holds")
    if header.len > MAX_PAYLOAD:
        raise MalformedPacket(f"vsock packet: len {header.len} is over the {MAX_PAYLOAD}-byte "
                              "limit")
    if header.op != Op.RW and header.len:
        raise MalformedPacket(f"vsock packet: op {Op(header.op).name} with a {header.len}-byte "
                              "payload (only RW carries data)")
    return header, bytes(data[HEADER_SIZE:HEADER_SIZE + header.len])
