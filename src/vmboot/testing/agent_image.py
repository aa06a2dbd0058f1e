"""The initramfs of a test's guest: the guest agent as ``/init``, busybox and its applets.

It is :func:`vmboot.execute.image.agent_initramfs` (the agent mounts /proc, /sys, /dev and
/tmp as PID 1 and serves commands over the virtio-console port
:data:`~vmboot.vmm.guest_agent.AGENT_PORT`) with a link in ``/bin`` for every busybox
applet (the list comes from running the static busybox on the host with ``--list``), so
commands find ``sh``, ``ls``, ``cat``... on :data:`GUEST_PATH` as on any system, and a
home directory. The image is uncompressed: the guest decompresses nothing.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from vmboot.execute.image import agent_initramfs

GUEST_PATH = "/bin:/sbin:/usr/bin:/usr/sbin"
"""``PATH`` of the commands the ``vm`` fixture runs (unless the test gives an environment)."""
GUEST_HOME = "/root"
LIST_TIMEOUT = 30.0
"""Seconds ``busybox --list`` may take on the host."""


@functools.lru_cache(maxsize=4)
def busybox_applets(busybox: Path) -> tuple[str, ...]:
    """The applets ``busybox`` has (only ``sh`` when it cannot run on this host)."""
    try:
        out = subprocess.run([str(busybox), "--list"], capture_output=True, text=True,
                             timeout=LIST_TIMEOUT, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ("sh",)
    names = {line.strip() for line in out.splitlines()}
    return tuple(sorted(n for n in names if n and "/" not in n and n != "busybox"))


def build_agent_initramfs(busybox: Path) -> bytes:
    """The guest's initramfs; ``busybox`` must be a static x86-64 busybox."""
    return agent_initramfs([], busybox, applets=busybox_applets(busybox),
                           directories=(GUEST_HOME,))
