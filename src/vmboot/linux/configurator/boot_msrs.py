"""The MSR values a vCPU starts a boot with, as a PC's firmware (and Firecracker's msr.rs) leave them."""

from __future__ import annotations

from vmboot.x86 import msr

MTRR_DEF_TYPE_ENABLE = 1 << 11
"""IA32_MTRR_DEF_TYPE.E: MTRRs enabled."""
MTRR_MEMTYPE_WB = 0x6
"""Memory type write-back: the default type for every address no MTRR covers."""


def boot_msrs() -> dict[int, int]:
    """MSR index -> value for a freshly created vCPU.

    SYSENTER and SYSCALL targets zero (the kernel programs them), TSC zero, fast string
    operations enabled, and write-back as the default memory type with MTRRs on, so the
    guest does not run uncached.
    """
    return {
        msr.MSR_IA32_SYSENTER_CS: 0,
        msr.MSR_IA32_SYSENTER_ESP: 0,
        msr.MSR_IA32_SYSENTER_EIP: 0,
        msr.MSR_STAR: 0,
        msr.MSR_CSTAR: 0,
        msr.MSR_KERNEL_GS_BASE: 0,
        msr.MSR_SYSCALL_MASK: 0,
        msr.MSR_LSTAR: 0,
        msr.MSR_IA32_TSC: 0,
        msr.MSR_IA32_MISC_ENABLE: msr.MSR_IA32_MISC_ENABLE_FAST_STRING,
        msr.MSR_MTRR_DEF_TYPE: MTRR_DEF_TYPE_ENABLE | MTRR_MEMTYPE_WB,
    }
