"""Run inside a private network namespace (see test_net_snapshot.py): a tiny-smp guest with
``--net user`` (passt; the kernel configures eth0 by DHCP) and the guest agent boots, is
saved, and is restored into a new machine whose network is a fresh passt; the restored
guest then fetches a blob with busybox ``wget`` from an HTTP server on the namespace's
127.0.0.1 through its gateway address and prints its SHA-256. Prints one JSON object: the
blob's hash, eth0's address before the snapshot and after the restore, the command's
output and status, and the console's end."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

from net_guest_scenario import BLOB_PORT, GATEWAY, serve_blob
from vmboot.execute.default_guest import shipped_busybox
from vmboot.execute.image import agent_initramfs
from vmboot.execute.warm import shell_argv, warm_cmdline
from vmboot.net.config import NetConfig
from vmboot.vmm.machine import Machine

ADDRESS = ["sh", "-c", "ip -4 -o addr show dev eth0 | awk '{print $4}'"]


def machine(kernel: str, initrd: bytes) -> Machine:
    return Machine(kernel, initrd=initrd, cmdline=warm_cmdline(), memory="256M", agent=True,
                   net=NetConfig("user", kernel_dhcp=True), on_panic=None)


def main() -> None:
    kernel, size, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    blob = os.urandom(size)
    serve_blob(blob)
    busybox = shipped_busybox()
    assert busybox is not None, "no shipped busybox"
    initrd = agent_initramfs([], busybox)
    out: dict[str, object] = {"sha256": hashlib.sha256(blob).hexdigest()}
    with tempfile.TemporaryDirectory(prefix="vmboot-net-snapshot-") as tmp:
        path = Path(tmp) / "guest.snap"
        with machine(kernel, initrd) as booted:
            before = booted.exec(shell_argv(ADDRESS), env={}, ready_timeout=timeout,
                                 timeout=timeout)
            out["address_before"] = before.stdout.decode(errors="replace").strip()
            booted.snapshot(path)
        restored = machine(kernel, initrd)
        with restored.restore(path):
            after = restored.exec(shell_argv(ADDRESS), env={}, timeout=timeout)
            out["address_after"] = after.stdout.decode(errors="replace").strip()
            command = f"wget -q -O - http://{GATEWAY}:{BLOB_PORT}/blob | sha256sum"
            fetched = restored.exec(shell_argv(["sh", "-c", command]), env={}, timeout=timeout)
            out.update(stdout=fetched.stdout.decode(errors="replace"),
                       stderr=fetched.stderr.decode(errors="replace"),
                       exit_status=fetched.exit_status, timed_out=fetched.timed_out)
        out["console"] = restored.console.text()[-3000:]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
