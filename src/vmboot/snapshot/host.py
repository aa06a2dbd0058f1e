"""Whether this host can run a saved guest: the CPU features and KVM capabilities it used.

A guest kernel decides at boot which instructions and state it uses (XSAVE, AVX, ...)
from CPUID; resumed on a host that lacks one, it would fault or corrupt state. The saved
vCPU's CPUID feature bits must therefore be offered by the vCPU this host builds now, and
every KVM capability whose state was saved must be present.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vmboot.errors import SnapshotMismatchError
from vmboot.hv.cpuid_entry import CpuidEntry

CPUID_OSXSAVE = 1 << 27
"""Leaf 1 ECX: mirrors the guest's CR4.OSXSAVE, not a host feature."""
CPUID_OSPKE = 1 << 4
"""Leaf 7.0 ECX: mirrors the guest's CR4.PKE."""

FEATURE_LEAVES: tuple[tuple[int, int, tuple[str, ...]], ...] = (
    (0x1, 0, ("ecx", "edx")),
    (0x7, 0, ("ebx", "ecx", "edx")),
    (0xD, 0, ("eax",)),
    (0xD, 1, ("eax",)),
    (0x80000001, 0, ("ecx", "edx")),
)
"""(leaf, subleaf, registers) whose bits are CPU features a guest may depend on."""

DYNAMIC_BITS: dict[tuple[int, int, str], int] = {
    (0x1, 0, "ecx"): CPUID_OSXSAVE,
    (0x7, 0, "ecx"): CPUID_OSPKE,
}
"""Feature-register bits that reflect guest state rather than what the CPU offers."""


def _lookup(entries: Sequence[CpuidEntry], leaf: int, subleaf: int) -> CpuidEntry | None:
    for e in entries:
        if e.function == leaf and e.index == subleaf:
            return e
    for e in entries:
        if e.function == leaf and subleaf == 0:
            return e
    return None


def check_cpuid(saved: Sequence[CpuidEntry], offered: Sequence[CpuidEntry], vcpu: int) -> None:
    """Refuse when a feature bit the saved vCPU had is missing from what this host offers."""
    for leaf, subleaf, registers in FEATURE_LEAVES:
        old = _lookup(saved, leaf, subleaf)
        if old is None:
            continue
        new = _lookup(offered, leaf, subleaf)
        for reg in registers:
            had = getattr(old, reg) & ~DYNAMIC_BITS.get((leaf, subleaf, reg), 0)
            has = 0 if new is None else getattr(new, reg)
            missing = had & ~has
            if missing:
                raise SnapshotMismatchError(
                    f"snapshot: vCPU {vcpu} ran with CPUID leaf {leaf:#x}.{subleaf} {reg.upper()} "
                    f"bits {missing:#x} that this host (with this CPUID policy) does not offer; "
                    "the guest kernel relies on them: restore on the host that took the snapshot"
                )


def check_capabilities(saved: Mapping[str, int], host: Mapping[str, int]) -> None:
    """Refuse when the snapshot holds state of a KVM capability this host lacks."""
    missing = sorted(name for name, value in saved.items() if value and not host.get(name))
    if missing:
        raise SnapshotMismatchError(
            f"snapshot: saved with KVM capabilities {', '.join(missing)}, which this host's KVM "
            "does not have; restore on a host whose KVM has them"
        )
