"""A guest with virtio-net over passt is saved and restored: the restored machine starts a
fresh passt, the guest keeps its address, and fetches a blob over HTTP from a server on the
namespace's 127.0.0.1 through its gateway (hash checked). All of it runs in a private
network namespace the test makes (loopback and a veth pair whose both ends stay inside as
the default route): nothing can leave the machine."""

from __future__ import annotations

import os
from typing import Any

import pytest

from conftest import require, require_tool, requires_kvm, shared_kernel_file
from test_net_backends import run_scenario

BLOB_BYTES = 1 << 20
GUEST_TIMEOUT = 600

pytestmark = [pytest.mark.slow, requires_kvm]


@pytest.fixture(scope="module")
def restored_run() -> dict[str, Any]:
    require(os.geteuid() == 0, "root", "the test makes a network namespace with unshare --net")
    require_tool("unshare", "util-linux")
    require_tool("passt", "passt")
    kernel = shared_kernel_file("tiny-smp-bzImage")
    return run_scenario("net_snapshot_scenario.py", kernel, BLOB_BYTES, GUEST_TIMEOUT,
                        timeout=2 * GUEST_TIMEOUT + 60)


def test_a_restored_guest_keeps_its_address(restored_run: dict[str, Any]) -> None:
    before = restored_run["address_before"]
    assert before.startswith("10.0.2.") and restored_run["address_after"] == before, restored_run


def test_a_restored_guest_fetches_a_blob_through_a_fresh_passt(
        restored_run: dict[str, Any]) -> None:
    assert restored_run["exit_status"] == 0 and not restored_run["timed_out"], restored_run
    assert restored_run["stdout"].split()[:1] == [restored_run["sha256"]], restored_run
