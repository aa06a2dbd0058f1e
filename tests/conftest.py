"""Shared fixtures: the tiny test kernel in ../shared/kernels, and KVM availability."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_KERNELS = Path(os.environ.get("VMBOOT_SHARED_KERNELS", REPO.parent / "shared" / "kernels"))


def shared_kernel_file(name: str) -> Path:
    path = SHARED_KERNELS / name
    if not path.exists():
        pytest.skip(f"{path} is missing (the test kernels live in ../shared/kernels beside the repo)")
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


def kvm_usable() -> tuple[bool, str]:
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist (no KVM on this host)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not readable and writable by this user (add it to group kvm)"
    return True, ""


_KVM_OK, _KVM_WHY = kvm_usable()
requires_kvm = pytest.mark.skipif(not _KVM_OK, reason=_KVM_WHY or "KVM available")
