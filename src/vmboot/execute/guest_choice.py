"""Which kernel and busybox a ``vmboot exec`` guest gets when the caller names none.

Busybox, in this order: the caller's path, ``$VMBOOT_BUSYBOX``, the embedded one
(:mod:`vmboot.execute.default_guest`), a static busybox already on this host
(:func:`vmboot.execute.discovery.find_busybox`), and else Debian's busybox-static fetched into the
vmboot cache on first use, saying so in one line (with the cache path) through
``progress``.

The kernel: see :func:`vmboot.execute.discovery.find_kernel` (the embedded kernel comes right after
the explicit choices, ``kernel=`` and ``$VMBOOT_KERNEL``, before the cache and ``/boot``);
when it finds none, the newest Debian cloud kernel is fetched into the cache on first use,
said the same way.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from vmboot.errors import FetchError, KernelImageError
from vmboot.execute.cache import BUSYBOX_SUBDIR, KERNELS_SUBDIR, cache_subdir
from vmboot.execute.default_guest import GUEST_IMAGE_DIR, shipped_busybox
from vmboot.execute.discovery import KERNEL_ENV, check_static_busybox, find_busybox, find_kernel

BUSYBOX_ENV = "VMBOOT_BUSYBOX"

Progress = Callable[[str], object]


def stderr_progress(line: str) -> None:
    """The default ``progress``: one line on stderr."""
    print(f"vmboot: {line}", file=sys.stderr, flush=True)


def choose_busybox(explicit: str | Path | None = None, *, environ: Mapping[str, str] | None = None,
                   guest_image: Path = GUEST_IMAGE_DIR,
                   progress: Progress = stderr_progress) -> Path:
    """The static busybox for the guest (see the module docstring for the order)."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        return check_static_busybox(Path(explicit))
    from_env = env.get(BUSYBOX_ENV)
    if from_env:
        path = Path(from_env)
        if not path.is_file():
            raise FetchError(f"${BUSYBOX_ENV}={from_env!r}: no such file (valid: the path of a static "
                             f"x86-64 busybox; unset it to use the one vmboot ships)")
        return check_static_busybox(path)
    shipped = shipped_busybox(guest_image)
    if shipped is not None:
        return shipped
    try:
        return find_busybox()
    except FetchError:
        from vmboot.execute.fetch import fetch_busybox  # tarfile, urllib: only to download

        progress(f"no static busybox on this host: fetching Debian's busybox-static into "
                 f"{cache_subdir(BUSYBOX_SUBDIR)} (once)")
        return fetch_busybox()


def choose_kernel(explicit: str | Path | None = None, *, progress: Progress = stderr_progress) -> Path:
    """The kernel to boot: ``explicit``, else :func:`~vmboot.execute.discovery.find_kernel`, else fetched."""
    if explicit is not None:
        return Path(explicit)
    if os.environ.get(KERNEL_ENV):
        return find_kernel()  # the user's choice: an error when it is wrong, never a download
    try:
        return find_kernel()
    except KernelImageError:
        from vmboot.execute.fetch import fetch_debian_kernel

        progress(f"no kernel to boot: fetching the newest Debian cloud kernel into "
                 f"{cache_subdir(KERNELS_SUBDIR)} (once)")
        return fetch_debian_kernel()
