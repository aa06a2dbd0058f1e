"""Connections the host starts to a guest that never answers, on a MemoryVM guest: the
device gives up at the connect timeout (RST to the guest, the host stream closed), and
``VsockDevice.connect`` says which port and which timeout; a guest reset is a refusal."""

from __future__ import annotations

import argparse
import math
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from vmboot.cli.vsock_args import add_vsock_arguments, vsock_config
from vmboot.devices.virtio import vsock_packet as vp
from vmboot.devices.virtio.deadline_timer import DeadlineTimer
from vmboot.devices.virtio.io_thread import IoThread
from vmboot.devices.virtio.vsock import FIRST_HOST_PORT, MAX_PENDING_STREAMS, VsockDevice
from vmboot.devices.virtio.vsock_host import (
    CONNECT_TIMEOUT,
    VsockConfig,
    VsockError,
    VsockRefused,
    VsockTimeout,
)
from vmboot.errors import BootConfigError, UsageError
from vsock_support import Guest, Packet, guest

GUEST_PORT = 52
WAIT = 10.0
"""Seconds a test waits for something that happens at once (never a timing assertion)."""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ops(packets: list[Packet]) -> list[vp.Op]:
    return [vp.Op(p.header.op) for p in packets]


def _guest_with_clock(config: VsockConfig) -> tuple[Guest, FakeClock]:
    clock = FakeClock()
    g = guest(config)
    g.device._clock = clock
    return g, clock


def _eventually(condition: Callable[[], bool]) -> None:
    """Wait (at most :data:`WAIT` s) for something another thread does at once."""
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError("never happened")


def _wait_for_request(g: Guest) -> Packet:
    for _ in range(1000):
        packets = g.take()
        if packets:
            (request,) = packets
            assert request.header.op == vp.Op.REQUEST
            return request
        threading.Event().wait(0.01)
    raise AssertionError("the device never sent the REQUEST")


def test_the_default_connect_timeout_is_the_configuration_default() -> None:
    assert VsockConfig().connect_timeout == CONNECT_TIMEOUT > 0


@pytest.mark.parametrize("seconds", [0.0, -1.0, math.nan, math.inf, 1e9])
def test_unusable_connect_timeouts_are_refused(seconds: float) -> None:
    with pytest.raises(BootConfigError, match=r"vsock connect timeout: .* is outside"):
        VsockConfig(connect_timeout=seconds).validate()
    device = VsockDevice()
    with pytest.raises(BootConfigError, match="vsock connect timeout"):
        device.connect(GUEST_PORT, timeout=seconds)
    assert not device._conns and not device._pending_streams  # nothing was started


def test_connect_before_the_driver_is_up_is_refused_at_once() -> None:
    device = VsockDevice()
    with pytest.raises(VsockRefused, match="guest port 52: refused: the guest's vsock driver "
                                           "is not up"):
        device.connect(GUEST_PORT, timeout=600)
    assert not device._conns and not device._pending_streams


def test_an_unanswered_hybrid_request_is_reset_at_the_deadline() -> None:
    g, clock = _guest_with_clock(VsockConfig(connect_timeout=3.0))
    host, theirs = socket.socketpair()
    host.sendall(b"CONNECT %d\n" % GUEST_PORT)
    g.device.adopt_host_stream(theirs)
    (request,) = g.take()
    assert request.header.op == vp.Op.REQUEST and request.header.dst_port == GUEST_PORT
    clock.now += 2.9
    assert g.take() == [] and len(g.device._conns) == 1  # not yet
    clock.now += 0.2
    (reset,) = g.take()
    assert reset.header.op == vp.Op.RST
    assert (reset.header.src_port, reset.header.dst_port) == (request.header.src_port, GUEST_PORT)
    host.settimeout(WAIT)
    assert host.recv(16) == b""  # Firecracker's behaviour: the stream closes, no OK line
    assert not g.device._conns and g.device.connect_timeouts == 1
    g.send(vp.Op.RESPONSE, GUEST_PORT, request.header.src_port)  # the guest, too late
    assert _ops(g.take()) == [vp.Op.RST]
    assert g.device.describe()["connect_timeouts"] == 1


def test_an_answered_request_has_no_deadline_any_more() -> None:
    g, clock = _guest_with_clock(VsockConfig(connect_timeout=3.0))
    host, theirs = socket.socketpair()
    host.sendall(b"CONNECT %d\n" % GUEST_PORT)
    g.device.adopt_host_stream(theirs)
    (request,) = g.take()
    g.send(vp.Op.RESPONSE, GUEST_PORT, request.header.src_port)
    host.settimeout(WAIT)
    assert host.recv(32) == b"OK %d\n" % request.header.src_port
    clock.now += 3600
    assert g.take() == [] and len(g.device._conns) == 1 and g.device.connect_timeouts == 0


def test_connect_to_a_silent_guest_names_the_port_and_the_timeout() -> None:
    """Through the I/O thread and its timer: nothing but the timeout ends the wait."""
    g = guest()
    io = IoThread()
    g.device.attach_io_thread(io)
    io.start()
    try:
        with pytest.raises(VsockTimeout, match=r"guest port 52: no answer within 0\.3 s "
                                               r"\(the connect timeout\)"):
            g.device.connect(GUEST_PORT, timeout=0.3)
        _eventually(lambda: g.device.connect_timeouts == 1)  # the device's timer, not connect
        packets = g.take()
        assert _ops(packets) == [vp.Op.REQUEST, vp.Op.RST]  # the guest forgets it too
        assert not g.device._conns
    finally:
        g.device.close()
        io.stop()


def test_connect_refused_by_a_guest_reset_is_a_refusal() -> None:
    g = guest()
    io = IoThread()
    g.device.attach_io_thread(io)
    io.start()
    outcome: list[socket.socket | VsockError] = []

    def connect() -> None:
        try:
            outcome.append(g.device.connect(GUEST_PORT, timeout=600))
        except VsockError as err:
            outcome.append(err)

    thread = threading.Thread(target=connect)
    thread.start()
    try:
        request = _wait_for_request(g)
        g.send(vp.Op.RST, GUEST_PORT, request.header.src_port)  # nothing listens on 52
        thread.join(WAIT)
        assert not thread.is_alive()
        (err,) = outcome
        assert isinstance(err, VsockRefused) and "guest port 52: refused" in str(err)
        assert g.device.connect_timeouts == 0
    finally:
        g.device.close()
        io.stop()


def test_hybrid_stream_to_a_silent_guest_closes_through_the_io_thread(tmp_path: Path) -> None:
    path = str(tmp_path / "v.sock")
    g = guest(VsockConfig(uds_path=path, connect_timeout=0.2))
    io = IoThread()
    g.device.attach_io_thread(io)
    io.start()
    try:
        host = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        host.connect(path)
        host.sendall(b"CONNECT %d\n" % GUEST_PORT)
        host.settimeout(WAIT)
        assert host.recv(16) == b""
        assert g.device.connect_timeouts == 1
        assert _ops(g.take()) == [vp.Op.REQUEST, vp.Op.RST]
    finally:
        g.device.close()
        io.stop()


def _closed(client: socket.socket) -> bool:
    """The device closed the other end (a reset when it left bytes unread)."""
    client.settimeout(WAIT)
    try:
        return client.recv(16) == b""
    except ConnectionResetError:
        return True


def test_a_stream_that_never_sends_connect_is_closed_at_the_deadline() -> None:
    g, clock = _guest_with_clock(VsockConfig(connect_timeout=3.0))
    silent, theirs = socket.socketpair()
    slow, theirs_slow = socket.socketpair()
    slow.sendall(b"CONNECT 5")  # the rest of the line never comes
    g.device.adopt_host_stream(theirs)
    g.device.adopt_host_stream(theirs_slow)
    clock.now += 2.9
    assert g.take() == [] and len(g.device._pending_streams) == 2  # not yet
    clock.now += 0.2
    assert g.take() == []  # nothing reaches the guest
    for client in (silent, slow):
        assert _closed(client)
    assert not g.device._pending_streams and g.device.describe()["handshake_timeouts"] == 2
    assert g.device.connect_timeouts == 0


def test_a_stream_that_sends_connect_in_time_is_not_closed() -> None:
    g, clock = _guest_with_clock(VsockConfig(connect_timeout=3.0))
    host, theirs = socket.socketpair()
    g.device.adopt_host_stream(theirs)
    clock.now += 2.9
    host.sendall(b"CONNECT %d\n" % GUEST_PORT)
    (request,) = g.take()
    assert request.header.op == vp.Op.REQUEST
    g.send(vp.Op.RESPONSE, GUEST_PORT, request.header.src_port)
    clock.now += 3600
    host.settimeout(WAIT)
    assert host.recv(32) == b"OK %d\n" % request.header.src_port
    assert g.device.handshake_timeouts == 0 and len(g.device._conns) == 1


def test_silent_hybrid_clients_free_their_pending_slots(tmp_path: Path) -> None:
    """Through the I/O thread and its timer: clients that connect and say nothing are
    closed at the connect timeout, so they cannot hold every pending slot for good."""
    path = str(tmp_path / "v.sock")
    g = guest(VsockConfig(uds_path=path, connect_timeout=0.2))
    io = IoThread()
    g.device.attach_io_thread(io)
    io.start()
    clients: list[socket.socket] = []
    try:
        for _ in range(MAX_PENDING_STREAMS):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(path)
            clients.append(c)
        assert all(_closed(c) for c in clients)
        assert g.device.handshake_timeouts == MAX_PENDING_STREAMS
        _eventually(lambda: not g.device._pending_streams)
    finally:
        for c in clients:
            c.close()
        g.device.close()
        io.stop()


def test_the_first_host_port_is_allocated_for_the_request() -> None:
    g, _ = _guest_with_clock(VsockConfig())
    host, theirs = socket.socketpair()
    host.sendall(b"CONNECT 7\n")
    g.device.adopt_host_stream(theirs, connect_timeout=1.0)
    (request,) = g.take()
    assert request.header.src_port == FIRST_HOST_PORT
    assert g.device._conns[(FIRST_HOST_PORT, 7)].deadline == 1001.0


def test_deadline_timer_fires_once_and_disarms() -> None:
    import select

    timer = DeadlineTimer()
    try:
        timer.arm(0.0)  # due at once, not disarmed
        assert select.select([timer.fd], [], [], WAIT)[0] == [timer.fd]
        assert timer.drain() == 1 and timer.drain() == 0
        timer.arm(WAIT)
        timer.disarm()
        assert select.select([timer.fd], [], [], 0.05)[0] == []
    finally:
        timer.close()
    assert timer.fd == -1



def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_vsock_arguments(p)
    return p.parse_args(argv)


def test_cli_connect_timeout(tmp_path: Path) -> None:
    path = str(tmp_path / "v.sock")
    config = vsock_config(_parse(["--vsock", path, "--vsock-connect-timeout", "2.5"]))
    assert config is not None and config.connect_timeout == 2.5
    default = vsock_config(_parse(["--vsock", path]))
    assert default is not None and default.connect_timeout == CONNECT_TIMEOUT
    with pytest.raises(UsageError, match="--vsock-connect-timeout: no --vsock PATH"):
        vsock_config(_parse(["--vsock-connect-timeout", "3"]))
    with pytest.raises(BootConfigError, match=r"vsock connect timeout: 7200\.0 s is outside"):
        vsock_config(_parse(["--vsock", path, "--vsock-connect-timeout", "7200"]))
    with pytest.raises(SystemExit):
        _parse(["--vsock", path, "--vsock-connect-timeout", "0"])
