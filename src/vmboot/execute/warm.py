"""Warm ``vmboot exec``: a guest booted once, saved ready for a command, resumed per run.

The first warm run of a (kernel, busybox, memory, CPUID policy, entry) boots the warm exec
image (:func:`vmboot.execute.image.warm_initramfs`: no command inside), waits for
``VMBOOT-READY`` on the status channel and saves the guest to
``<cache>/snapshots/exec-<key>.snap``. Every warm run then restores that file (memory
mapped copy-on-write, so runs share it and never change it) and types the command into the
status channel; the protocol is otherwise the cold one's. The key hashes everything the
saved guest depends on, vmboot's version included, so a changed kernel or vmboot gets a
new snapshot instead of a refusal.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from vmboot.devices.console import ConsoleOutput
from vmboot.errors import GuestError
from vmboot.execute.cache import cache_subdir
from vmboot.execute.image import STATUS_READY
from vmboot.version import __version__
from vmboot.vmm.console_wait import ConsoleWaiter

if TYPE_CHECKING:
    from vmboot.linux.options import EntryChoice

SNAPSHOTS_SUBDIR = "snapshots"
WARM_BOOT_TIMEOUT = 600.0
"""Limit for the one boot that makes a warm snapshot (when the run itself has none)."""


def warm_key(kernel: Path, initrd: bytes, memory: str | int, cpuid_policy: str,
             entry: str) -> str:
    h = hashlib.sha256()
    with open(kernel, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(hashlib.sha256(initrd).digest())
    h.update(json.dumps([str(memory), cpuid_policy, entry, __version__]).encode())
    return h.hexdigest()[:32]


def warm_snapshot(kernel: Path, initrd: bytes, *, memory: str | int, cpuid_policy: str,
                  entry: EntryChoice, timeout: float | None) -> Path:
    """The cached snapshot of the warm exec guest for these inputs (made now if missing)."""
    from vmboot.config import MachineConfig
    from vmboot.devices.serial import COM2, COM3, COM4
    from vmboot.execute.image import EXEC_CMDLINE, EXEC_SERIAL_PORTS
    from vmboot.vmm.machine import Machine

    path = (cache_subdir(SNAPSHOTS_SUBDIR, create=True)
            / f"exec-{warm_key(kernel, initrd, memory, cpuid_policy, entry)}.snap")
    if path.exists():
        return path
    status = ConsoleWaiter()
    config = MachineConfig(kernel, initrd=initrd, cmdline=EXEC_CMDLINE, memory=memory,
                           cpuid_policy=cpuid_policy,  # type: ignore[arg-type]
                           entry=entry, serial_ports=EXEC_SERIAL_PORTS)
    machine = Machine.from_config(config, on_panic=None, serial_outputs={
        COM2.name: ConsoleOutput(), COM3.name: ConsoleOutput(), COM4.name: ConsoleOutput(status)})
    status.attach(machine)
    with machine:
        try:
            status.run_until(STATUS_READY, timeout or WARM_BOOT_TIMEOUT)
        except GuestError as e:
            console = machine.console.text()[-2000:]
            raise GuestError(f"warm exec: the guest did not get ready ({e}); console:\n"
                             f"{console}") from None
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        machine.snapshot(tmp)
        os.replace(tmp, path)
    return path
