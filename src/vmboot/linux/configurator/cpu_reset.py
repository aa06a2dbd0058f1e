"""The state a PC's firmware leaves in every processor before a boot loader runs.

:func:`set_firmware_state` gives a new vCPU (in its hypervisor's reset state) the CPUID
table its VM offers, the boot MSRs of :mod:`~vmboot.linux.configurator.boot_msrs`, the FPU
as after FNINIT, and, where there is a local APIC, LINT0 wired to the PIC (ExtINT) and LINT1
to NMI. The entry plans call it for the vCPU they program; the machine calls it for the
application processors, which the kernel starts itself.
"""

from __future__ import annotations

from vmboot.hv.base import VirtualCPU
from vmboot.linux.configurator.boot_msrs import boot_msrs
from vmboot.x86.apic import LvtDelivery

FPU_INIT_FCW = 0x37F
"""x87 control word after FNINIT: all exceptions masked, 64-bit precision, round to nearest."""
FPU_INIT_MXCSR = 0x1F80
"""MXCSR at reset: all SSE exceptions masked, round to nearest."""
LINT0_DELIVERY = LvtDelivery.EXTINT
"""LINT0 carries the 8259 PIC's output (virtual-wire mode), as a PC's firmware leaves it."""
LINT1_DELIVERY = LvtDelivery.NMI


def set_firmware_state(vcpu: VirtualCPU) -> None:
    """Give ``vcpu`` (created, never run) what firmware would: CPUID, MSRs, FPU, LAPIC pins."""
    vm = vcpu.vm
    vcpu.set_cpuid(vm.cpuid_table(vcpu.index))
    vcpu.set_msrs(boot_msrs())
    vcpu.set_fpu_control(FPU_INIT_FCW, FPU_INIT_MXCSR)
    if vm.has_local_apic:
        vcpu.set_lapic_lint(LINT0_DELIVERY, LINT1_DELIVERY)
