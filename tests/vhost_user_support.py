"""The driver side of a virtio-fs queue in shared guest RAM, for tests that talk to the
real virtiofsd with no guest (as a guest's virtio-fs driver would). No pytest here: a test
runs it in a child process as another user too."""

from __future__ import annotations

import os
import select
import struct

from vmboot.devices.vhost_user import messages as m
from vmboot.devices.vhost_user.frontend import VhostUserFrontend, VringAddresses
from vmboot.hv.guest_memory import GuestMemory

VIRTIO_F_VERSION_1 = 1 << 32
QUEUE_SIZE = 16
REQUEST_QUEUE = 1
DESC_GPA, AVAIL_GPA, USED_GPA = 0x100000, 0x101000, 0x102000
REQUEST_GPA, REPLY_GPA = 0x110000, 0x120000
VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE = 1, 2
FUSE_LOOKUP, FUSE_INIT = 1, 26
IN_HEADER = struct.Struct("<IIQQIIII")
OUT_HEADER = struct.Struct("<IiQ")
ENTRY_OUT = struct.Struct("<QQQQII")  # nodeid, generation, entry/attr valid, nsecs
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # ino, size, blocks, atime, mtime, ctime, ...


class QueueDriver:
    """The driver side of one split virtqueue, in guest RAM, as a guest kernel would run it."""

    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory
        self.avail_idx = 0
        self.used_seen = 0
        self.kick = os.eventfd(0, os.EFD_CLOEXEC)
        self.call = os.eventfd(0, os.EFD_CLOEXEC)

    def addresses(self) -> VringAddresses:
        base = self.memory.host_address
        return VringAddresses(base + self.memory.offset_of(DESC_GPA, 1),
                              base + self.memory.offset_of(USED_GPA, 1),
                              base + self.memory.offset_of(AVAIL_GPA, 1))

    def request(self, payload: bytes, reply_size: int = 4096) -> bytes:
        self.memory.write(REQUEST_GPA, payload)
        self.memory.write(DESC_GPA, struct.pack("<QIHH", REQUEST_GPA, len(payload), VIRTQ_DESC_F_NEXT, 1))
        self.memory.write(DESC_GPA + 16, struct.pack("<QIHH", REPLY_GPA, reply_size, VIRTQ_DESC_F_WRITE, 0))
        slot = self.avail_idx % QUEUE_SIZE
        self.memory.write(AVAIL_GPA + 4 + 2 * slot, struct.pack("<H", 0))
        self.avail_idx += 1
        self.memory.write(AVAIL_GPA, struct.pack("<HH", 0, self.avail_idx & 0xFFFF))
        os.eventfd_write(self.kick, 1)
        # As a guest driver does on an interrupt: look at the used ring; a notification may
        # also come for other reasons (the back end signals once when a queue starts).
        for _ in range(100):
            used_idx = struct.unpack("<H", self.memory.read(USED_GPA + 2, 2))[0]
            if used_idx != self.used_seen & 0xFFFF:
                break
            ready, _, _ = select.select([self.call], [], [], 0.1)
            if ready:
                os.eventfd_read(self.call)
        assert used_idx == (self.used_seen + 1) & 0xFFFF, "virtiofsd did not answer within 10 s"
        elem = USED_GPA + 4 + 8 * (self.used_seen % QUEUE_SIZE)
        elem_id, length = struct.unpack("<II", self.memory.read(elem, 8))
        self.used_seen += 1
        assert elem_id == 0
        return self.memory.read(REPLY_GPA, length)

    def close(self) -> None:
        os.close(self.kick)
        os.close(self.call)


def fuse_request(opcode: int, unique: int, nodeid: int, body: bytes) -> bytes:
    return IN_HEADER.pack(IN_HEADER.size + len(body), opcode, unique, nodeid, 0, 0, 1, 0) + body


def start_queue(front: VhostUserFrontend, mem: GuestMemory, driver: QueueDriver) -> None:
    """Negotiate, hand over guest RAM and the request queue, as the device does."""
    features = front.negotiate(VIRTIO_F_VERSION_1, m.ProtocolFeature.REPLY_ACK)
    assert features & VIRTIO_F_VERSION_1
    front.set_features(features)
    regions = [m.MemoryRegion(r.gpa, r.size, mem.host_address + r.offset, r.offset)
               for r in mem.regions]
    front.set_mem_table(regions, [mem.fd] * len(regions))
    front.set_vring(REQUEST_QUEUE, QUEUE_SIZE, driver.addresses(), driver.kick, driver.call)
    front.enable_vring(REQUEST_QUEUE)
