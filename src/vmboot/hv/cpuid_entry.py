"""One CPUID leaf of a vCPU's table, as the hypervisor layer passes it around."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CpuidEntry:
    """One CPUID leaf/subleaf (as ``struct kvm_cpuid_entry2``)."""

    function: int
    index: int = 0
    flags: int = 0
    eax: int = 0
    ebx: int = 0
    ecx: int = 0
    edx: int = 0
