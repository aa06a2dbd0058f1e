"""The KVM paravirtual features the CPUID policy shows are ones whose hypercall returns here.

Each feature below makes the guest kernel issue a hypercall (VMCALL with the number in
RAX). A probe guest issues that hypercall in ring 0, as the kernel would, then writes a
port: if the auto policy shows the feature on this host, the hypercall must return; if it
hides it, the hypercall indeed never returns (else hiding it costs the guest for nothing).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvm_helpers import CODE_GPA, assemble, enter_long_mode, need_binutils
from vmboot.devices.bus import PortBus
from vmboot.hv.kvm import KvmVM
from vmboot.hv.kvm.cpuid import (
    KVM_FEATURE_PV_SCHED_YIELD_BIT,
    KVM_FEATURE_PV_SEND_IPI_BIT,
    KVM_FEATURE_PV_UNHALT_BIT,
    KVM_HC_KICK_CPU,
    KVM_HC_SCHED_YIELD,
    KVM_HC_SEND_IPI,
    LEAF_KVM_FEATURES,
    find,
)
from vmboot.vmm.exits import ExitReason
from vmboot.vmm.runner import Runner

MARK_PORT = 0x510
RETURN_WITHIN = 2.0
"""Seconds a hypercall gets to return (KVM answers one in microseconds)."""

HYPERCALLS = {
    # feature bit: (hypercall, its arguments in RBX, RCX, RDX, RSI as the kernel passes them)
    KVM_FEATURE_PV_UNHALT_BIT: (KVM_HC_KICK_CPU, "xor ebx, ebx\nmov ecx, 1"),  # flags, APIC id
    KVM_FEATURE_PV_SEND_IPI_BIT: (KVM_HC_SEND_IPI,  # bitmap low/high, min APIC id, ICR
                                  "mov ebx, 2\nxor ecx, ecx\nxor edx, edx\nmov esi, 0xF0"),
    KVM_FEATURE_PV_SCHED_YIELD_BIT: (KVM_HC_SCHED_YIELD, "mov ebx, 1"),  # APIC id
}


class Mark:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def port_write(self, offset: int, size: int, value: int) -> None:
        self.runner.stop(ExitReason.POWEROFF, "the hypercall returned")

    def port_read(self, offset: int, size: int) -> int:
        return 0


@pytest.fixture(autouse=True)
def _binutils() -> None:
    need_binutils()


@pytest.fixture
def vm() -> Iterator[KvmVM]:
    with KvmVM(16 << 20, vcpu_count=2) as machine:
        yield machine


@pytest.mark.parametrize("bit", sorted(HYPERCALLS), ids=lambda b: f"feature-bit{b}")
def test_shown_feature_has_a_working_hypercall(vm: KvmVM, bit: int) -> None:
    number, arguments = HYPERCALLS[bit]
    cpu = vm.create_vcpu(0)
    vm.create_vcpu(1)  # the target of KICK_CPU / SEND_IPI / SCHED_YIELD
    leaf = find(vm.cpuid_table(0), LEAF_KVM_FEATURES)
    assert leaf is not None
    shown = bool(leaf.eax >> bit & 1)
    ports = PortBus()
    runner = Runner(vm, cpu, ports)
    ports.attach_device(MARK_PORT, 1, Mark(runner), "mark")
    vm.write(CODE_GPA, assemble(f"cli\nmov eax, {number}\n{arguments}\nvmcall\n"
                                f"mov dx, {MARK_PORT}\nout dx, al\n1: jmp 1b"))
    enter_long_mode(vm, cpu)
    result = runner.run(timeout=RETURN_WITHIN)
    returned = result.reason is ExitReason.POWEROFF
    assert returned == shown, (
        f"hypercall {number} {'returned' if returned else 'did not return'} "
        f"but the CPUID policy {'shows' if shown else 'hides'} feature bit {bit}: {result.one_line()}")
