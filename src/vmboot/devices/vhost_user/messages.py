"""vhost-user messages: a 12-byte header (request, flags, size) and a request's payload.

Reference: QEMU, docs/interop/vhost-user.rst ("Message types", "Front-end message types").
File descriptors travel beside a message as SCM_RIGHTS ancillary data.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

HEADER = struct.Struct("<III")
"""request, flags, size (of the payload that follows)."""
VERSION = 0x1
FLAG_VERSION_MASK = 0x3
FLAG_REPLY = 1 << 2
FLAG_NEED_REPLY = 1 << 3
MAX_REGIONS = 8
"""Memory regions one SET_MEM_TABLE may carry (without the CONFIGURE_MEM_SLOTS extension)."""
MAX_PAYLOAD = 4096
"""The largest reply payload the front end accepts from a back end."""

U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")
"""index, num."""
VRING_ADDR = struct.Struct("<IIQQQQ")
"""index, flags, descriptor table, used ring, available ring (front-end addresses), log."""
MEMORY_REGION = struct.Struct("<QQQQ")
"""guest-physical address, size, front-end virtual address, offset into the fd."""
MEM_TABLE_HEAD = struct.Struct("<II")
"""number of regions, padding."""
CONFIG_HEAD = struct.Struct("<III")
"""GET_CONFIG/SET_CONFIG: offset, size, flags (the config bytes follow)."""
VRING_NOFD = 1 << 8
"""In SET_VRING_KICK/CALL/ERR: no file descriptor accompanies the message."""
VRING_INDEX_MASK = 0xFF

F_PROTOCOL_FEATURES = 1 << 30
"""VHOST_USER_F_PROTOCOL_FEATURES: the back end speaks the protocol-feature extension."""


class Request(enum.IntEnum):
    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    GET_CONFIG = 24
    SET_CONFIG = 25


class ProtocolFeature(enum.IntFlag):
    MQ = 1 << 0
    LOG_SHMFD = 1 << 1
    RARP = 1 << 2
    REPLY_ACK = 1 << 3
    MTU = 1 << 4
    BACKEND_REQ = 1 << 5
    CROSS_ENDIAN = 1 << 6
    CRYPTO_SESSION = 1 << 7
    PAGEFAULT = 1 << 8
    CONFIG = 1 << 9


REPLIES = frozenset({Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES, Request.GET_VRING_BASE,
                     Request.GET_QUEUE_NUM, Request.GET_CONFIG})
"""Requests the back end always answers."""


@dataclass(frozen=True, slots=True)
class MemoryRegion:
    """One run of guest RAM as the back end maps it: ``mmap(fd, size, offset)``."""

    guest_address: int
    size: int
    user_address: int
    """Where the front end has it mapped: ring addresses are given in this address space."""
    offset: int

    def pack(self) -> bytes:
        return MEMORY_REGION.pack(self.guest_address, self.size, self.user_address, self.offset)


def header(request: Request, payload_size: int, need_reply: bool = False) -> bytes:
    flags = VERSION | (FLAG_NEED_REPLY if need_reply else 0)
    return HEADER.pack(int(request), flags, payload_size)


def mem_table(regions: list[MemoryRegion]) -> bytes:
    """The SET_MEM_TABLE payload: the count, padding, then eight region slots."""
    body = MEM_TABLE_HEAD.pack(len(regions), 0) + b"".join(r.pack() for r in regions)
    return body + bytes(MEMORY_REGION.size * (MAX_REGIONS - len(regions)))
