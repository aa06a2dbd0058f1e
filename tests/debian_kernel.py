"""A real distribution kernel for tests: Debian's cloud-amd64 kernel, fetched with apt-get.

``debian_kernel()`` returns the vmlinuz (a bzImage) and ``debian_vmlinux_dbg()`` the full
vmlinux from the matching ``-dbg`` package, both unpacked by ``scripts/fetch-debian-kernel.sh``
into ``$VMBOOT_CACHE/debian-kernels`` (default ``~/.cache/vmboot/debian-kernels``). Each
returns None when the file cannot be had (no apt-get, no network, package not in the apt
sources); ``skip_reason()`` then says why, for ``conftest.missing`` (a skip, or a failure
under CI)::

    path = debian_kernel()
    if path is None:
        missing("the Debian cloud kernel", skip_reason())

The first call downloads (~27 MB for the kernel, ~280 MB for -dbg); later calls only look in
the cache. Set ``VMBOOT_OFFLINE=1`` to never download.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FETCH_SCRIPT = REPO / "scripts" / "fetch-debian-kernel.sh"
FETCH_TIMEOUT_S = 1800

_reasons: dict[str, str] = {}


def cache_dir() -> Path:
    """The directory holding one subdirectory per Debian kernel ABI (e.g. ``6.1.0-56``)."""
    root = os.environ.get("VMBOOT_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "vmboot"
    return base / "debian-kernels"


def skip_reason() -> str:
    """Why the last lookup returned None (empty if none failed)."""
    return "; ".join(f"{k}: {v}" for k, v in _reasons.items())


def _cached(pattern: str) -> Path | None:
    hits = sorted(cache_dir().glob(pattern))
    return hits[-1] if hits else None


def _fetch(with_dbg: bool) -> str | None:
    """Run the fetch script; None on success, else the reason it failed."""
    if os.environ.get("VMBOOT_OFFLINE"):
        return "VMBOOT_OFFLINE is set, not downloading"
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return "apt-get/dpkg-deb not available on this host"
    cmd = ["bash", str(FETCH_SCRIPT)] + ([] if with_dbg else ["--no-dbg"])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{FETCH_SCRIPT.name} failed: {exc}"
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"{FETCH_SCRIPT.name} exited {proc.returncode}: {tail}"
    return None


@functools.cache
def debian_kernel() -> Path | None:
    """The Debian cloud kernel's vmlinuz, downloading it on first use; None if unavailable."""
    pattern = "*/boot/vmlinuz-*-cloud-amd64"
    found = _cached(pattern)
    if found is None:
        reason = _fetch(with_dbg=False)
        found = _cached(pattern)
        if found is None:
            _reasons["debian_kernel"] = reason or f"no {pattern} under {cache_dir()} after fetching"
    return found


@functools.cache
def debian_vmlinux_dbg() -> Path | None:
    """The full vmlinux (with .symtab) from the matching -dbg package; None if unavailable."""
    pattern = "*/usr/lib/debug/boot/vmlinux-*-cloud-amd64"
    found = _cached(pattern)
    if found is None:
        reason = _fetch(with_dbg=True)
        found = _cached(pattern)
        if found is None:
            _reasons["debian_vmlinux_dbg"] = reason or (
                f"no {pattern} under {cache_dir()} after fetching (is the -dbg package in the apt sources?)"
            )
    return found


def debian_system_map() -> Path | None:
    """The System.map shipped next to the vmlinuz (Debian's is a placeholder), or None."""
    kernel = debian_kernel()
    if kernel is None:
        return None
    path = kernel.with_name(kernel.name.replace("vmlinuz-", "System.map-"))
    return path if path.exists() else None
