"""virtio-net with passt end to end: a tiny-smp guest gets its address by DHCP from passt,
fetches a blob over HTTP with busybox wget from a server on the namespace's 127.0.0.1
through its gateway address (hash checked), and serves a line with busybox nc -l on a port
published to the host with --publish. All of
it runs in a private network namespace the test makes (loopback and a veth pair whose both
ends stay inside as the default route): nothing can leave the machine."""

from __future__ import annotations

import os
from typing import Any

import pytest

from conftest import require, require_tool, requires_kvm, shared_kernel_file
from test_net_backends import run_scenario

BLOB_BYTES = 1 << 20
GUEST_TIMEOUT = 400

pytestmark = [
    pytest.mark.slow,
    requires_kvm,
]


@pytest.fixture(autouse=True, scope="module")
def _prerequisites() -> None:
    """Root (for ``unshare --net``), unshare and passt: missing ones skip, or fail under CI."""
    require(os.geteuid() == 0, "root", "the test makes a network namespace with unshare --net")
    require_tool("unshare", "util-linux")
    require_tool("passt", "passt")


@pytest.fixture(scope="module")
def user_net_run() -> dict[str, Any]:
    kernel = shared_kernel_file("tiny-smp-bzImage")
    return run_scenario("net_guest_scenario.py", kernel, BLOB_BYTES, GUEST_TIMEOUT,
                        timeout=GUEST_TIMEOUT + 60)


def test_guest_fetches_a_blob_from_the_hosts_loopback_through_its_gateway(
        user_net_run: dict[str, Any]) -> None:
    assert user_net_run["stdout"].split()[:1] == [user_net_run["sha256"]], user_net_run
    assert user_net_run["exit_status"] == 0, user_net_run


def test_a_published_guest_port_is_reached_from_the_host(user_net_run: dict[str, Any]) -> None:
    assert user_net_run.get("published") == "vmboot-published", user_net_run
    assert "hello-guest" in user_net_run["stdout"]  # and the host's line reached the guest


@pytest.fixture(scope="module")
def passt_killed_run() -> dict[str, Any]:
    kernel = shared_kernel_file("tiny-smp-bzImage")
    return run_scenario("net_passt_kill_scenario.py", kernel, GUEST_TIMEOUT, timeout=GUEST_TIMEOUT + 60)


def test_passt_killed_mid_transfer_drops_the_guests_carrier_and_nothing_hangs(
        passt_killed_run: dict[str, Any]) -> None:
    run = passt_killed_run
    assert run["killed"], run  # passt was killed while the blob was on its way
    assert run["reason"] == "exited" and run["exit_status"] == 0, run  # the run ended
    received = int(run["stdout"].split()[0])  # wc -c of what wget got before passt died
    assert received < 64 << 20 and "carrier=0" in run["stdout"], run
    down = [line for line in run["logged"] if "link down" in line]
    assert len(down) == 1 and "passt" in down[0], run["logged"]
