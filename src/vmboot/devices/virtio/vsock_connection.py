"""One virtio-vsock connection as the device tracks it: its ports, its host stream, and
the credit counters of both directions (virtio 1.2 section 5.10.6.3)."""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass, field

U32_MASK = 0xFFFFFFFF
"""buf_alloc, fwd_cnt and tx_cnt are le32 counters that wrap."""


class ConnState(enum.Enum):
    CONNECTING = "connecting"
    """The host asked (REQUEST sent); waiting for the guest's RESPONSE."""
    ESTABLISHED = "established"


@dataclass(eq=False)
class Connection:
    """One stream: ``local_port`` on the host (CID 2), ``peer_port`` in the guest."""

    local_port: int
    peer_port: int
    sock: socket.socket
    state: ConnState
    peer_buf_alloc: int = 0
    peer_fwd_cnt: int = 0
    tx_cnt: int = 0
    """Payload bytes sent to the guest."""
    fwd_cnt: int = 0
    """Payload bytes from the guest handed to the host peer."""
    last_fwd_cnt_sent: int = 0
    out: bytearray = field(default_factory=bytearray)
    """Bytes for the host peer that it has not taken yet."""
    uncounted: int = 0
    """Leading bytes of ``out`` that are not guest payload (the ``OK`` line)."""
    peer_shutdown: int = 0
    host_readable: bool = False
    host_eof: bool = False
    host_write_shut: bool = False
    events: int = 0
    """What the I/O thread watches this socket for (0: not registered)."""
    deadline: float | None = None
    """While CONNECTING: the monotonic time by which the guest must answer."""

    @property
    def key(self) -> tuple[int, int]:
        return self.local_port, self.peer_port

    def peer_credit(self) -> int:
        return self.peer_buf_alloc - ((self.tx_cnt - self.peer_fwd_cnt) & U32_MASK)

    def buffered(self) -> int:
        return len(self.out) - self.uncounted


@dataclass(eq=False)
class PendingStream:
    """A host stream that has not sent its ``CONNECT <port>`` line yet."""

    sock: socket.socket
    connect_timeout: float
    """Seconds the guest will have to answer the request this stream asks for."""
    deadline: float
    """The monotonic time by which the whole ``CONNECT`` line must have come (then the
    stream is closed: a client that never sends it does not hold a pending slot)."""
    events: int = 0
