"""What kind of KVM the host runs: hardware virtualisation or PVM's emulation of ring 0."""

from __future__ import annotations

from pathlib import Path

EMULATING_HOST_MODULE = Path("/sys/module/kvm_pvm")
"""Present when the host's KVM is the PVM software hypervisor (emulates guest ring 0)."""


def host_is_emulating() -> bool:
    """True when the host KVM is PVM (module ``kvm_pvm``): ring-0 guest code is emulated."""
    return EMULATING_HOST_MODULE.exists()
