"""The embedded default guest: the kernel and busybox that ship inside the vmboot package.

``vmboot exec`` boots them when the user names no kernel (``--kernel``, ``$VMBOOT_KERNEL``)
and no busybox, so that ``pip install vmboot && vmboot exec -- uname -a`` needs nothing
else on the machine but ``/dev/kvm`` (as libkrun ships libkrunfw).

The files live in the ``vmboot.guest_image`` package directory::

    bzImage          Linux 6.1 (Debian linux-source-6.1, nine small patches, "tiny-smp" config)
    busybox          Debian's busybox-static, unmodified
    SHA256SUMS       sha256sum of bzImage and busybox
    VERSIONS         "name version" lines: kernel, linux-source-6.1, busybox-static, gcc, ...
    SOURCES          where the exact sources are (the GPL-2.0 source offer)
    kernel.config    the kernel's .config
    COPYING.linux    the kernel's licence
    COPYING.busybox  busybox's licence (Debian's copyright file)
    build.sh         rebuilds all of the above from the pinned sources (Debian 12, root)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from vmboot.errors import FetchError

GUEST_IMAGE_DIR = Path(__file__).resolve().parent.parent / "guest_image"
"""The directory of the embedded guest's files."""

KERNEL_NAME = "bzImage"
BUSYBOX_NAME = "busybox"
"""busybox's file name, here, on ``$PATH`` and in the cache."""
CHECKSUMS_NAME = "SHA256SUMS"
VERSIONS_NAME = "VERSIONS"
SOURCES_NAME = "SOURCES"
BUILD_SCRIPT_NAME = "build.sh"
LICENCE_NAMES = ("COPYING.linux", "COPYING.busybox")
CHECKSUMMED = (KERNEL_NAME, BUSYBOX_NAME)
"""The files ``SHA256SUMS`` covers."""


def guest_file(name: str, directory: Path = GUEST_IMAGE_DIR) -> Path:
    """The path of one embedded file (it may not exist: see :func:`shipped_kernel`)."""
    return directory / name


def shipped_kernel(directory: Path = GUEST_IMAGE_DIR) -> Path | None:
    """The embedded kernel, or None when this installation has none."""
    path = guest_file(KERNEL_NAME, directory)
    return path if path.is_file() else None


def shipped_busybox(directory: Path = GUEST_IMAGE_DIR) -> Path | None:
    """The embedded static busybox, or None when this installation has none."""
    path = guest_file(BUSYBOX_NAME, directory)
    return path if path.is_file() else None


def read_checksums(directory: Path = GUEST_IMAGE_DIR) -> dict[str, str]:
    """``SHA256SUMS`` as {file name: hex digest}."""
    path = guest_file(CHECKSUMS_NAME, directory)
    try:
        text = path.read_text(encoding="ascii")
    except OSError as e:
        raise FetchError(f"{path}: cannot read the recorded checksums ({e.strerror}); "
                              f"reinstall vmboot or rerun {BUILD_SCRIPT_NAME}") from e
    sums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise FetchError(f"{path}:{number}: {line!r} is not a `sha256sum` line "
                                  "(64 hex digits, two spaces, a file name)")
        sums[name] = digest
    return sums


def read_versions(directory: Path = GUEST_IMAGE_DIR) -> dict[str, str]:
    """``VERSIONS`` as {component: version}."""
    text = guest_file(VERSIONS_NAME, directory).read_text(encoding="utf-8")
    pairs = (line.partition(" ") for line in text.splitlines() if line.strip())
    return {name: version for name, _, version in pairs}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ChecksumMismatch:
    name: str
    recorded: str
    actual: str | None
    """None: the file is missing."""


def verify(directory: Path = GUEST_IMAGE_DIR) -> list[ChecksumMismatch]:
    """Every checksummed file whose digest differs from ``SHA256SUMS`` (empty: all match)."""
    sums = read_checksums(directory)
    missing = [name for name in CHECKSUMMED if name not in sums]
    if missing:
        raise FetchError(f"{guest_file(CHECKSUMS_NAME, directory)}: no checksum for "
                              f"{', '.join(missing)}; rerun {BUILD_SCRIPT_NAME}")
    bad: list[ChecksumMismatch] = []
    for name, recorded in sums.items():
        path = guest_file(name, directory)
        actual = sha256_file(path) if path.is_file() else None
        if actual != recorded:
            bad.append(ChecksumMismatch(name, recorded, actual))
    return bad
