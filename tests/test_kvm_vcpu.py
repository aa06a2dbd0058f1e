"""KvmVCPU: every VirtualCPU method round-trips through KVM, and the state a new vCPU starts with."""

from __future__ import annotations

import struct

import pytest

from conftest import requires_kvm
from vmboot.errors import HypervisorError
from vmboot.hv import DescriptorTable, Register, Segment, SegmentRegister
from vmboot.hv.kvm import KvmVM, abi, host_is_emulating
from vmboot.hv.kvm.boot_msrs import boot_msrs
from vmboot.hv.kvm.vcpu import FPU_INIT_FCW, FPU_INIT_MXCSR
from vmboot.x86 import cr, msr
from vmboot.x86.gdt import flat_code64, flat_data, tss64

pytestmark = [requires_kvm, pytest.mark.kvm]


def test_general_registers_round_trip() -> None:
    with KvmVM(4 << 20) as vm:
        vcpu = vm.create_vcpu(0)
        general = [r for r in Register if r not in (Register.CR0, Register.CR2, Register.CR3,
                                                    Register.CR4, Register.CR8, Register.EFER,
                                                    Register.RFLAGS)]
        values: dict[Register, int] = {r: 0x1111_0000_0000_0000 + i * 0x1010 for i, r in enumerate(general)}
        values[Register.RFLAGS] = cr.RFLAGS_RESERVED_1 | 1  # CF
        vcpu.set_registers(values)
        assert vcpu.get_registers(values) == values
        assert vcpu.get_register(Register.R15) == values[Register.R15]


def test_long_mode_state_through_the_interface_in_any_order() -> None:
    """As BootPlan.configure_vcpu does it: segments (64-bit CS) first, then CR0/CR4/EFER."""
    with KvmVM(4 << 20) as vm:
        vcpu = vm.create_vcpu(0)
        segs = {SegmentRegister.CS: flat_code64(0x10), SegmentRegister.DS: flat_data(0x18),
                SegmentRegister.SS: flat_data(0x18), SegmentRegister.TR: tss64(0x20),
                SegmentRegister.LDTR: Segment(selector=0, type=2, present=True, limit=0xFFFF)}
        vcpu.set_segments(segs)
        vcpu.set_gdt(DescriptorTable(0x500, 0x27))
        vcpu.set_idt(DescriptorTable(0x600, 0xFFF))
        control = {Register.CR3: 0x20000, Register.CR4: cr.CR4_PAE, Register.CR2: 0xDEAD000,
                   Register.CR8: 3, Register.EFER: cr.EFER_LME | cr.EFER_LMA | cr.EFER_SCE,
                   Register.CR0: cr.CR0_PE | cr.CR0_PG | cr.CR0_ET | cr.CR0_NE}
        vcpu.set_registers(control)
        assert not vcpu.has_pending_state, "KVM accepted the completed state"
        got = vcpu.get_registers(control)
        for reg in (Register.CR3, Register.CR4, Register.CR2, Register.CR8, Register.EFER):
            assert got[reg] == control[reg], reg
        assert got[Register.CR0] & control[Register.CR0] == control[Register.CR0]
        cs = vcpu.get_segment(SegmentRegister.CS)
        assert (cs.selector, cs.l, cs.db, cs.present, cs.type) == (0x10, True, False, True, 0xB)
        tr = vcpu.get_segment(SegmentRegister.TR)
        assert (tr.selector, tr.type, tr.limit) == (0x20, 0xB, 0x67)
        ldt = vcpu.get_segment(SegmentRegister.LDTR)
        assert (ldt.type, ldt.limit) == (2, 0xFFFF)
        assert vcpu.get_gdt() == DescriptorTable(0x500, 0x27)
        assert vcpu.get_idt() == DescriptorTable(0x600, 0xFFF)


def test_bad_values_are_refused_with_the_name() -> None:
    with KvmVM(4 << 20) as vm:
        vcpu = vm.create_vcpu(0)
        with pytest.raises(HypervisorError, match="register RAX: value -1"):
            vcpu.set_registers({Register.RAX: -1})
        with pytest.raises(HypervisorError, match="register CR3"):
            vcpu.set_registers({Register.CR3: 1 << 64})
        with pytest.raises(HypervisorError, match="segment CS: selector 65536"):
            vcpu.set_segment(SegmentRegister.CS, Segment(selector=0x10000))
        with pytest.raises(HypervisorError, match="GDT"):
            vcpu.set_gdt(DescriptorTable(0, 0x10000))
        with pytest.raises(HypervisorError, match=r"could not read MSR 0xdeadbeef"):
            vcpu.get_msrs([msr.MSR_STAR, 0xDEADBEEF])
        with pytest.raises(HypervisorError, match=r"refused MSR 0xdeadbeef"):
            vcpu.set_msrs({0xDEADBEEF: 1})


def test_boot_msrs_fpu_and_lapic() -> None:
    with KvmVM(4 << 20) as vm:
        vcpu = vm.create_vcpu(0)
        expected = boot_msrs()
        got = vcpu.get_msrs(expected)
        assert got[msr.MSR_MTRR_DEF_TYPE] == expected[msr.MSR_MTRR_DEF_TYPE] == 0x806
        assert got[msr.MSR_IA32_MISC_ENABLE] & msr.MSR_IA32_MISC_ENABLE_FAST_STRING
        vcpu.set_msrs({msr.MSR_LSTAR: 0xFFFF_FFFF_8100_0000, msr.MSR_KERNEL_GS_BASE: 0x1234})
        assert vcpu.get_msrs([msr.MSR_LSTAR, msr.MSR_KERNEL_GS_BASE]) == {
            msr.MSR_LSTAR: 0xFFFF_FFFF_8100_0000, msr.MSR_KERNEL_GS_BASE: 0x1234}
        fpu = vcpu.get_fpu()
        assert fpu.fcw == FPU_INIT_FCW
        if not host_is_emulating():  # PVM's KVM_GET_FPU reports MXCSR as 0 whatever was set
            assert fpu.mxcsr == FPU_INIT_MXCSR
        page = vcpu.get_lapic()
        lint0 = struct.unpack_from("<I", page, abi.APIC_REG_LVT_LINT0)[0]
        lint1 = struct.unpack_from("<I", page, abi.APIC_REG_LVT_LINT1)[0]
        assert lint0 >> 8 & 7 == abi.APIC_DELIVERY_MODE_EXTINT
        assert lint1 >> 8 & 7 == abi.APIC_DELIVERY_MODE_NMI
        assert vcpu.get_mp_state() == abi.KVM_MP_STATE_RUNNABLE


def test_without_irqchip_there_is_no_lapic() -> None:
    with KvmVM(4 << 20, irqchip=False) as vm:
        vcpu = vm.create_vcpu(0)
        with pytest.raises(HypervisorError, match="KVM_GET_LAPIC"):
            vcpu.get_lapic()
        with pytest.raises(HypervisorError, match="without an in-kernel irqchip"):
            vm.irq_line(4, True)


def test_irq_line_and_vcpu_indices() -> None:
    with KvmVM(4 << 20, vcpu_count=2) as vm:
        vm.irq_line(4, True)
        vm.irq_line(4, False)
        vm.create_vcpu(0)
        with pytest.raises(HypervisorError, match="already exists"):
            vm.create_vcpu(0)
        with pytest.raises(HypervisorError, match=r"outside 0\.\.1"):
            vm.create_vcpu(2)
        second = vm.create_vcpu(1)
        leaf1 = next(e for e in second.cpuid if e.function == 1)
        assert leaf1.ebx >> 24 == 1
        assert [v.index for v in vm.vcpus] == [0, 1]


def test_memory_is_shared_with_the_guest_view() -> None:
    with KvmVM(4 << 30) as vm:  # crosses the 3-4 GiB hole: two memslots
        assert [(r.gpa, r.size) for r in vm.regions] == [(0, 3 << 30), (4 << 30, 1 << 30)]
        vm.write(0x1_0000_0000, b"high")
        assert vm.read(0x1_0000_0000, 4) == b"high"
