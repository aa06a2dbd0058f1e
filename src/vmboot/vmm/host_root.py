"""The host's root file system as the guest's root (``Machine(rootfs="/")``).

The kernel mounts the host's ``/``, shared read-only over virtio-fs, as its root
(``rootfstype=virtiofs root=TAG ro``) and starts the guest agent as init: the agent's path
is that of the ``vmboot-agent`` binary inside this installed vmboot package, which the
guest sees at the same path. The agent mounts /proc, /sys, /dev and a tmpfs on /tmp and on
each of :data:`TMPFS_DIRS`, the places commands commonly write to.
"""

from __future__ import annotations

import os
from pathlib import Path

from vmboot.agent import agent_binary
from vmboot.devices.virtio.share import ROOT_TAG, Share
from vmboot.errors import UsageError

HOST_ROOT = Path("/")
TMPFS_DIRS = ("/run", "/var/tmp")
"""Writable (tmpfs, empty) in the guest besides /tmp, which the agent always mounts."""
GUEST_TMPFS = ("/tmp", *TMPFS_DIRS)
"""Every directory the guest replaces with an empty tmpfs."""


def hidden_in_guest(path: str) -> str | None:
    """The tmpfs directory that hides ``path`` in the guest, if one does."""
    real = os.path.realpath(path)
    for top in GUEST_TMPFS:
        if real == top or real.startswith(top + "/"):
            return top
    return None


def host_root_share(rootfs: str | Path, initrd: object) -> Share:
    """The read-only share of the host's root; refuses what cannot work with it."""
    if Path(os.path.realpath(rootfs)) != HOST_ROOT:
        raise UsageError(f"rootfs: {str(rootfs)!r} is not supported; only '/' (the host's own "
                         "root, where the guest agent is found at its host path)")
    if initrd is not None:
        raise UsageError("rootfs: an initrd was given too; with rootfs='/' the guest boots "
                         "straight into the host's root (drop the initrd)")
    agent = agent_binary()
    if not os.access(agent, os.X_OK):
        raise UsageError(f"rootfs: the guest agent {agent} is missing or not executable; "
                         "reinstall vmboot or rebuild it with python -m vmboot.agent.build")
    return Share(HOST_ROOT, ROOT_TAG, read_only=True)


def host_root_cmdline() -> str:
    """Kernel parameters that mount the share as the root and start the agent on it."""
    return (f"rootfstype=virtiofs root={ROOT_TAG} ro init={agent_binary()} "
            f"vmboot.agent.tmpfs={','.join(TMPFS_DIRS)}")
