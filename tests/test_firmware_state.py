"""The firmware state of a new vCPU is the configurator's choice, set through the hv setters;
the hv layer's ioctl helpers say which request failed, and why."""

from __future__ import annotations

import errno
import os

import pytest

from conftest import requires_kvm
from vmboot.errors import HypervisorError, KvmIoctlError
from vmboot.hv import MemoryVM
from vmboot.hv.kvm import KvmVM, abi
from vmboot.hv.kvm.ioctl import kvm_ioctl
from vmboot.linux.configurator.boot_msrs import boot_msrs
from vmboot.linux.configurator.cpu_reset import FPU_INIT_FCW, FPU_INIT_MXCSR, set_firmware_state
from vmboot.net.backend import NetBackendError
from vmboot.net.tap import TUNGETFEATURES, tun_ioctl
from vmboot.x86 import msr
from vmboot.x86.apic import LvtDelivery


def test_memory_vcpu_gets_the_firmware_state() -> None:
    with MemoryVM(4 << 20) as vm:
        vcpu = vm.create_vcpu(0)
        assert vcpu.get_msrs([msr.MSR_MTRR_DEF_TYPE]) == {msr.MSR_MTRR_DEF_TYPE: 0}
        assert vcpu.fpu_control is None
        set_firmware_state(vcpu)
        assert vcpu.get_msrs(boot_msrs()) == boot_msrs()
        assert vcpu.fpu_control == (FPU_INIT_FCW, FPU_INIT_MXCSR)
        assert vcpu.cpuid == vm.cpuid_table(0) == []  # a VM that never runs describes no CPU


def test_memory_vcpu_has_no_lapic_to_wire() -> None:
    with MemoryVM(4 << 20) as vm:
        assert not vm.has_local_apic
        with pytest.raises(HypervisorError, match="no local APIC"):
            vm.create_vcpu(0).set_lapic_lint(LvtDelivery.EXTINT, LvtDelivery.NMI)


def test_memory_vcpu_refuses_an_fpu_control_word_too_wide() -> None:
    with MemoryVM(4 << 20) as vm:
        vcpu = vm.create_vcpu(0)
        with pytest.raises(HypervisorError, match="FCW 65536"):
            vcpu.set_fpu_control(0x10000, FPU_INIT_MXCSR)
        assert vcpu.fpu_control is None


@requires_kvm
def test_a_new_kvm_vcpu_has_no_boot_policy_until_the_configurator_sets_it() -> None:
    with KvmVM(4 << 20, vcpu_count=2) as vm:
        vcpu = vm.create_vcpu(1)
        assert vcpu.cpuid == []
        assert vm.has_local_apic
        set_firmware_state(vcpu)
        assert vcpu.cpuid == vm.cpuid_table(1)
        leaf1 = next(e for e in vcpu.cpuid if e.function == 1)
        assert leaf1.ebx >> 24 == 1  # its APIC id
        got = vcpu.get_msrs([msr.MSR_MTRR_DEF_TYPE])
        assert got[msr.MSR_MTRR_DEF_TYPE] == boot_msrs()[msr.MSR_MTRR_DEF_TYPE]


def test_a_failed_kvm_ioctl_names_the_request_and_carries_the_errno() -> None:
    read_end, write_end = os.pipe()
    os.close(write_end)
    os.close(read_end)
    with pytest.raises(KvmIoctlError, match=r"KVM VM: KVM_CHECK_EXTENSION failed: .*\(errno 9\)") as e:
        kvm_ioctl(read_end, abi.KVM_CHECK_EXTENSION, 0, who="KVM VM", what="KVM_CHECK_EXTENSION")
    assert e.value.errno == errno.EBADF
    assert isinstance(e.value, HypervisorError)


def test_a_failed_tun_ioctl_names_the_interface_the_request_and_the_hint() -> None:
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(NetBackendError,
                           match=r"--net tap=tap7: TUNGETFEATURES failed: .*; not a TUN fd"):
            tun_ioctl(read_end, TUNGETFEATURES, b"\0" * 4, name="tap7", what="TUNGETFEATURES",
                      hints={errno.ENOTTY: "not a TUN fd", errno.EINVAL: "not a TUN fd"})
    finally:
        os.close(read_end)
        os.close(write_end)
