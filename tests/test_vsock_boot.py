"""virtio-vsock with real Linux (slow: one boot per kernel, tiny-bzImage and the SMP
tiny-smp-bzImage, serves every check).

The guest's /init is ``tests/guest/vsock_tool.c`` (built here against nolibc); it runs the
steps on its command line in order and prints one ``VSOCK`` line each. The host side runs
in threads during the boot, through Firecracker's hybrid UNIX sockets (``<path>_<port>``
for guest connections, ``CONNECT <port>`` on ``<path>`` for host connections) and through
``Machine.vsock.connect`` / ``listen``.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import require, requires_kvm, shared_kernel_file
from nolibc_tool import build_tool
from vmboot.devices.virtio.vsock import VsockDevice
from vmboot.devices.virtio.vsock_host import VsockConfig, VsockError
from vmboot.initramfs.builders import build_initramfs, complete_tree
from vmboot.initramfs.entry import Entry
from vmboot.vmm.machine import Machine, RunResult

pytestmark = [pytest.mark.slow, requires_kvm]

BUSYBOX = Path("/bin/busybox")
MIB = 1 << 20
BOOT_TIMEOUT = 600
THREAD_TIMEOUT = 600
GUEST_CONNECT_RETRY = 0.2
STALL_QUIET = 1.5
"""Seconds without progress after which the guest counts as stalled on credit."""

ECHO_PORT, HYBRID_LISTEN_PORT, API_LISTEN_PORT = 5001, 6000, 6001
MANY_PORT, READCLOSE_PORT, STALL_PORT = 5002, 5003, 5004
STEPS = (f"xfer {ECHO_PORT} {MIB} listen-echo {HYBRID_LISTEN_PORT} "
         f"listen-echo {API_LISTEN_PORT} many {MANY_PORT} 100 "
         f"readclose {READCLOSE_PORT} 65536 xfer {STALL_PORT} {MIB}")


def pattern(n: int) -> bytes:
    """The guest tool's pattern: byte i is ((i * 131) ^ (i >> 9)) & 0xff."""
    return bytes(((i * 131) ^ (i >> 9)) & 0xFF for i in range(n))


def fnv1a(data: bytes) -> int:
    h = 2166136261
    for b in data:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


def _recv_all(sock: socket.socket) -> bytes:
    out = bytearray()
    while chunk := sock.recv(65536):
        out += chunk
    return bytes(out)


@dataclass
class HostSide:
    results: dict[str, object] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def spawn(self, name: str, body: Callable[[], object]) -> None:
        def run() -> None:
            try:
                self.results[name] = body()
            except Exception as e:  # reported by the tests, not lost in a thread
                self.errors.append(f"{name}: {type(e).__name__}: {e}")
        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        self.threads.append(t)


@dataclass
class VsockBoot:
    result: RunResult
    host: HostSide
    report: dict[str, object]

    def line(self, step: str, port: int) -> str:
        m = re.search(rf"^VSOCK {step} {port} (.*?)\r?$", self.result.console_text, re.M)
        assert m, self.result.console_text[-3000:]
        return m.group(1)


def _echo_server(server: socket.socket) -> str:
    conn, _ = server.accept()
    with conn:
        digest = hashlib.sha256()
        while chunk := conn.recv(65536):
            digest.update(chunk)
            conn.sendall(chunk)
        conn.shutdown(socket.SHUT_WR)
    return digest.hexdigest()


def _hybrid_connect(path: str, port: int, deadline: float) -> socket.socket:
    """Firecracker's host-initiated handshake, retried until the guest listens."""
    while time.monotonic() < deadline:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        sock.sendall(b"CONNECT %d\n" % port)
        line = bytearray()
        while not line.endswith(b"\n") and (c := sock.recv(1)):
            line += c
        if line.startswith(b"OK "):
            return sock
        sock.close()
        time.sleep(GUEST_CONNECT_RETRY)
    raise TimeoutError(f"guest port {port} never accepted")


def _echo_through_guest(sock: socket.socket, data: bytes) -> str:
    def send() -> None:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    sender.start()
    back = _recv_all(sock)
    sender.join()
    sock.close()
    return hashlib.sha256(back).hexdigest() + f" {len(back)}"


def _api_connect(device: VsockDevice, port: int, deadline: float) -> socket.socket:
    while time.monotonic() < deadline:
        try:
            return device.connect(port, timeout=30)
        except VsockError:
            time.sleep(GUEST_CONNECT_RETRY)
    raise TimeoutError(f"guest port {port} never accepted")


@pytest.fixture(scope="module", params=["tiny-bzImage", "tiny-smp-bzImage"])
def vsock_boot(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> VsockBoot:
    kernel = shared_kernel_file(request.param)
    require(BUSYBOX.exists(), str(BUSYBOX), "apt-get install busybox-static")
    tmp = tmp_path_factory.mktemp("vsock")
    tool = build_tool("vsock_tool.c", tmp)
    initrd = build_initramfs(complete_tree([
        Entry.file("/init", tool.read_bytes(), 0o755),
        Entry.file("/bin/busybox", BUSYBOX.read_bytes(), 0o755),
        Entry.char_device("/dev/console", 5, 1),
    ]))
    path = str(tmp / "v.sock")
    host = HostSide()
    deadline = time.monotonic() + THREAD_TIMEOUT
    servers = {}
    for port in (ECHO_PORT, READCLOSE_PORT):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(f"{path}_{port}")
        s.listen(4)
        s.settimeout(THREAD_TIMEOUT)
        servers[port] = s
    echo_data = os.urandom(MIB)
    with Machine(kernel, initrd=initrd, memory="128M",
                 cmdline=f"console=ttyS0 reboot=k panic=-1 -- {STEPS}",
                 vsock=VsockConfig(uds_path=path)) as m:
        device = m.vsock
        assert device is not None
        many = device.listen(MANY_PORT)
        stall = device.listen(STALL_PORT)

        host.spawn("echo", lambda: _echo_server(servers[ECHO_PORT]))
        host.spawn("hybrid-listen", lambda: _echo_through_guest(
            _hybrid_connect(path, HYBRID_LISTEN_PORT, deadline), echo_data))
        host.spawn("api-listen", lambda: _echo_through_guest(
            _api_connect(device, API_LISTEN_PORT, deadline), echo_data[:65536]))

        def many_server() -> int:
            served = 0
            for _ in range(100):
                with many.accept(timeout=THREAD_TIMEOUT) as conn:
                    conn.sendall(conn.recv(1))
                served += 1
            return served
        host.spawn("many", many_server)

        def readclose_server() -> tuple[int, str]:
            conn, _ = servers[READCLOSE_PORT].accept()
            sent = 0
            try:
                while sent < 64 * MIB:
                    sent += conn.send(bytes(65536))
            except OSError as e:
                return sent, type(e).__name__
            finally:
                conn.close()
            return sent, "no error"
        host.spawn("readclose", readclose_server)

        def stall_server() -> dict[str, object]:
            conn = stall.accept(timeout=THREAD_TIMEOUT)
            last, quiet_since = -1, time.monotonic()
            while time.monotonic() - quiet_since < STALL_QUIET:  # the host does not read
                now = device.bytes_to_host
                if now != last:
                    last, quiet_since = now, time.monotonic()
                time.sleep(0.1)
            conns = [c for c in device._conns.values() if c.local_port == STALL_PORT]
            stalled = {"to_host": conns[0].fwd_cnt if conns else -1,
                       "buffered": conns[0].buffered() if conns else -1}
            data = _recv_all(conn)
            conn.close()
            return {**stalled, "received": len(data),
                    "intact": data == pattern(MIB)}
        host.spawn("stall", stall_server)

        result = m.run(timeout=BOOT_TIMEOUT)
        report = m.virtio.report()["devices"][0]
        for t in host.threads:
            t.join(timeout=30)
    for s in servers.values():
        s.close()
    host.results["echo_data"] = hashlib.sha256(echo_data).hexdigest()
    return VsockBoot(result, host, report)


def test_boot_runs_every_step(vsock_boot: VsockBoot) -> None:
    text = vsock_boot.result.console_text
    assert "VSOCK-DONE" in text, text[-3000:]
    assert "unknown-step" not in text and "failed" not in text, text[-3000:]
    assert not vsock_boot.host.errors
    assert vsock_boot.report["malformed"] == 0 and vsock_boot.report["error"] is None


def test_guest_to_host_echo_1mib_through_path_port(vsock_boot: VsockBoot) -> None:
    data = pattern(MIB)
    assert vsock_boot.host.results["echo"] == hashlib.sha256(data).hexdigest()
    assert vsock_boot.line("xfer", ECHO_PORT) == f"sent={MIB} recv={MIB} fnv={fnv1a(data):x}"


def test_host_to_guest_echo_1mib_through_connect(vsock_boot: VsockBoot) -> None:
    assert vsock_boot.host.results["hybrid-listen"] == f"{vsock_boot.host.results['echo_data']} {MIB}"
    assert vsock_boot.line("listen-echo", HYBRID_LISTEN_PORT) == f"bytes={MIB}"


def test_machine_vsock_connect(vsock_boot: VsockBoot) -> None:
    result = vsock_boot.host.results["api-listen"]
    assert isinstance(result, str) and result.endswith(" 65536")
    assert vsock_boot.line("listen-echo", API_LISTEN_PORT) == "bytes=65536"


def test_hundred_connections_open_and_close(vsock_boot: VsockBoot) -> None:
    assert vsock_boot.host.results["many"] == 100
    assert vsock_boot.line("many", MANY_PORT) == "count=100 ok=100"
    assert vsock_boot.report["connections"] == 0


def test_guest_closing_mid_transfer(vsock_boot: VsockBoot) -> None:
    outcome = vsock_boot.host.results["readclose"]
    assert isinstance(outcome, tuple)
    sent, error = outcome
    assert vsock_boot.line("readclose", READCLOSE_PORT) == "read=65536"
    assert error in ("BrokenPipeError", "ConnectionResetError") and sent < 64 * MIB


def test_host_that_stops_reading_stalls_the_guest_on_credit(vsock_boot: VsockBoot) -> None:
    stall = vsock_boot.host.results["stall"]
    assert isinstance(stall, dict)
    # held back: the device holds unread bytes, and the guest has not sent everything
    assert int(stall["buffered"]) > 0 and int(stall["to_host"]) + int(stall["buffered"]) < MIB
    assert stall["received"] == MIB and stall["intact"]  # nothing lost once the host read
    assert vsock_boot.line("xfer", STALL_PORT) == f"sent={MIB} recv=0 fnv=811c9dc5"
