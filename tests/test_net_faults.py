"""virtio-net when things go wrong: passt killed while frames flow (the link goes down with
a configuration interrupt and one log line; nothing waits), a TAP device that is missing or
cannot carry the vnet header (a clear error before anything boots), and a guest flooding
oversized frames (each dropped and counted, the device goes on, memory stays flat)."""

from __future__ import annotations

import fcntl
import os
import sys
import tracemalloc

import pytest

from conftest import require, require_tool, shared_kernel_file
from test_net_backends import in_namespace, needs_netns, netns_tools, python
from test_virtio_net import HDR, FakeBackend, _add_rx, _frame, _net, _transmit
from vmboot.devices.virtio.net import RX, TX
from vmboot.net import tap
from vmboot.net.backend import NetBackendError

FLOOD = 2000
"""Oversized frames per direction in the flood."""


@needs_netns
def test_passt_killed_mid_transfer_takes_the_link_down_in_one_line() -> None:
    require_tool("passt", "passt")
    done = in_namespace(python("""
        import logging, os, signal, sys
        sys.path.insert(0, "tests")
        from test_virtio_net import HDR, _add_rx, _frame, _transmit
        from virtio_support import rig
        from vmboot.devices.virtio import spec
        from vmboot.devices.virtio.net import NetDevice, RX
        from vmboot.net.passt import PasstBackend
        logging.basicConfig(level=logging.WARNING, format="LOG %(message)s")
        backend = PasstBackend()
        dev = NetDevice(backend, bytes.fromhex("020000000001"))
        r = rig(dev)
        _add_rx(r, 4)
        _transmit(r, bytes(HDR) + _frame(64))  # frames flow to passt
        print("SENT", dev.counters["tx_frames"])
        os.kill(backend.pid, signal.SIGKILL)
        os.waitid(os.P_PID, backend.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped
        r.transport.process(RX)  # the socket is readable: end of stream
        print("LINK", dev.link_up, bool(r.transport.interrupt_status
                                         & spec.INTERRUPT_CONFIG_CHANGE))
        _transmit(r, bytes(HDR) + _frame(64))
        print("AFTER", dev.counters["tx_dropped"], dev.describe()["link"])
        dev.close()
    """))
    assert "SENT 1" in done.stdout, done
    assert "LINK False True" in done.stdout, done
    assert "AFTER 1 down" in done.stdout, done
    logged = [line for line in done.stderr.splitlines() if line.startswith("LOG ")]
    assert len(logged) == 1, done.stderr
    assert "link down: passt: the connection" in logged[0]
    assert "(passt exited with status -9)" in logged[0]


@needs_netns
def test_run_with_a_missing_tap_fails_before_boot_with_one_line() -> None:
    kernel = shared_kernel_file("tiny-bzImage")
    done = in_namespace(f"{sys.executable} -m vmboot run {kernel} --timeout 60 "
                        "--net tap=vmbt-none || echo STATUS $?\n")
    err = [line for line in done.stderr.splitlines() if line.strip()]
    assert "STATUS" in done.stdout and "Linux version" not in done.stdout, done  # no boot
    assert len(err) == 1 and "there is no interface 'vmbt-none'" in err[0], done.stderr


def test_a_tun_driver_without_the_vnet_header_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    require(os.path.exists(tap.TUN_DEVICE) and os.access(tap.TUN_DEVICE, os.R_OK | os.W_OK),
            tap.TUN_DEVICE, "the TUN driver, readable and writable (modprobe tun; run as root)")
    real_ioctl = fcntl.ioctl

    def ioctl(fd: int, request: int, arg: bytes | int = 0) -> bytes | int:
        if request == tap.TUNGETFEATURES:
            return (tap.IFF_TAP | tap.IFF_NO_PI).to_bytes(4, "little")  # no IFF_VNET_HDR
        return real_ioctl(fd, request, arg)

    monkeypatch.setattr(fcntl, "ioctl", ioctl)
    with pytest.raises(NetBackendError, match="lacks IFF_VNET_HDR"):
        tap.TapBackend("lo")  # an interface every namespace has; refused before TUNSETIFF


def test_a_flood_of_oversized_frames_is_dropped_counted_and_memory_stays_flat() -> None:
    backend = FakeBackend()
    r, dev = _net(backend)
    oversized = bytes(HDR) + _frame(60000)  # no TSO negotiated: the limit is 1518

    def flood(count: int) -> None:
        for _ in range(count):
            _transmit(r, oversized)
            r.queues[TX].take_used()
            backend.inbound.append(_frame(70000))  # from the backend: over any limit
            r.transport.process(RX)

    _add_rx(r, 1)  # room the oversized frames never take
    flood(FLOOD // 10)  # warm up: first-use allocations
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    flood(FLOOD)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert dev.counters["tx_oversized"] == FLOOD + FLOOD // 10
    assert dev.counters["rx_dropped"] == FLOOD + FLOOD // 10
    assert grown < len(oversized)  # not one frame's worth kept, let alone FLOOD of them
    _transmit(r, bytes(HDR) + _frame(64))  # the device goes on
    assert backend.sent == [_frame(64)] and not r.needs_reset
    backend.inbound.append(_frame(80))
    r.transport.process(RX)
    assert [n for _, n in r.queues[RX].take_used()] == [HDR + 80]
    assert dev.link_up


__all__ = ["netns_tools"]  # the fixture behind needs_netns


