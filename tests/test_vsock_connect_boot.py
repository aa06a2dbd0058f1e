"""Host-started vsock connections to a real Linux guest that refuses them or cannot answer
(slow: one boot of tiny-smp-bzImage serves every check).

The guest's /init is ``tests/guest/vsock_tool.c`` with one step, ``listen-echo``: it
listens on :data:`LISTEN_PORT`, echoes one connection and powers off. While it runs, a host
thread connects to it, then to a port nothing listens on (the guest resets the request:
a refusal), then, with every vCPU stopped (``Machine.when_stopped``: the guest cannot
answer anything), to a third port through ``Machine.vsock.connect`` and to a fourth through
the hybrid socket's ``CONNECT``. Both end at the connect timeout; the guest then resumes,
gets the stale requests (and their resets), and still echoes on the first connection.

The tool closes the echoed connection lingering before it reboots: on this uniprocessor
guest a plain close() can return with the echo still queued for the kernel's vsock
transmit worker, and the reboot then resets the device before the worker has run (the
host saw only the EOF of that reset, though the guest printed that it wrote the bytes).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import require, requires_kvm, shared_kernel_file
from nolibc_tool import build_tool
from vmboot.devices.virtio.vsock import VsockDevice
from vmboot.devices.virtio.vsock_host import VsockConfig, VsockError, VsockRefused, VsockTimeout
from vmboot.initramfs.builders import build_initramfs, complete_tree
from vmboot.initramfs.entry import Entry
from vmboot.vmm.machine import Machine, RunResult

pytestmark = [pytest.mark.slow, requires_kvm]

BUSYBOX = Path("/bin/busybox")
BOOT_TIMEOUT = 900
LISTEN_PORT, CLOSED_PORT, API_SILENT_PORT, HYBRID_SILENT_PORT = 7000, 7001, 7002, 7003
API_TIMEOUT = 2.0
HYBRID_TIMEOUT = 3.0
"""The device's connect timeout in this test (``VsockConfig.connect_timeout``)."""
RETRY = 0.2
STOPPED_WAIT = 300.0
"""Seconds the host thread waits for its work with the vCPUs stopped to be done."""
PING = b"ping through a guest that was stopped"


@dataclass
class Outcome:
    result: RunResult
    device: dict[str, object]
    seen: dict[str, object] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _connect_when_listening(device: VsockDevice, deadline: float) -> socket.socket:
    while time.monotonic() < deadline:
        try:
            return device.connect(LISTEN_PORT, timeout=60)
        except VsockRefused:
            time.sleep(RETRY)  # not listening yet
    raise TimeoutError(f"guest port {LISTEN_PORT} never accepted")


def _while_stopped(device: VsockDevice, path: str, seen: dict[str, object]) -> None:
    """Runs with every vCPU stopped: the guest answers nothing."""
    try:
        device.connect(API_SILENT_PORT, timeout=API_TIMEOUT)
        seen["api"] = "connected"
    except VsockError as e:
        seen["api"] = e
    hybrid = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        hybrid.connect(path)
        hybrid.sendall(b"CONNECT %d\n" % HYBRID_SILENT_PORT)
        hybrid.settimeout(STOPPED_WAIT)
        seen["hybrid"] = hybrid.recv(64)
    finally:
        hybrid.close()
    seen["timeouts_while_stopped"] = device.connect_timeouts


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    kernel = shared_kernel_file("tiny-smp-bzImage")
    require(BUSYBOX.exists(), str(BUSYBOX), "apt-get install busybox-static")
    tmp = tmp_path_factory.mktemp("vsock-connect")
    tool = build_tool("vsock_tool.c", tmp)
    initrd = build_initramfs(complete_tree([
        Entry.file("/init", tool.read_bytes(), 0o755),
        Entry.char_device("/dev/console", 5, 1),
    ]))
    path = str(tmp / "v.sock")
    seen: dict[str, object] = {}
    errors: list[str] = []
    with Machine(kernel, initrd=initrd, memory="128M",
                 cmdline=f"console=ttyS0 reboot=k panic=-1 -- listen-echo {LISTEN_PORT}",
                 vsock=VsockConfig(uds_path=path, connect_timeout=HYBRID_TIMEOUT)) as m:
        device = m.vsock
        assert device is not None

        def host() -> None:
            try:
                conn = _connect_when_listening(device, time.monotonic() + BOOT_TIMEOUT)
                try:
                    device.connect(CLOSED_PORT, timeout=60)
                    seen["closed"] = "connected"
                except VsockError as e:
                    seen["closed"] = e
                done = threading.Event()

                def stopped() -> None:
                    try:
                        _while_stopped(device, path, seen)
                    finally:
                        done.set()

                m.when_stopped(stopped)
                assert done.wait(STOPPED_WAIT), "the work with the vCPUs stopped never ran"
                conn.settimeout(60)
                conn.sendall(PING)
                conn.shutdown(socket.SHUT_WR)
                echoed = bytearray()
                while chunk := conn.recv(4096):
                    echoed += chunk
                seen["echo"] = bytes(echoed)
                conn.close()
            except Exception as e:  # reported by the tests, not lost in a thread
                errors.append(f"{type(e).__name__}: {e}")

        thread = threading.Thread(target=host, daemon=True)
        thread.start()
        result = m.run(timeout=BOOT_TIMEOUT)
        thread.join(60)
        report = m.virtio.report()["devices"][0]
    return Outcome(result, report, seen, errors)


def test_the_host_thread_finished(outcome: Outcome) -> None:
    assert not outcome.errors, outcome.errors
    assert re.search(rf"^VSOCK listen-echo {LISTEN_PORT} bytes={len(PING)}\r?$",
                     outcome.result.console_text, re.M), outcome.result.console_text[-3000:]


def test_a_port_nothing_listens_on_is_refused(outcome: Outcome) -> None:
    refused = outcome.seen["closed"]
    assert isinstance(refused, VsockRefused), refused
    assert f"guest port {CLOSED_PORT}: refused" in str(refused)


def test_connect_to_a_guest_that_cannot_answer_times_out(outcome: Outcome) -> None:
    err = outcome.seen["api"]
    assert isinstance(err, VsockTimeout), err
    assert f"guest port {API_SILENT_PORT}: no answer within {API_TIMEOUT:g} s" in str(err)


def test_hybrid_connect_to_a_guest_that_cannot_answer_is_closed(outcome: Outcome) -> None:
    assert outcome.seen["hybrid"] == b""  # closed at the timeout; no OK line
    assert outcome.seen["timeouts_while_stopped"] == 2
    assert outcome.device["connect_timeouts"] == 2


def test_the_guest_still_serves_after_the_stale_requests(outcome: Outcome) -> None:
    assert outcome.seen["echo"] == PING
    assert outcome.device["connections"] == 0 and outcome.device["malformed"] == 0
    assert outcome.device["reset_drops"] == 0  # closed before the reboot reset the device
