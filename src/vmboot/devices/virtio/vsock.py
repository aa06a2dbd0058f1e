"""virtio-vsock (virtio 1.2 section 5.10): stream sockets between the guest and the host.

Queues: 0 rx (packets to the guest), 1 tx (packets from the guest), 2 event. The guest
CID is the configuration space (one le64). Each connection is a host stream socket:

- guest -> host: the guest's ``REQUEST`` to host port ``P`` connects to an in-process
  listener (:meth:`VsockDevice.listen`) or to the AF_UNIX socket ``<path>_<P>``
  (Firecracker's hybrid vsock, :mod:`.vsock_host`); ``RESPONSE`` or ``RST`` answers;
- host -> guest: a stream on the hybrid socket ``<path>`` (or :meth:`VsockDevice.connect`)
  writes ``CONNECT <port>\\n``; the device sends ``REQUEST``; the guest's ``RESPONSE``
  makes the device write ``OK <hostport>\\n``, its ``RST`` closes the stream. A guest that
  does not answer within the connect timeout (:data:`.vsock_host.CONNECT_TIMEOUT`) gets
  ``RST`` and the stream is closed: a timer on the I/O thread (:mod:`.deadline_timer`)
  ends the waits. A host stream that has not sent its whole ``CONNECT`` line within the
  same timeout is closed too (it would otherwise hold one of the
  :data:`MAX_PENDING_STREAMS` slots for as long as its client keeps it open).

Flow control is credit-based both ways: the device accepts at most :data:`BUF_ALLOC`
bytes per connection that the host peer has not read yet, and advertises ``fwd_cnt`` (the
bytes it handed to the host); it reads from the host only as much as the guest's
``buf_alloc - (tx_cnt - fwd_cnt)`` allows. A host peer that stops reading therefore
stalls the guest's sender on credit; nothing is dropped.

The host sockets are served on the virtio I/O thread (:meth:`attach_io_thread`); a socket
becoming readable only marks its connection and kicks the rx queue, so the guest not
refilling rx buffers never blocks the loop. Without an I/O thread (tests),
:meth:`poll_host` serves every socket once.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from vmboot.devices.socket_path import listen_unix
from vmboot.devices.virtio import spec
from vmboot.devices.virtio import vsock_packet as vp
from vmboot.devices.virtio.deadline_timer import DeadlineTimer
from vmboot.devices.virtio.device import VirtioDevice
from vmboot.devices.virtio.io_thread import IoThread, QueueServe
from vmboot.devices.virtio.queue import DescriptorChain, gather, scatter
from vmboot.devices.virtio.signal_delay import SignalDelay
from vmboot.devices.virtio.vsock_connection import U32_MASK, Connection, ConnState, PendingStream
from vmboot.devices.virtio.vsock_host import (
    MAX_COMMAND,
    PORT_LIMIT,
    VsockConfig,
    VsockError,
    VsockListener,
    VsockRefused,
    VsockTimeout,
    check_connect_timeout,
    connect_timed_out,
    ok_line,
    parse_connect,
    port_socket_path,
    read_ok,
)

log = logging.getLogger("vmboot.devices.virtio")

QUEUE_SIZE = 256
BUF_ALLOC = 256 * 1024
"""Bytes per connection the device buffers for a host peer (the guest's credit)."""
CREDIT_UPDATE_THRESHOLD = BUF_ALLOC - vp.MAX_PAYLOAD
"""Forwarded bytes the guest has not heard of after which the device tells it of its new
credit unasked. Linux's rule for its own receive side: the update goes when the sender may
have less than one full packet (:data:`.vsock_packet.MAX_PAYLOAD`) of credit left, never
sooner. Each update costs the guest an interrupt, a worker wake-up and an rx buffer
refill, so one per quarter of :data:`BUF_ALLOC` made it pay three times as often; the
guest still has a packet's worth to send while the update travels, so it does not stall."""
TX_SIGNAL_DELAY = 0.05
"""Seconds the interrupt for used tx buffers may wait for company (:mod:`.signal_delay`).
Linux's driver only frees the packets it sent when it gets it, in a worker that then also
runs its send worker: two wake-ups per interrupt, per packet when each one is signalled.
Any rx interrupt (a credit update, a reply) serves the tx queue too and usually comes
first; the delay only bounds how long the guest holds the copies of what it sent."""
TX_SIGNAL_RING_SHARE = 4
"""The interrupt never waits once this fraction (1/N) of the tx ring is used and not
signalled: Linux puts a packet in one ring entry (an indirect table) or two, so its driver
always has half its ring free and never waits on a full ring for the delay, whatever ring
size it chose."""
MAX_PENDING_CONTROL = 1024
"""Control packets (RST, RESPONSE...) waiting for rx buffers; more are dropped, counted."""
MAX_CONNECTIONS = 1024
"""Open connections per device; more requests are refused (RST, or the host stream closed)."""
MAX_PENDING_STREAMS = 64
"""Host streams that have not sent their CONNECT line yet; more are closed at once, and each
is closed when the connect timeout passes without the line."""
FIRST_HOST_PORT = 1 << 30
"""Host ports for connections the host starts are allocated from here up."""
RECV_CHUNK = vp.MAX_PAYLOAD
HYBRID_BACKLOG = 64
"""Host streams the hybrid socket queues before the I/O thread accepts them."""
CONNECT_GRACE = 1.0
"""Seconds :meth:`VsockDevice.connect` waits past its timeout for the device to give up."""


@dataclass(frozen=True)
class _Control:
    op: vp.Op
    local_port: int
    peer_port: int
    flags: int = 0


class VsockDevice(VirtioDevice):
    device_id: ClassVar[spec.DeviceId] = spec.DeviceId.VSOCK
    name: ClassVar[str] = "vsock"

    def __init__(self, config: VsockConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        config = config if config is not None else VsockConfig()
        config.validate()
        super().__init__((QUEUE_SIZE,) * 3, 1 << vp.F_STREAM)
        self.config = config
        self.guest_cid = config.cid
        self._clock = clock
        self._lock = threading.RLock()
        self._io: IoThread | None = None
        self._timer: DeadlineTimer | None = None
        self._server: socket.socket | None = None
        self._conns: dict[tuple[int, int], Connection] = {}
        self._pending_streams: dict[int, PendingStream] = {}
        self._listeners: dict[int, VsockListener] = {}
        self._control: collections.deque[_Control] = collections.deque()
        self._readable: dict[tuple[int, int], None] = {}
        self._held_rx: DescriptorChain | None = None
        self._tx_signal: SignalDelay | None = None
        """Made with the I/O thread (which serves its timer); without one, every used tx
        buffer is signalled at once."""
        self._reset_event_pending = False
        self._next_host_port = FIRST_HOST_PORT
        self.malformed = 0
        """tx chains that were not vsock packets (short header, bad op, len past the buffer)."""
        self.misaddressed = 0
        """Packets not from the guest's CID to the host's (dropped)."""
        self.resets_sent = 0
        self.control_dropped = 0
        self.connections_opened = 0
        self.connect_timeouts = 0
        """Connections the host started that the guest did not answer in time."""
        self.handshake_timeouts = 0
        """Host streams closed for not sending their ``CONNECT`` line in time."""
        self.reset_drops = 0
        """Connections open when the driver reset the device (a rebooting guest does): their
        host streams see EOF, and bytes the guest's kernel still held for them never came."""
        self.bytes_to_host = 0
        self.bytes_to_guest = 0

    # -- configuration ----------------------------------------------------------------------
    def config_bytes(self) -> bytes:
        return self.guest_cid.to_bytes(8, "little")

    def describe(self) -> dict[str, Any]:
        return {"guest_cid": self.guest_cid, "uds_path": self.config.uds_path,
                "connections": len(self._conns), "connections_opened": self.connections_opened,
                "connect_timeouts": self.connect_timeouts,
                "handshake_timeouts": self.handshake_timeouts, "reset_drops": self.reset_drops,
                "malformed": self.malformed, "resets_sent": self.resets_sent,
                "bytes_to_host": self.bytes_to_host, "bytes_to_guest": self.bytes_to_guest}

    # -- the I/O thread and the hybrid socket -----------------------------------------------
    def attach_io_thread(self, io: IoThread, serve: QueueServe | None = None) -> None:
        """Serve the host sockets on ``io``, registering each as it comes and goes; create
        the hybrid socket ``<path>`` now. A ready socket only marks its connection and
        kicks the rx queue; ``serve`` runs the tx queue when the delay of its held-back
        interrupt is over (:data:`TX_SIGNAL_DELAY`)."""
        with self._lock:
            self._io = io
            path = self.config.uds_path
            if path is not None and self._server is None:
                server = listen_unix(path, "vsock path", HYBRID_BACKLOG)
                server.setblocking(False)
                self._server = server
                io.add(server.fileno(), self._on_server)
            if self._timer is None:
                self._timer = DeadlineTimer()
                io.add(self._timer.fd, self._on_timer)
                self._arm_timer()
            if serve is not None and self._tx_signal is None:
                tx_signal = SignalDelay(TX_SIGNAL_DELAY, QUEUE_SIZE // TX_SIGNAL_RING_SHARE)
                self._tx_signal = tx_signal
                io.add(tx_signal.fd, lambda: self._on_tx_signal(tx_signal, serve))
            for c in self._conns.values():
                self._watch(c)
            for p in self._pending_streams.values():
                self._watch_pending(p)

    @staticmethod
    def _on_tx_signal(tx_signal: SignalDelay, serve: QueueServe) -> None:
        """I/O thread: the tx interrupt's delay is over: process the tx queue, which
        signals what waited (unless the driver saw it meanwhile)."""
        if not serve(vp.TX_QUEUE):
            tx_signal.reset()  # the device is not running: nothing to signal

    def _set_events(self, sock: socket.socket, old: int, new: int, callback: Any) -> int:
        io = self._io
        if io is None:
            return 0
        if old == new:
            return new
        if old and new:
            io.modify(sock.fileno(), callback, new)
        elif new:
            io.add(sock.fileno(), callback, new)
        else:
            with contextlib.suppress(KeyError):  # the I/O thread already stopped
                io.remove(sock.fileno())
        return new

    def _watch(self, c: Connection) -> None:
        events = 0
        if c.state is ConnState.ESTABLISHED and not c.host_readable and not c.host_eof:
            events |= selectors.EVENT_READ
        if c.out:
            events |= selectors.EVENT_WRITE
        c.events = self._set_events(c.sock, c.events, events, lambda: self._on_host(c))

    def _watch_pending(self, p: PendingStream) -> None:
        p.events = self._set_events(p.sock, p.events, selectors.EVENT_READ,
                                    lambda: self._on_pending(p))

    def _on_server(self) -> None:
        server = self._server
        if server is None:
            return
        while True:
            try:
                sock, _ = server.accept()
            except BlockingIOError:
                return
            except OSError as e:
                log.warning("vsock: accept on the hybrid socket failed: %s", e)
                return
            self.adopt_host_stream(sock)

    def adopt_host_stream(self, sock: socket.socket, connect_timeout: float | None = None) -> None:
        """A host stream that will send ``CONNECT <port>\\n`` (any thread). The guest then
        has ``connect_timeout`` seconds (default: the configuration's) to accept."""
        wait = self.config.connect_timeout if connect_timeout is None else connect_timeout
        sock.setblocking(False)
        with self._lock:
            if len(self._pending_streams) >= MAX_PENDING_STREAMS:
                log.warning("vsock: %d host streams have not sent CONNECT yet: one more closed",
                            MAX_PENDING_STREAMS)
                sock.close()
                return
            p = PendingStream(sock, wait, deadline=self._clock() + wait)
            self._pending_streams[sock.fileno()] = p
            self._watch_pending(p)
            self._arm_timer()
        if self._io is None:
            self._on_pending(p)

    def _drop_pending(self, p: PendingStream) -> None:
        p.events = self._set_events(p.sock, p.events, 0, None)
        self._pending_streams.pop(p.sock.fileno(), None)

    def _on_pending(self, p: PendingStream) -> None:
        with self._lock:
            if p.sock.fileno() not in self._pending_streams:
                return
            try:
                head = p.sock.recv(MAX_COMMAND, socket.MSG_PEEK)
            except BlockingIOError:
                return
            except OSError:
                head = b""
            end = head.find(b"\n")
            if end < 0 and head and len(head) < MAX_COMMAND:
                return  # the rest of the line is still coming
            self._drop_pending(p)
            try:
                if end < 0:
                    raise ValueError(f"no 'CONNECT <port>' line: {head!r}")
                p.sock.recv(end + 1)
                port = parse_connect(head[:end])
            except (ValueError, OSError) as e:
                log.info("vsock: host stream closed: %s", e)
                p.sock.close()
                return
            if self.memory is None or len(self._conns) >= MAX_CONNECTIONS:
                p.sock.close()  # the guest driver is not up, or too many connections: refuse
                return
            local = self._allocate_host_port(port)
            c = Connection(local, port, p.sock, ConnState.CONNECTING,
                           deadline=self._clock() + p.connect_timeout)
            self._conns[c.key] = c
            self._queue_control(_Control(vp.Op.REQUEST, local, port))
            self._arm_timer()

    # -- the connect timeout ----------------------------------------------------------------
    def _connecting(self) -> list[Connection]:
        return [c for c in self._conns.values()
                if c.state is ConnState.CONNECTING and c.deadline is not None]

    def _arm_timer(self) -> None:
        """Wake the I/O thread at the earliest deadline: a connect the guest must answer, a
        ``CONNECT`` line a host stream must complete (or never, if none)."""
        timer = self._timer
        if timer is None or timer.fd < 0:
            return
        deadlines = [c.deadline for c in self._connecting() if c.deadline is not None]
        deadlines += [p.deadline for p in self._pending_streams.values()]
        if deadlines:
            timer.arm(min(deadlines) - self._clock())
        else:
            timer.disarm()

    def _on_timer(self) -> None:
        with self._lock:
            if self._timer is None:
                return
            self._timer.drain()
            self.expire_connects()

    def expire_connects(self) -> None:
        """Give up on every host-started connection the guest did not answer in time (RST
        to the guest, the host stream closed) and close every host stream that did not send
        its whole ``CONNECT`` line in time (the I/O thread calls this when due)."""
        with self._lock:
            now = self._clock()
            for p in list(self._pending_streams.values()):
                if p.deadline <= now:
                    self.handshake_timeouts += 1
                    log.info("vsock: a host stream sent no complete 'CONNECT <port>' line "
                             "within the connect timeout (%g s): closed", p.connect_timeout)
                    self._drop_pending(p)
                    p.sock.close()
            for c in self._connecting():
                if c.deadline is not None and c.deadline <= now:
                    self.connect_timeouts += 1
                    log.info("vsock: guest port %d did not answer a connection request "
                             "within the connect timeout: reset", c.peer_port)
                    self._reset(c)
                    if self._notify is not None:
                        self._notify(vp.RX_QUEUE)
            self._arm_timer()

    def _allocate_host_port(self, peer_port: int) -> int:
        while True:
            port = self._next_host_port
            self._next_host_port = port + 1 if port < PORT_LIMIT - 1 else FIRST_HOST_PORT
            if (port, peer_port) not in self._conns and port not in self._listeners:
                return port

    # -- the in-process API -----------------------------------------------------------------
    def connect(self, port: int, timeout: float | None = None) -> socket.socket:
        """A blocking stream socket connected to guest port ``port`` (any thread but the
        I/O thread). :class:`VsockRefused` if the guest refuses (nothing listens there),
        :class:`VsockTimeout` if it does not answer within ``timeout`` seconds (default: the
        configuration's ``connect_timeout``, :data:`.vsock_host.CONNECT_TIMEOUT`)."""
        if not 0 <= port <= PORT_LIMIT:
            raise VsockError(f"vsock connect: port {port} is outside 0..{PORT_LIMIT}; "
                             "vsock ports are 32-bit")
        wait = self.config.connect_timeout if timeout is None else timeout
        check_connect_timeout(wait, "vsock connect timeout")
        if self.memory is None:
            raise VsockRefused(f"vsock connect to guest port {port}: refused: the guest's vsock "
                               "driver is not up (the device is not active); connect once the "
                               "guest has booted")
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mine.sendall(b"CONNECT %d\n" % port)
        started = time.monotonic()
        self.adopt_host_stream(theirs, wait)
        try:
            # The device's timer ends the wait (and resets the request in the guest); the
            # grace only bounds it should the I/O thread be held up.
            read_ok(mine, port, wait + CONNECT_GRACE)
        except VsockRefused:
            mine.close()
            if time.monotonic() - started >= wait:  # the device gave up at the deadline
                raise connect_timed_out(port, wait) from None
            raise
        except VsockTimeout:
            mine.close()
            raise connect_timed_out(port, wait) from None
        except BaseException:
            mine.close()
            raise
        return mine

    def listen(self, port: int) -> VsockListener:
        """Accept guest connections to host port ``port`` here (before ``<path>_<port>``)."""
        with self._lock:
            if port in self._listeners and not self._listeners[port].closed:
                raise VsockError(f"vsock listen: host port {port} already has a listener; "
                                 "close it first")
            listener = VsockListener(port)
            self._listeners[port] = listener
            return listener

    # -- lifetime ---------------------------------------------------------------------------
    def activate(self, memory: Any, notify: Any) -> None:
        super().activate(memory, notify)
        if self._reset_event_pending:
            notify(vp.EVENT_QUEUE)

    def reset(self) -> None:
        with self._lock:
            super().reset()
            if self._conns:
                self.reset_drops += len(self._conns)
                log.info("vsock: the driver reset the device with %d connections open: their "
                         "host streams are closed (what the guest had not sent is lost)",
                         len(self._conns))
            self._drop_all()
            self._held_rx = None
            if self._tx_signal is not None:
                self._tx_signal.reset()

    def _drop_all(self) -> None:
        for c in list(self._conns.values()):
            self._close(c)
        for p in list(self._pending_streams.values()):
            self._drop_pending(p)
            p.sock.close()
        self._control.clear()
        self._readable.clear()

    def transport_reset(self) -> None:
        """Forget every connection (their host streams close) and tell the guest with
        VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue (after a snapshot restore)."""
        with self._lock:
            self._drop_all()
            self._reset_event_pending = True
            notify = self._notify
        if notify is not None:
            notify(vp.EVENT_QUEUE)

    def close(self) -> None:
        with self._lock:
            self._drop_all()
            timer, self._timer = self._timer, None
            if timer is not None:
                if self._io is not None:
                    with contextlib.suppress(KeyError, ValueError):
                        self._io.remove(timer.fd)
                timer.close()
            tx_signal, self._tx_signal = self._tx_signal, None
            if tx_signal is not None:
                if self._io is not None:
                    with contextlib.suppress(KeyError, ValueError):
                        self._io.remove(tx_signal.fd)
                tx_signal.close()
            for listener in self._listeners.values():
                listener.close()
            server, self._server = self._server, None
            if server is not None:
                if self._io is not None:
                    with contextlib.suppress(KeyError, ValueError):
                        self._io.remove(server.fileno())
                server.close()
                path = self.config.uds_path
                if path is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)

    def state(self) -> dict[str, Any]:
        """Plain data: the CID and counters. Connections are not state: a restore resets
        them (:meth:`restore` queues the transport-reset event)."""
        return {**super().state(), "guest_cid": self.guest_cid, "malformed": self.malformed,
                "misaddressed": self.misaddressed, "resets_sent": self.resets_sent,
                "connections_opened": self.connections_opened}

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        with self._lock:
            self._drop_all()
            self._held_rx = None
            self.guest_cid = int(state.get("guest_cid", self.config.cid))
            for key in ("malformed", "misaddressed", "resets_sent", "connections_opened"):
                setattr(self, key, int(state.get(key, 0)))
            self._reset_event_pending = True

    # -- queues -----------------------------------------------------------------------------
    def process_queue(self, index: int) -> bool:
        with self._lock:
            if self.memory is None:
                return False
            if index == vp.TX_QUEUE:
                q = self.queues[vp.TX_QUEUE]
                before = q.next_used
                used = self._process_tx()
                if self._rx_work() and self._notify is not None:
                    self._notify(vp.RX_QUEUE)
                if self._tx_signal is None:
                    return used
                self._tx_signal.at_once = max(1, q.size // TX_SIGNAL_RING_SHARE)
                return self._tx_signal.completed((q.next_used - before) & 0xFFFF)
            if index == vp.RX_QUEUE:
                return self._fill_rx()
            return self._send_events()

    def _process_tx(self) -> bool:
        memory = self.memory
        assert memory is not None
        q = self.queues[vp.TX_QUEUE]
        used = False
        while True:
            chain = q.pop(memory)
            if chain is None:
                if q.drained(memory):
                    return used
                continue
            data = gather(memory, chain.readable, vp.HEADER_SIZE + vp.MAX_PAYLOAD)
            q.add_used(memory, chain.head, 0)
            self.requests += 1
            used = True
            try:
                header, payload = vp.parse_packet(data)
            except vp.MalformedPacket as e:
                self.malformed += 1
                if self.malformed <= 8:
                    log.warning("vsock: dropped: %s", e)
                continue
            self._on_packet(header, payload)

    def _rst(self, local_port: int, peer_port: int) -> None:
        self._queue_control(_Control(vp.Op.RST, local_port, peer_port))

    def _queue_control(self, control: _Control) -> None:
        if len(self._control) >= MAX_PENDING_CONTROL:
            self.control_dropped += 1
            return
        self._control.append(control)
        if self._notify is not None:
            self._notify(vp.RX_QUEUE)

    def _on_packet(self, h: vp.Header, payload: bytes) -> None:
        if h.src_cid != self.guest_cid or h.dst_cid != vp.HOST_CID:
            self.misaddressed += 1
            return
        if h.type != vp.PacketType.STREAM:
            if h.op != vp.Op.RST:
                self._rst(h.dst_port, h.src_port)
            return
        c = self._conns.get((h.dst_port, h.src_port))
        if h.op == vp.Op.REQUEST:
            if c is not None:
                self._reset(c)
            else:
                self._accept_guest(h)
            return
        if c is None:
            if h.op != vp.Op.RST:
                self._rst(h.dst_port, h.src_port)
            return
        had_credit = c.peer_credit() > 0
        c.peer_buf_alloc, c.peer_fwd_cnt = h.buf_alloc, h.fwd_cnt
        if not had_credit and c.peer_credit() > 0 and c.host_readable:
            self._readable[c.key] = None
        op = h.op
        if op == vp.Op.RST:
            self._flush(c)
            self._close(c)
        elif op == vp.Op.RESPONSE:
            if c.state is not ConnState.CONNECTING:
                self._reset(c)
                return
            c.state = ConnState.ESTABLISHED
            c.deadline = None
            self.connections_opened += 1
            line = ok_line(c.local_port)
            c.out[:0] = line
            c.uncounted += len(line)
            self._flush(c)
        elif c.state is not ConnState.ESTABLISHED:
            self._reset(c)
        elif op == vp.Op.RW:
            if c.peer_shutdown & vp.SHUTDOWN_SEND or c.buffered() + len(payload) > BUF_ALLOC:
                log.warning("vsock: guest port %d sent past its credit or after shutdown: "
                            "reset", c.peer_port)
                self._reset(c)
                return
            c.out += payload
            self._flush(c)
        elif op == vp.Op.SHUTDOWN:
            c.peer_shutdown |= h.flags & vp.SHUTDOWN_BOTH
            self._flush(c)
        elif op == vp.Op.CREDIT_REQUEST:
            self._queue_control(_Control(vp.Op.CREDIT_UPDATE, c.local_port, c.peer_port))

    def _accept_guest(self, h: vp.Header) -> None:
        port = h.dst_port
        listener = self._listeners.get(port)
        sock: socket.socket | None = None
        if len(self._conns) >= MAX_CONNECTIONS:
            pass
        elif listener is not None and not listener.closed:
            sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.deliver(theirs)
        elif self.config.uds_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(port_socket_path(self.config.uds_path, port))
            except OSError as e:
                if e.errno != errno.EINPROGRESS:
                    sock.close()
                    sock = None
        if sock is None:
            self._rst(h.dst_port, h.src_port)
            return
        sock.setblocking(False)
        c = Connection(port, h.src_port, sock, ConnState.ESTABLISHED, h.buf_alloc, h.fwd_cnt)
        self._conns[c.key] = c
        self.connections_opened += 1
        self._queue_control(_Control(vp.Op.RESPONSE, c.local_port, c.peer_port))
        self._watch(c)

    def _reset(self, c: Connection) -> None:
        """Abort ``c``: RST to the guest, the host stream closed."""
        self._rst(c.local_port, c.peer_port)
        self._close(c)

    def _close(self, c: Connection) -> None:
        if self._conns.get(c.key) is not c:
            return
        del self._conns[c.key]
        self._readable.pop(c.key, None)
        c.events = self._set_events(c.sock, c.events, 0, None)
        c.sock.close()

    def _flush(self, c: Connection) -> None:
        """Hand ``c.out`` to the host peer as far as it takes it; finish shutdowns."""
        while c.out:
            try:
                n = c.sock.send(c.out)
            except BlockingIOError:
                break
            except OSError:
                self._reset(c)
                return
            counted = max(0, n - c.uncounted)
            c.uncounted -= n - counted
            del c.out[:n]
            c.fwd_cnt = (c.fwd_cnt + counted) & U32_MASK
            self.bytes_to_host += counted
        if ((c.fwd_cnt - c.last_fwd_cnt_sent) & U32_MASK) >= CREDIT_UPDATE_THRESHOLD:
            c.last_fwd_cnt_sent = c.fwd_cnt
            self._queue_control(_Control(vp.Op.CREDIT_UPDATE, c.local_port, c.peer_port))
        if not c.out and c.peer_shutdown & vp.SHUTDOWN_SEND:
            if c.peer_shutdown == vp.SHUTDOWN_BOTH:
                self._reset(c)  # the guest closed: it waits for our RST
                return
            if not c.host_write_shut:
                c.host_write_shut = True
                with contextlib.suppress(OSError):
                    c.sock.shutdown(socket.SHUT_WR)
        self._watch(c)

    def _on_host(self, c: Connection) -> None:
        """I/O thread: ``c``'s host socket is readable or writable."""
        with self._lock:
            if self._conns.get(c.key) is not c:
                return
            if c.out:
                self._flush(c)
                if self._conns.get(c.key) is not c:
                    return
            if c.state is ConnState.ESTABLISHED and not c.host_eof and not c.host_readable:
                c.host_readable = True
                self._readable[c.key] = None
                self._watch(c)
                if self._notify is not None:
                    self._notify(vp.RX_QUEUE)

    def poll_host(self) -> None:
        """Serve every host socket once (what the I/O thread does when they are ready)."""
        with self._lock:
            self._on_server()
            for p in list(self._pending_streams.values()):
                self._on_pending(p)
            self.expire_connects()
            for c in list(self._conns.values()):
                self._on_host(c)

    # -- rx: packets to the guest -----------------------------------------------------------
    def _sendable(self, c: Connection) -> bool:
        return (c.host_readable and c.peer_credit() > 0
                and not c.peer_shutdown & vp.SHUTDOWN_RCV)

    def _rx_work(self) -> bool:
        return bool(self._control) or any(
            self._sendable(self._conns[k]) for k in self._readable if k in self._conns)

    def _next_rx_chain(self) -> DescriptorChain | None:
        memory = self.memory
        assert memory is not None
        held, self._held_rx = self._held_rx, None
        if held is not None:
            return held
        q = self.queues[vp.RX_QUEUE]
        while True:
            chain = q.pop(memory)
            if chain is not None or q.drained(memory):
                return chain

    def _header(self, op: vp.Op, local_port: int, peer_port: int, length: int = 0,
                flags: int = 0) -> bytes:
        c = self._conns.get((local_port, peer_port))
        fwd_cnt = 0
        if c is not None:
            fwd_cnt = c.fwd_cnt
            c.last_fwd_cnt_sent = fwd_cnt
        return vp.Header(vp.HOST_CID, self.guest_cid, local_port, peer_port, length,
                         vp.PacketType.STREAM, op, flags, BUF_ALLOC, fwd_cnt).pack()

    def _put(self, chain: DescriptorChain, packet: bytes) -> None:
        memory = self.memory
        assert memory is not None
        written = scatter(memory, chain.writable, packet)
        self.queues[vp.RX_QUEUE].add_used(memory, chain.head, written)
        self.requests += 1

    def _fill_rx(self) -> bool:
        used = False
        while self._rx_work():
            chain = self._next_rx_chain()
            if chain is None:
                break
            room = chain.writable_bytes - vp.HEADER_SIZE
            if room < 0:
                self.malformed += 1
                self._put(chain, b"")
                used = True
                continue
            if self._control:
                ctl = self._control.popleft()
                if ctl.op == vp.Op.RST:
                    self.resets_sent += 1
                self._put(chain, self._header(ctl.op, ctl.local_port, ctl.peer_port,
                                              flags=ctl.flags))
                used = True
                continue
            if self._send_data(chain, room):
                used = True
        return used

    def _send_data(self, chain: DescriptorChain, room: int) -> bool:
        """Fill ``chain`` from the first connection with data and credit; False if it was
        held back for later (every readable socket turned out empty)."""
        for key in list(self._readable):
            c = self._conns.get(key)
            if c is None:
                del self._readable[key]
                continue
            if not self._sendable(c):
                continue
            try:
                data = c.sock.recv(min(room, c.peer_credit(), RECV_CHUNK))
            except BlockingIOError:
                c.host_readable = False
                del self._readable[key]
                self._watch(c)
                continue
            except OSError:
                data = None
            if data is None:
                self._reset(c)
                continue
            # round robin: this connection goes to the back of the line
            del self._readable[key]
            self._readable[key] = None
            if not data:
                c.host_eof = True
                c.host_readable = False
                del self._readable[key]
                self._watch(c)
                self._put(chain, self._header(vp.Op.SHUTDOWN, c.local_port, c.peer_port,
                                              flags=vp.SHUTDOWN_SEND))
                return True
            c.tx_cnt = (c.tx_cnt + len(data)) & U32_MASK
            self.bytes_to_guest += len(data)
            self._put(chain, self._header(vp.Op.RW, c.local_port, c.peer_port, len(data)) + data)
            return True
        self._held_rx = chain
        return False

    # -- event queue ------------------------------------------------------------------------
    def _send_events(self) -> bool:
        memory = self.memory
        assert memory is not None
        if not self._reset_event_pending:
            return False
        q = self.queues[vp.EVENT_QUEUE]
        chain: DescriptorChain | None = None
        while True:
            chain = q.pop(memory)
            if chain is not None or q.drained(memory):
                break
        if chain is None:
            return False
        self._reset_event_pending = False
        written = scatter(memory, chain.writable, vp.EVENT.pack(vp.EVENT_TRANSPORT_RESET))
        q.add_used(memory, chain.head, written)
        return True
