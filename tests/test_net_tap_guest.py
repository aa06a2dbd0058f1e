"""virtio-net over a TAP device end to end, in a private network namespace the test makes
(loopback, a veth pair kept inside, and the TAP made with ``vmboot net tap-create``'s own
``ip`` commands): a tiny-smp guest on ``--net tap=NAME`` pings the namespace's address and
receives a 64 MiB random blob over TCP, hashed in the guest straight from the socket
(``nc -e busybox sha256sum``), the hash sent back and checked."""

from __future__ import annotations

import os
from typing import Any

import pytest

from conftest import require, require_tool, requires_kvm, shared_kernel_file
from test_net_backends import run_scenario
from vmboot.net.tap_create import render, tap_create_commands

TAP = "vmbt-tap"
BLOB_BYTES = 64 << 20
GUEST_TIMEOUT = 600

pytestmark = [
    pytest.mark.slow,
    requires_kvm,
]


@pytest.fixture(autouse=True, scope="module")
def _prerequisites() -> None:
    """Root (for ``unshare --net``), unshare and ip: missing ones skip, or fail under CI."""
    require(os.geteuid() == 0, "root", "the test makes a network namespace with unshare --net")
    require_tool("unshare", "util-linux")
    require_tool("ip", "iproute2")


@pytest.fixture(scope="module")
def tap_run() -> dict[str, Any]:
    kernel = shared_kernel_file("tiny-smp-bzImage")
    make_tap = render(tap_create_commands(TAP, address="172.30.0.1/24"))
    return run_scenario("net_tap_scenario.py", kernel, TAP, BLOB_BYTES, GUEST_TIMEOUT,
                        timeout=GUEST_TIMEOUT + 60, before=make_tap)


def test_the_guest_pings_the_namespace_through_the_tap(tap_run: dict[str, Any]) -> None:
    assert "2 packets transmitted, 2 packets received" in tap_run["stdout"], tap_run


def test_a_blob_over_tcp_arrives_whole(tap_run: dict[str, Any]) -> None:
    assert tap_run["guest_sha256"].split() == [tap_run["sha256"], "-"], tap_run
    assert tap_run["exit_status"] == 0, tap_run
