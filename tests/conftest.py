"""Shared fixtures: the tiny test kernel in ../shared/kernels, KVM, and missing prerequisites.

A test that needs something outside the repository (``/dev/kvm``, the shared test kernels,
GNU cpio, busybox, QEMU, the Debian archive, ...) calls :func:`require`: outside CI a
missing prerequisite skips the test and says why; under CI (``CI=true``) it fails the test
with the prerequisite's name, so a CI machine cannot pass by skipping.
"""

from __future__ import annotations

import lzma
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_KERNELS_ENV = "VMBOOT_SHARED_KERNELS"
SHARED_KERNELS = Path(os.environ.get(SHARED_KERNELS_ENV, REPO.parent / "shared" / "kernels"))
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
"""Under CI a missing prerequisite fails the test instead of skipping it."""


def missing(what: str, why: str = "") -> NoReturn:
    """Skip the calling test (or fail it under CI): the prerequisite ``what`` is missing, ``why``."""
    message = f"missing prerequisite {what}" + (f": {why}" if why else "")
    if IN_CI:
        pytest.fail(f"{message} (CI=true: prerequisites must be present)", pytrace=False)
    pytest.skip(message)


def require(ok: object, what: str, why: str = "") -> None:
    """:func:`missing` unless ``ok``."""
    if not ok:
        missing(what, why)


def require_tool(name: str, package: str) -> str:
    """The path of the command ``name`` (from the Debian package ``package``), or skip/fail."""
    path = shutil.which(name)
    require(path, name, f"not on PATH (apt-get install {package})")
    assert path is not None
    return path


def shared_kernel_file(name: str) -> Path:
    path = SHARED_KERNELS / name
    require(path.exists(), f"shared test kernel {name}",
            f"{path} is missing (the test kernels live in ../shared/kernels beside the repository, "
            f"or in ${SHARED_KERNELS_ENV})")
    return path


@pytest.fixture(scope="session")
def tiny_smp_vmlinux_debug(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-smp's DWARF (``tiny-smp-vmlinux.debug.xz``, about 190 MB unpacked), unpacked once
    per test session (per xdist worker) into a temporary directory."""
    packed = shared_kernel_file("tiny-smp-vmlinux.debug.xz")
    path = tmp_path_factory.mktemp("dwarf") / "tiny-smp-vmlinux.debug"
    with lzma.open(packed) as src, path.open("wb") as dst:
        shutil.copyfileobj(src, dst, 8 << 20)
    return path


@pytest.fixture
def tiny_bzimage() -> Path:
    return shared_kernel_file("tiny-bzImage")


@pytest.fixture
def tiny_vmlinux() -> Path:
    return shared_kernel_file("tiny-vmlinux")


@pytest.fixture
def tiny_initramfs_min() -> Path:
    return shared_kernel_file("tiny-initramfs-min.cpio")


@pytest.fixture(scope="session")
def busybox() -> Path:
    """The static busybox vmboot ships (the embedded default guest's), part of the repository."""
    from vmboot.execute.default_guest import GUEST_IMAGE_DIR, shipped_busybox

    path = shipped_busybox()
    assert path is not None, f"{GUEST_IMAGE_DIR} has no busybox"
    return path


def kvm_usable() -> tuple[bool, str]:
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist (no KVM on this host)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not readable and writable by this user (add it to group kvm)"
    return True, ""


_KVM_OK, _KVM_WHY = kvm_usable()
requires_kvm = pytest.mark.kvm
"""Marks a test as needing /dev/kvm: ``-m "not kvm"`` deselects it, and without KVM it is
skipped (failed under CI) by :func:`pytest_runtest_setup`."""


def require_kvm() -> None:
    """:func:`missing` unless /dev/kvm is usable (for fixtures that boot before a test runs)."""
    require(_KVM_OK, "/dev/kvm", _KVM_WHY)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kvm") is not None:
        require_kvm()


@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair of stream sockets (ours, theirs), closed after the test."""
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()
