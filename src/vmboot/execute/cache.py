"""Where vmboot keeps what it downloads (busybox, Debian kernels).

:func:`cache_dir` is ``$VMBOOT_CACHE`` if set, else ``$XDG_CACHE_HOME/vmboot``, else
``~/.cache/vmboot``. Layout::

    <cache>/busybox/busybox                     static x86-64 busybox (vmboot fetch busybox)
    <cache>/busybox/SOURCE                      the .deb it came from
    <cache>/debian-kernels/<ABI>/boot/vmlinuz-<ABI>-cloud-amd64   (vmboot fetch kernel;
                                                same layout as scripts/fetch-debian-kernel.sh)
    <cache>/kernel-drivers/<key>.json           the exec channels' drivers a kernel file has
                                                (vmboot.execute.channel)

Nothing here is created until something is stored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from vmboot.errors import FetchError

CACHE_ENV = "VMBOOT_CACHE"
XDG_CACHE_ENV = "XDG_CACHE_HOME"
CACHE_NAME = "vmboot"
BUSYBOX_SUBDIR = "busybox"
KERNELS_SUBDIR = "debian-kernels"


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The cache root (not created)."""
    env = os.environ if environ is None else environ
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV])
    if env.get(XDG_CACHE_ENV):
        return Path(env[XDG_CACHE_ENV]) / CACHE_NAME
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".cache" / CACHE_NAME


def cache_subdir(name: str, *, create: bool = False) -> Path:
    """``<cache>/<name>``, made (with parents) when ``create``."""
    path = cache_dir() / name
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FetchError(
                f"cache directory {path}: cannot create it: {e.strerror} "
                f"(set ${CACHE_ENV} to a writable directory)"
            ) from None
    return path
