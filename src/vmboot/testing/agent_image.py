"""The initramfs of a test's guest: the guest agent as ``/init``, busybox and its applets.

The agent (:mod:`vmboot.agent`) mounts /proc, /sys, /dev and /tmp as PID 1 and serves
commands over the virtio-console port :data:`~vmboot.vmm.guest_agent.AGENT_PORT`. Every
busybox applet gets a link in ``/bin`` (the list comes from running the static busybox on
the host with ``--list``), so commands find ``sh``, ``ls``, ``cat``... on
:data:`GUEST_PATH` as on any system. The image is uncompressed: the guest decompresses
nothing.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from vmboot.agent import agent_binary
from vmboot.execute.image import (
    BUSYBOX_PATH,
    CONSOLE_MAJOR,
    CONSOLE_MINOR,
    CONSOLE_PATH,
    INIT_PATH,
    MOUNT_POINTS,
    SHELL_PATH,
    TMP_DIR,
    TMP_MODE,
)
from vmboot.initramfs.builders import build_initramfs, complete_tree
from vmboot.initramfs.entry import DEFAULT_EXECUTABLE_MODE, Entry

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


def agent_entries(busybox: Path) -> list[Entry]:
    """The image's entries (directories made complete by :func:`build_agent_initramfs`)."""
    bin_dir = BUSYBOX_PATH.rsplit("/", 1)[0]
    links = {f"{bin_dir}/{name}" for name in busybox_applets(busybox)} | {SHELL_PATH}
    return [
        *(Entry.directory(d) for d in MOUNT_POINTS),
        Entry.directory(TMP_DIR, TMP_MODE),
        Entry.directory(GUEST_HOME.lstrip("/")),
        Entry.char_device(CONSOLE_PATH, CONSOLE_MAJOR, CONSOLE_MINOR),
        Entry.host_file(INIT_PATH, agent_binary(), DEFAULT_EXECUTABLE_MODE),
        Entry.host_file(BUSYBOX_PATH, busybox, DEFAULT_EXECUTABLE_MODE),
        *(Entry.symlink(link, "busybox") for link in sorted(links)),
    ]


def build_agent_initramfs(busybox: Path) -> bytes:
    """The guest's initramfs; ``busybox`` must be a static x86-64 busybox."""
    from vmboot.execute.discovery import check_static_busybox

    check_static_busybox(busybox)
    return build_initramfs(complete_tree(agent_entries(busybox)), compression="none")
