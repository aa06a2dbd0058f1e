"""The front end of a vhost-user device: negotiation, guest RAM, and queues over a UNIX socket.

The back end maps guest RAM from the memfds sent with SET_MEM_TABLE, reads queue
notifications from the *kick* eventfds (KVM ioeventfds, so a guest's notification never
reaches vmboot) and signals completions on the *call* eventfds (KVM irqfds, so an interrupt
never passes through vmboot either). vmboot's part is the set-up, and the tear-down with
GET_VRING_BASE, which also tells where each queue stopped (for a snapshot or a restart).
"""

from __future__ import annotations

import array
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from vmboot.devices.vhost_user import messages as m
from vmboot.errors import HypervisorError

log = logging.getLogger("vmboot.vhost_user")


class VhostUserError(HypervisorError):
    """The back end broke the protocol, refused a request, or went away."""


@dataclass(frozen=True, slots=True)
class VringAddresses:
    """A split virtqueue's three parts as front-end virtual addresses."""

    descriptors: int
    used: int
    available: int


class VhostUserFrontend:
    """One connection to a vhost-user back end (one device)."""

    def __init__(self, sock: socket.socket, name: str = "vhost-user") -> None:
        self.sock = sock
        self.name = name
        self.features = 0
        """Device features the back end offers (GET_FEATURES)."""
        self.protocol_features = m.ProtocolFeature(0)
        """Protocol features both sides use."""
        self.acked_features = 0

    @classmethod
    def connect(cls, path: str, name: str = "vhost-user", timeout: float = 10.0) -> VhostUserFrontend:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise VhostUserError(f"{name}: cannot connect to the back end at {path}: "
                                 f"{exc.strerror or exc}") from None
        return cls(sock, name)

    def close(self) -> None:
        self.sock.close()

    # -- wire ----------------------------------------------------------------------------------
    def _send(self, request: m.Request, payload: bytes = b"", fds: Sequence[int] = (),
              need_reply: bool = False) -> None:
        data = m.header(request, len(payload), need_reply) + payload
        ancillary = []
        if fds:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        try:
            sent = self.sock.sendmsg([data], ancillary)
        except OSError as exc:
            raise VhostUserError(f"{self.name}: sending {request.name} failed: "
                                 f"{exc.strerror or exc} (did the back end exit?)") from None
        if sent != len(data):
            raise VhostUserError(f"{self.name}: {request.name}: sent {sent} of {len(data)} bytes")

    def _receive_exactly(self, n: int, what: str) -> bytes:
        out = bytearray()
        while len(out) < n:
            try:
                chunk = self.sock.recv(n - len(out))
            except TimeoutError:
                raise VhostUserError(f"{self.name}: no reply to {what} from the back end") from None
            except OSError as exc:
                raise VhostUserError(f"{self.name}: reading the reply to {what} failed: "
                                     f"{exc.strerror or exc}") from None
            if not chunk:
                raise VhostUserError(f"{self.name}: the back end closed the connection while "
                                     f"answering {what}")
            out += chunk
        return bytes(out)

    def _reply(self, request: m.Request) -> bytes:
        raw = self._receive_exactly(m.HEADER.size, request.name)
        code, flags, size = m.HEADER.unpack(raw)
        if code != request or not flags & m.FLAG_REPLY or (flags & m.FLAG_VERSION_MASK) != m.VERSION:
            raise VhostUserError(f"{self.name}: expected the reply to {request.name} ({int(request)}), "
                                 f"got request {code} with flags {flags:#x}")
        if size > m.MAX_PAYLOAD:
            raise VhostUserError(f"{self.name}: reply to {request.name} claims {size} bytes, more "
                                 f"than the {m.MAX_PAYLOAD} accepted")
        return self._receive_exactly(size, request.name)

    def _call(self, request: m.Request, payload: bytes = b"", fds: Sequence[int] = ()) -> bytes | None:
        """Send; read the reply of requests that have one, or the REPLY_ACK status if negotiated."""
        ack = request not in m.REPLIES and bool(self.protocol_features & m.ProtocolFeature.REPLY_ACK)
        self._send(request, payload, fds, need_reply=ack)
        if request in m.REPLIES:
            return self._reply(request)
        if ack:
            body = self._reply(request)
            status = m.U64.unpack(body)[0] if len(body) == m.U64.size else None
            if status != 0:
                raise VhostUserError(f"{self.name}: the back end refused {request.name} "
                                     f"(status {status})")
        return None

    def _u64(self, request: m.Request) -> int:
        body = self._call(request)
        if body is None or len(body) != m.U64.size:
            raise VhostUserError(f"{self.name}: reply to {request.name} is not one 64-bit value")
        value: int = m.U64.unpack(body)[0]
        return value

    # -- requests ------------------------------------------------------------------------------
    def negotiate(self, wanted_features: int, wanted_protocol: m.ProtocolFeature) -> int:
        """SET_OWNER, then features: returns the device features both sides use.

        ``wanted_features`` are the device (virtio) feature bits the front end can drive;
        the result is their intersection with what the back end offers.
        """
        self._call(m.Request.SET_OWNER)
        self.features = self._u64(m.Request.GET_FEATURES)
        if self.features & m.F_PROTOCOL_FEATURES:
            offered = m.ProtocolFeature(self._u64(m.Request.GET_PROTOCOL_FEATURES))
            self.protocol_features = offered & wanted_protocol
            self._call(m.Request.SET_PROTOCOL_FEATURES, m.U64.pack(int(self.protocol_features)))
        return self.features & wanted_features

    def set_features(self, features: int) -> None:
        """SET_FEATURES: the device features the driver accepted (plus PROTOCOL_FEATURES if offered)."""
        self.acked_features = features | (self.features & m.F_PROTOCOL_FEATURES)
        self._call(m.Request.SET_FEATURES, m.U64.pack(self.acked_features))

    def set_mem_table(self, regions: Sequence[m.MemoryRegion], fds: Sequence[int]) -> None:
        if not 0 < len(regions) <= m.MAX_REGIONS or len(fds) != len(regions):
            raise VhostUserError(f"{self.name}: SET_MEM_TABLE takes 1-{m.MAX_REGIONS} regions, each "
                                 f"with its fd; got {len(regions)} regions and {len(fds)} fds")
        self._call(m.Request.SET_MEM_TABLE, m.mem_table(list(regions)), fds)

    def set_vring(self, index: int, size: int, addresses: VringAddresses, kick_fd: int,
                  call_fd: int, base: int = 0) -> None:
        """NUM, BASE, ADDR, CALL, KICK for one queue (KICK last: it starts the back end's work)."""
        self._call(m.Request.SET_VRING_NUM, m.VRING_STATE.pack(index, size))
        self._call(m.Request.SET_VRING_BASE, m.VRING_STATE.pack(index, base))
        self._call(m.Request.SET_VRING_ADDR, m.VRING_ADDR.pack(
            index, 0, addresses.descriptors, addresses.used, addresses.available, 0))
        self._call(m.Request.SET_VRING_CALL, m.U64.pack(index & m.VRING_INDEX_MASK), [call_fd])
        self._call(m.Request.SET_VRING_KICK, m.U64.pack(index & m.VRING_INDEX_MASK), [kick_fd])

    def enable_vring(self, index: int, enabled: bool = True) -> None:
        """SET_VRING_ENABLE (only with PROTOCOL_FEATURES: rings then start disabled)."""
        if self.acked_features & m.F_PROTOCOL_FEATURES:
            self._call(m.Request.SET_VRING_ENABLE, m.VRING_STATE.pack(index, int(enabled)))

    def get_vring_base(self, index: int) -> int:
        """Stop queue ``index``; the back end answers with the next available index it would read."""
        body = self._call(m.Request.GET_VRING_BASE, m.VRING_STATE.pack(index, 0))
        if body is None or len(body) != m.VRING_STATE.size:
            raise VhostUserError(f"{self.name}: reply to GET_VRING_BASE is not a vring state")
        got_index, base = m.VRING_STATE.unpack(body)
        if got_index != index:
            raise VhostUserError(f"{self.name}: GET_VRING_BASE for queue {index} answered queue {got_index}")
        value: int = base
        return value

    def get_config(self, offset: int, size: int) -> bytes:
        """GET_CONFIG (needs the CONFIG protocol feature): bytes of the device's config space."""
        payload = m.CONFIG_HEAD.pack(offset, size, 0) + bytes(size)
        body = self._call(m.Request.GET_CONFIG, payload)
        head = m.CONFIG_HEAD.size
        if body is None or len(body) < head + size:
            raise VhostUserError(f"{self.name}: short reply to GET_CONFIG")
        return body[head:head + size]
