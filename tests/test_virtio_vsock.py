"""virtio-vsock on a MemoryVM: the packet header, connections both ways (in-process and
through Firecracker's hybrid UNIX sockets), credit flow control, resets, malformed packets
and the transport-reset event."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmboot.cli.main import EXIT_ERROR, main
from vmboot.cli.vsock_args import add_vsock_arguments, vsock_config
from vmboot.devices.virtio import spec
from vmboot.devices.virtio import vsock as vsock_module
from vmboot.devices.virtio import vsock_packet as vp
from vmboot.devices.virtio.driver import read_reg, write_reg
from vmboot.devices.virtio.setup import VirtioDevices
from vmboot.devices.virtio.vsock import (
    BUF_ALLOC,
    CREDIT_UPDATE_THRESHOLD,
    FIRST_HOST_PORT,
    VsockDevice,
)
from vmboot.devices.virtio.vsock_host import VsockConfig, VsockError, parse_connect
from vmboot.errors import BootConfigError, UsageError
from vsock_support import GUEST_BUF_ALLOC, GUEST_CID, Guest, Packet, guest
from vsock_support import QUEUE_SIZE as VSOCK_QUEUE_SIZE

GUEST_PORT = 40000
HOST_PORT = 5000


def _ops(packets: list[Packet]) -> list[vp.Op]:
    return [vp.Op(p.header.op) for p in packets]


def _established(g: Guest, port: int = HOST_PORT) -> socket.socket:
    listener = g.device.listen(port)
    g.send(vp.Op.REQUEST, GUEST_PORT, port)
    (response,) = g.take()
    assert response.header.op == vp.Op.RESPONSE
    assert (response.header.src_port, response.header.dst_port) == (port, GUEST_PORT)
    sock = listener.accept(timeout=5)
    sock.settimeout(5)
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, f"EOF after {len(out)} of {n} bytes"
        out += chunk
    return bytes(out)


# -- the wire format -------------------------------------------------------------------------
def test_header_round_trip_and_layout() -> None:
    h = vp.Header(3, 2, 1024, 80, 5, vp.PacketType.STREAM, vp.Op.RW, 0, 4096, 17)
    raw = h.pack()
    assert len(raw) == vp.HEADER_SIZE == 44
    assert raw[:8] == (3).to_bytes(8, "little") and raw[28:30] == (1).to_bytes(2, "little")
    assert vp.parse_packet(raw + b"hello") == (h, b"hello")


@pytest.mark.parametrize(("raw", "why"), [
    (b"\0" * 43, "shorter than the 44-byte header"),
    (vp.Header(3, 2, 1, 2, 0, 1, 9, 0, 0, 0).pack(), "op 9"),
    (vp.Header(3, 2, 1, 2, 0, 1, 0, 0, 0, 0).pack(), "op 0"),
    (vp.Header(3, 2, 1, 2, 10, 1, vp.Op.RW, 0, 0, 0).pack() + b"abc", "beyond the 3 payload"),
    (vp.Header(3, 2, 1, 2, vp.MAX_PAYLOAD + 1, 1, vp.Op.RW, 0, 0, 0).pack()
     + bytes(vp.MAX_PAYLOAD + 1), "limit"),
    (vp.Header(3, 2, 1, 2, 1, 1, vp.Op.REQUEST, 0, 0, 0).pack() + b"x", "only RW carries"),
])
def test_malformed_packets_are_rejected(raw: bytes, why: str) -> None:
    with pytest.raises(vp.MalformedPacket, match=why):
        vp.parse_packet(raw)


def test_config_space_is_the_guest_cid_and_device_id_19() -> None:
    g = guest(VsockConfig(cid=0x8765_4321))
    t = g.r.transport
    assert read_reg(t, spec.MmioReg.DEVICE_ID) == 19
    assert read_reg(t, 0x100) == 0x8765_4321 and read_reg(t, 0x104) == 0  # le64, upper half 0


@pytest.mark.parametrize("cid", [0, 1, 2, 0xFFFFFFFF, 1 << 40])
def test_reserved_cids_are_refused(cid: int) -> None:
    with pytest.raises(BootConfigError, match=f"vsock cid: {cid} is outside"):
        VsockDevice(VsockConfig(cid=cid))


def test_uds_path_checks(tmp_path: Path) -> None:
    with pytest.raises(BootConfigError, match="at most 96"):
        VsockConfig(uds_path=str(tmp_path / ("x" * 120))).validate()
    with pytest.raises(BootConfigError, match="does not exist"):
        VsockConfig(uds_path=str(tmp_path / "missing" / "v.sock")).validate()
    taken = tmp_path / "taken"
    taken.write_bytes(b"")
    with pytest.raises(BootConfigError, match="already exists and is not a socket"):
        VsockConfig(uds_path=str(taken)).validate()


@pytest.mark.parametrize(("line", "port"), [(b"CONNECT 52", 52), (b"connect 7", 7),
                                            (b"CONNECT 4294967295 ", 0xFFFFFFFF)])
def test_parse_connect(line: bytes, port: int) -> None:
    assert parse_connect(line) == port


@pytest.mark.parametrize("line", [b"", b"CONNECT", b"CONNECT x", b"CONNECT -1", b"CONNECT 4294967296",
                                  b"CONNECT 5 6", b"LISTEN 5"])
def test_parse_connect_refuses(line: bytes) -> None:
    with pytest.raises(ValueError):
        parse_connect(line)


# -- connections -----------------------------------------------------------------------------
def test_request_to_a_port_nobody_listens_on_is_reset() -> None:
    g = guest()
    g.send(vp.Op.REQUEST, GUEST_PORT, 1234)
    (rst,) = g.take()
    h = rst.header
    assert (h.op, h.src_cid, h.dst_cid, h.src_port, h.dst_port) == (
        vp.Op.RST, vp.HOST_CID, GUEST_CID, 1234, GUEST_PORT)
    assert g.device.resets_sent == 1


@pytest.mark.parametrize("op", [vp.Op.RW, vp.Op.SHUTDOWN, vp.Op.CREDIT_UPDATE,
                                vp.Op.CREDIT_REQUEST, vp.Op.RESPONSE])
def test_packets_for_unknown_connections_are_reset(op: vp.Op) -> None:
    g = guest()
    g.send(op, GUEST_PORT, 77, b"data" if op == vp.Op.RW else b"")
    assert _ops(g.take()) == [vp.Op.RST]


def test_connections_past_the_limit_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vsock_module, "MAX_CONNECTIONS", 2)
    g = guest()
    g.device.listen(HOST_PORT)
    for port in (1, 2, 3):
        g.send(vp.Op.REQUEST, port, HOST_PORT)
    assert _ops(g.take()) == [vp.Op.RESPONSE, vp.Op.RESPONSE, vp.Op.RST]


def test_rst_for_an_unknown_connection_gets_no_answer() -> None:
    g = guest()
    g.send(vp.Op.RST, GUEST_PORT, 77)
    assert g.take() == []


def test_seqpacket_is_reset_and_other_cids_dropped() -> None:
    g = guest()
    g.device.listen(HOST_PORT)
    g.send(vp.Op.REQUEST, GUEST_PORT, HOST_PORT, packet_type=vp.PacketType.SEQPACKET)
    assert _ops(g.take()) == [vp.Op.RST]
    g.send(vp.Op.REQUEST, GUEST_PORT, HOST_PORT, src_cid=GUEST_CID + 1)
    assert g.take() == [] and g.device.misaddressed == 1


def test_guest_to_host_stream_both_ways_with_credit_counters() -> None:
    g = guest()
    host = _established(g)
    g.send(vp.Op.RW, GUEST_PORT, HOST_PORT, b"ping" * 25)
    assert _recv_exactly(host, 100) == b"ping" * 25
    host.sendall(b"pong")
    (rw,) = g.take()
    assert rw.header.op == vp.Op.RW and rw.payload == b"pong"
    assert rw.header.fwd_cnt == 100 and rw.header.buf_alloc == BUF_ALLOC
    assert g.device.bytes_to_host == 100 and g.device.bytes_to_guest == 4


def test_host_sends_no_more_than_the_guest_credit() -> None:
    g = guest()
    listener = g.device.listen(HOST_PORT)
    g.send(vp.Op.REQUEST, GUEST_PORT, HOST_PORT, buf_alloc=10)
    g.take()
    host = listener.accept(timeout=5)
    host.sendall(bytes(range(25)))
    packets = g.take()
    assert [p.payload for p in packets] == [bytes(range(10))]
    g.send(vp.Op.CREDIT_UPDATE, GUEST_PORT, HOST_PORT, buf_alloc=10, fwd_cnt=6)
    assert [p.payload for p in g.take()] == [bytes(range(10, 16))]
    g.send(vp.Op.CREDIT_UPDATE, GUEST_PORT, HOST_PORT, buf_alloc=100, fwd_cnt=16)
    assert b"".join(p.payload for p in g.take()) == bytes(range(16, 25))


def test_payloads_split_to_the_guest_rx_buffers() -> None:
    g = guest()
    host = _established(g)
    data = os.urandom(10_000)
    host.sendall(data)
    packets = g.take()
    assert all(len(p.payload) <= 4096 for p in packets)
    assert b"".join(p.payload for p in packets) == data


def test_credit_request_is_answered_with_credit_update() -> None:
    g = guest()
    host = _established(g)
    g.send(vp.Op.RW, GUEST_PORT, HOST_PORT, b"x" * 7)
    g.send(vp.Op.CREDIT_REQUEST, GUEST_PORT, HOST_PORT)
    (update,) = g.take()
    assert update.header.op == vp.Op.CREDIT_UPDATE and update.header.fwd_cnt == 7
    assert _recv_exactly(host, 7) == b"x" * 7


def test_a_host_that_stops_reading_holds_the_guest_to_its_credit() -> None:
    """The device buffers up to BUF_ALLOC unread bytes; fwd_cnt only counts what the host
    took, so the guest's credit runs out; when the host reads, everything arrives in order
    and credit updates follow."""
    g = guest()
    host = _established(g)
    host.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    chunk = 32 * 1024
    data = os.urandom(BUF_ALLOC)
    for i in range(0, BUF_ALLOC, chunk):
        g.send(vp.Op.RW, GUEST_PORT, HOST_PORT, data[i:i + chunk])
    conn = next(iter(g.device._conns.values()))
    assert conn.fwd_cnt + conn.buffered() == BUF_ALLOC and conn.buffered() > 0
    first = g.take()
    credit_seen = max((p.header.fwd_cnt for p in first), default=0)
    assert credit_seen <= conn.fwd_cnt < BUF_ALLOC
    got = bytearray()
    updates = [p.header.fwd_cnt for p in first if p.header.op == vp.Op.CREDIT_UPDATE]
    while len(got) < BUF_ALLOC:
        got += host.recv(65536)
        g.pump()
        updates += [p.header.fwd_cnt for p in g.take() if p.header.op == vp.Op.CREDIT_UPDATE]
    assert bytes(got) == data
    assert updates and BUF_ALLOC - updates[-1] < CREDIT_UPDATE_THRESHOLD


def test_a_streaming_guest_gets_a_credit_update_only_when_it_runs_low() -> None:
    """A guest writing 1 MiB in 16 KiB packets to a host that reads everything: credit
    updates go only when the guest may have less than one full packet of credit left (as
    Linux's own receive side does), yet the guest never waits for credit."""
    g = guest()
    host = _established(g)
    packet, total = 16 * 1024, 1 << 20
    sent = fwd_known = 0
    updates = 0
    while sent < total:
        assert GUEST_BUF_ALLOC - (sent - fwd_known) >= packet, f"stalled after {sent} bytes"
        g.send(vp.Op.RW, GUEST_PORT, HOST_PORT, bytes(packet))
        sent += packet
        assert _recv_exactly(host, packet) == bytes(packet)
        for p in g.take():
            fwd_known = p.header.fwd_cnt
            updates += p.header.op == vp.Op.CREDIT_UPDATE
    assert 0 < updates <= total // (BUF_ALLOC - vp.MAX_PAYLOAD)


def test_sending_past_the_credit_resets_the_connection() -> None:
    g = guest()
    host = _established(g)
    host.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for _ in range(BUF_ALLOC // 65536 + 8):
        g.send(vp.Op.RW, GUEST_PORT, HOST_PORT, bytes(65536))
        if vp.Op.RST in _ops(g.received):
            break
    assert vp.Op.RST in _ops(g.take())
    assert not g.device._conns


def test_guest_close_flushes_then_resets_and_host_sees_eof() -> None:
    g = guest()
    host = _established(g)
    g.send(vp.Op.RW, GUEST_PORT, HOST_PORT, b"last words")
    g.send(vp.Op.SHUTDOWN, GUEST_PORT, HOST_PORT, flags=vp.SHUTDOWN_BOTH)
    assert _ops(g.take()) == [vp.Op.RST]
    assert _recv_exactly(host, 10) == b"last words" and host.recv(1) == b""


def test_a_driver_reset_closes_the_host_streams_and_is_counted() -> None:
    """A rebooting guest resets the device with connections open: the host sees EOF after
    what did arrive, and the report says the connections went with the reset."""
    g = guest()
    host = _established(g)
    g.send(vp.Op.RW, GUEST_PORT, HOST_PORT, b"sent before")
    write_reg(g.r.transport, spec.MmioReg.STATUS, 0)
    assert _recv_exactly(host, 11) == b"sent before" and host.recv(1) == b""
    report = g.device.describe()
    assert report["reset_drops"] == 1 and report["connections"] == 0
    assert report["bytes_to_host"] == 11


def test_guest_half_close_and_host_eof_are_shutdowns() -> None:
    g = guest()
    host = _established(g)
    g.send(vp.Op.SHUTDOWN, GUEST_PORT, HOST_PORT, flags=vp.SHUTDOWN_SEND)
    assert host.recv(1) == b""  # the guest will send no more
    host.sendall(b"reply")
    host.shutdown(socket.SHUT_WR)
    g.pump()
    packets = g.take()
    assert [(p.header.op, p.payload) for p in packets] == [
        (vp.Op.RW, b"reply"), (vp.Op.SHUTDOWN, b"")]
    assert packets[1].header.flags == vp.SHUTDOWN_SEND


def test_guest_rst_closes_the_host_stream() -> None:
    g = guest()
    host = _established(g)
    g.send(vp.Op.RST, GUEST_PORT, HOST_PORT)
    assert host.recv(1) == b"" and g.take() == []


def test_host_closing_while_guest_writes_resets() -> None:
    g = guest()
    host = _established(g)
    host.close()
    g.send(vp.Op.RW, GUEST_PORT, HOST_PORT, b"x")
    g.send(vp.Op.RW, GUEST_PORT, HOST_PORT, b"y")
    assert vp.Op.RST in _ops(g.take())


def test_many_connections_open_and_close() -> None:
    g = guest()
    listener = g.device.listen(HOST_PORT)
    for i in range(100):
        g.send(vp.Op.REQUEST, GUEST_PORT + i, HOST_PORT)
        host = listener.accept(timeout=5)
        g.send(vp.Op.RW, GUEST_PORT + i, HOST_PORT, b"%d" % i)
        assert _recv_exactly(host, len(b"%d" % i)) == b"%d" % i
        g.send(vp.Op.SHUTDOWN, GUEST_PORT + i, HOST_PORT, flags=vp.SHUTDOWN_BOTH)
        host.close()
    assert _ops(g.take()) == [vp.Op.RESPONSE, vp.Op.RST] * 100
    assert not g.device._conns and g.device.connections_opened == 100


# -- the hybrid (Firecracker) host side ------------------------------------------------------
def test_hybrid_guest_connection_arrives_on_path_port(tmp_path: Path) -> None:
    path = str(tmp_path / "v.sock")
    g = guest(VsockConfig(uds_path=path))
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(f"{path}_{HOST_PORT}")
    server.listen(1)
    g.send(vp.Op.REQUEST, GUEST_PORT, HOST_PORT)
    assert _ops(g.take()) == [vp.Op.RESPONSE]
    host, _ = server.accept()
    g.send(vp.Op.RW, GUEST_PORT, HOST_PORT, b"hi")
    assert _recv_exactly(host, 2) == b"hi"
    g.send(vp.Op.REQUEST, GUEST_PORT, HOST_PORT + 1)  # no <path>_5001
    assert _ops(g.take()) == [vp.Op.RST]


def test_hybrid_host_connect_handshake(tmp_path: Path) -> None:
    from vmboot.devices.virtio.io_thread import IoThread

    path = str(tmp_path / "v.sock")
    g = guest(VsockConfig(uds_path=path))
    io = IoThread()
    g.device.attach_io_thread(io)  # binds <path>; the test serves the sockets itself
    try:
        host = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        host.connect(path)
        host.sendall(b"CONNECT 52\n")
        g.pump()
        (request,) = g.take()
        h = request.header
        assert (h.op, h.src_port, h.dst_port, h.dst_cid) == (
            vp.Op.REQUEST, FIRST_HOST_PORT, 52, GUEST_CID)
        g.send(vp.Op.RESPONSE, 52, FIRST_HOST_PORT)
        host.settimeout(5)
        assert _recv_exactly(host, len(b"OK %d\n" % FIRST_HOST_PORT)) == b"OK %d\n" % FIRST_HOST_PORT
        host.sendall(b"to guest")
        g.pump()
        assert [p.payload for p in g.take()] == [b"to guest"]
        g.send(vp.Op.RW, 52, FIRST_HOST_PORT, b"to host")
        assert _recv_exactly(host, 7) == b"to host"
        assert g.device._conns[(FIRST_HOST_PORT, 52)].fwd_cnt == 7  # the OK line is not counted

        refused = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        refused.connect(path)
        refused.sendall(b"CONNECT 53\n")
        g.pump()
        (request,) = g.take()
        g.send(vp.Op.RST, 53, request.header.src_port)
        refused.settimeout(5)
        assert refused.recv(16) == b""

        garbage = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        garbage.connect(path)
        garbage.sendall(b"HELLO\n")
        g.pump()
        garbage.settimeout(5)
        assert garbage.recv(16) == b"" and g.take() == []
    finally:
        g.device.close()
        io.stop()
    assert not os.path.exists(path)


def test_silent_host_streams_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vsock_module, "MAX_PENDING_STREAMS", 2)
    g = guest()
    pairs = [socket.socketpair() for _ in range(3)]
    for _, theirs in pairs:
        g.device.adopt_host_stream(theirs)  # none sends its CONNECT line
    assert len(g.device._pending_streams) == 2
    pairs[2][0].settimeout(5)
    assert pairs[2][0].recv(1) == b""  # the third was closed


def test_in_process_connect_through_the_io_thread() -> None:
    from vmboot.devices.virtio.io_thread import IoThread

    g = guest()
    io = IoThread()
    g.device.attach_io_thread(io)
    result: list[socket.socket | VsockError] = []

    def connect() -> None:
        try:
            result.append(g.device.connect(99, timeout=5))
        except VsockError as e:
            result.append(e)

    thread = threading.Thread(target=connect)
    thread.start()
    try:
        for _ in range(500):
            g.pump()
            packets = g.take()
            if packets:
                break
            threading.Event().wait(0.01)
        (request,) = packets
        g.send(vp.Op.RST, 99, request.header.src_port)  # nothing listens on 99
        thread.join(10)
        assert isinstance(result[0], VsockError) and "refused" in str(result[0])
    finally:
        g.device.close()
        io.stop()


@contextlib.contextmanager
def _guest_on_an_io_thread(monkeypatch: pytest.MonkeyPatch,
                           tx_signal_delay: float) -> Iterator[Guest]:
    """A guest whose device runs its timers on a started I/O thread, as in a Machine."""
    from vmboot.devices.virtio.io_thread import IoThread

    monkeypatch.setattr(vsock_module, "TX_SIGNAL_DELAY", tx_signal_delay)
    g = guest()
    io = IoThread()
    io.start()

    def serve(index: int) -> bool:
        g.r.transport.process(index)
        return True
    g.device.attach_io_thread(io, serve)
    try:
        yield g
    finally:
        g.device.close()
        io.stop()


def test_used_tx_buffers_share_one_interrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each interrupt for used tx buffers costs Linux two worker wake-ups: the device holds
    it back until a quarter of the driver's tx ring is used (or the delay is over, never
    here), while the payloads reach the host at once."""
    with _guest_on_an_io_thread(monkeypatch, 3600.0) as g:
        host = _established(g)
        before = len(g.r.interrupts)
        held = len(g.r.queues[vp.TX_QUEUE].take_used())  # the REQUEST's buffer waits too
        assert held == 1
        at_once = VSOCK_QUEUE_SIZE // vsock_module.TX_SIGNAL_RING_SHARE
        for i in range(at_once - held - 1):
            g.send(vp.Op.RW, GUEST_PORT, HOST_PORT, bytes([i]) * 100)
            assert _recv_exactly(host, 100) == bytes([i]) * 100
        assert len(g.r.interrupts) == before
        g.send(vp.Op.RW, GUEST_PORT, HOST_PORT, b"last")
        assert len(g.r.interrupts) == before + 1
        assert g.r.interrupts[-1] & spec.INTERRUPT_USED_BUFFER


def test_held_back_tx_interrupt_comes_when_the_delay_is_over(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with _guest_on_an_io_thread(monkeypatch, 0.5) as g:
        host = _established(g)
        g.r.queues[vp.TX_QUEUE].take_used()
        before = len(g.r.interrupts)
        for _ in range(3):
            g.send(vp.Op.RW, GUEST_PORT, HOST_PORT, b"x" * 10)
        assert _recv_exactly(host, 30) == b"x" * 30
        for _ in range(500):
            if len(g.r.interrupts) > before:
                break
            threading.Event().wait(0.01)
        threading.Event().wait(0.1)  # nothing more follows
        assert len(g.r.interrupts) == before + 1
        assert len(g.r.queues[vp.TX_QUEUE].take_used()) == 3


def test_close_after_the_io_thread_stopped_closes_open_streams() -> None:
    from vmboot.devices.virtio.io_thread import IoThread

    g = guest()
    io = IoThread()
    g.device.attach_io_thread(io)
    host = _established(g)
    io.stop()  # the order VirtioDevices.close uses
    g.device.close()
    assert host.recv(1) == b"" and not g.device._conns


def test_a_guest_that_reads_nothing_does_not_busy_the_io_thread() -> None:
    """Host data the guest does not take: the socket is marked once and left alone
    (no busy loop), and another fd on the same I/O thread is still served."""
    from vmboot.devices.virtio.io_thread import IoThread, new_eventfd

    g = guest()
    io = IoThread()
    calls: list[int] = []
    on_host = g.device._on_host

    def counting(c: Any) -> None:
        calls.append(1)
        on_host(c)

    g.device._on_host = counting  # type: ignore[method-assign]
    g.device.attach_io_thread(io)
    other = new_eventfd()
    served = threading.Event()

    def serve_other() -> None:
        os.eventfd_read(other)
        served.set()

    io.add(other, serve_other)
    io.start()
    try:
        host = _established(g)
        calls.clear()  # from here on the rx queue is never served: the guest takes nothing
        host.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                host.send(bytes(65536))
        threading.Event().wait(0.5)  # let the loop run: it must not spin on the socket
        os.eventfd_write(other, 1)
        assert served.wait(10)
        assert len(calls) == 1, f"{len(calls)} callbacks for one readable socket"
        assert g.device._conns[(HOST_PORT, GUEST_PORT)].host_readable
    finally:
        g.device.close()
        io.stop()
        os.close(other)


# -- malformed traffic, events, state --------------------------------------------------------
def test_malformed_tx_chains_are_counted_and_dropped() -> None:
    g = guest()
    g.send_raw(b"\0" * 20)
    g.send_raw(vp.Header(GUEST_CID, 2, 1, 2, 0, 1, 42, 0, 0, 0).pack())
    g.send_raw(vp.Header(GUEST_CID, 2, 1, 2, 4000, 1, vp.Op.RW, 0, 0, 0).pack() + b"abc")
    g.send_raw(vp.Header(GUEST_CID, 2, 1, 2, 3, 1, vp.Op.RW, 0, 0, 0).pack() + b"abc",
               readable_len=vp.HEADER_SIZE + 1)
    assert g.device.malformed == 4 and g.take() == []
    assert not g.r.needs_reset
    assert len(g.r.queues[vp.TX_QUEUE].take_used()) == 4  # every chain returned
    assert _established(g).fileno() >= 0  # still serving


def test_transport_reset_event_drops_connections() -> None:
    g = guest()
    host = _established(g)
    g.device.transport_reset()
    g.pump()
    assert g.events == [vp.EVENT_TRANSPORT_RESET]
    assert host.recv(1) == b"" and not g.device._conns


def test_state_is_plain_data_and_restore_sends_transport_reset() -> None:
    g = guest(VsockConfig(cid=7))
    host = _established(g)
    state = g.r.transport.state()
    assert json.loads(json.dumps(state)) == state
    assert state["device"]["guest_cid"] == 7 and state["device"]["connections_opened"] == 1
    g.r.transport.restore(state)
    g.pump()
    assert g.events == [vp.EVENT_TRANSPORT_RESET]
    assert host.recv(1) == b""


def test_driver_reset_closes_connections() -> None:
    g = guest()
    host = _established(g)
    g.r.transport.reset()
    assert host.recv(1) == b"" and not g.device._conns



# -- the command line ------------------------------------------------------------------------
def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_vsock_arguments(p)
    return p.parse_args(argv)


def test_cli_vsock_arguments(tmp_path: Path) -> None:
    path = str(tmp_path / "v.sock")
    assert vsock_config(_parse([])) is None
    assert vsock_config(_parse(["--vsock", path])) == VsockConfig(vp.DEFAULT_GUEST_CID, path)
    assert vsock_config(_parse(["--vsock", path, "--vsock-cid", "42"])) == VsockConfig(42, path)
    with pytest.raises(UsageError, match="--vsock-cid: no --vsock PATH"):
        vsock_config(_parse(["--vsock-cid", "42"]))
    with pytest.raises(BootConfigError, match="vsock cid: 2 is outside"):
        vsock_config(_parse(["--vsock", path, "--vsock-cid", "2"]))


def test_virtio_parameters_go_before_init_arguments() -> None:
    devices = VirtioDevices([VsockDevice()])
    params = devices.cmdline_parameters()
    assert devices.extend_cmdline("console=ttyS0 -- xfer 5 6") == f"console=ttyS0 {params} -- xfer 5 6"
    assert devices.extend_cmdline("console=ttyS0") == f"console=ttyS0 {params}"


@pytest.mark.parametrize("verb", [["run", "no-such-kernel"], ["exec", "--kernel", "no-such-kernel"]])
def test_cli_refuses_a_taken_vsock_path_before_booting(verb: list[str], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    taken = tmp_path / "v.sock"
    taken.write_bytes(b"keep me")
    tail = ["--", "true"] if verb[0] == "exec" else []
    assert main([*verb, "--vsock", str(taken), *tail]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "vsock path" in err and "already exists and is not a socket" in err, err
    assert taken.read_bytes() == b"keep me"


def test_machine_vsock_is_the_device_and_is_announced() -> None:
    from vmboot.vmm.machine import Machine

    m = Machine("kernel-not-loaded-until-start", vsock=VsockConfig(cid=9))
    try:
        assert isinstance(m.vsock, VsockDevice) and m.vsock.guest_cid == 9
        assert m.virtio.devices == [m.vsock]
        assert "virtio_mmio.device=0x200@0xd0000000:5" in m.virtio.extend_cmdline(m.cmdline)
    finally:
        m.close()
    assert Machine("kernel-not-loaded-until-start").vsock is None
