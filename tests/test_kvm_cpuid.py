"""CPUID policies: pure logic on a synthetic supported set, and what a real guest sees."""

from __future__ import annotations

import pytest

from conftest import requires_kvm
from kvm_helpers import CODE_GPA, assemble, enter_long_mode, need_binutils
from vmboot.errors import HypervisorError
from vmboot.hv.cpuid_entry import CpuidEntry
from vmboot.hv.kvm import KvmVM, host_is_emulating
from vmboot.hv.kvm.cpuid import (
    CONSERVATIVE_HIDDEN,
    KVM_SIGNATURE,
    build_cpuid,
    find,
    resolve_policy,
)
from vmboot.vmm.exits import ExitReason
from vmboot.vmm.runner import Runner

ALL = 0xFFFF_FFFF
SUPPORTED = [
    CpuidEntry(0, eax=0x1F),
    CpuidEntry(1, eax=0x806F8, ebx=0xFF_FF_FF_FF, ecx=ALL & ~(1 << 31), edx=ALL),
    CpuidEntry(4, 0, 1, eax=0x121 | (0x3F << 26)),
    CpuidEntry(4, 1, 1, eax=0),
    CpuidEntry(7, 0, 1, eax=1, ebx=ALL, ecx=ALL, edx=ALL),
    CpuidEntry(7, 1, 1, eax=ALL),
    CpuidEntry(0xB, 0, 1, eax=1, ebx=2, ecx=0x100, edx=7),
    CpuidEntry(0xB, 1, 1, eax=4, ebx=8, ecx=0x201, edx=7),
    CpuidEntry(0xB, 2, 1, eax=9, ebx=9, ecx=0x302, edx=7),
    CpuidEntry(0xD, 0, 1, eax=0x2E7, ebx=0xA88, ecx=0xA88),
    CpuidEntry(0x80000001, ecx=ALL, edx=ALL),
]


def test_host_policy_fills_in_what_a_vmm_owns() -> None:
    table = build_cpuid(SUPPORTED, "host", emulating=False, vcpu_index=2, vcpu_count=4)
    leaf1 = find(table, 1)
    assert leaf1 is not None
    assert leaf1.ecx >> 31 & 1, "hypervisor bit"
    assert leaf1.ebx >> 24 == 2, "initial APIC id"
    assert leaf1.ebx >> 16 & 0xFF == 4, "logical processor count"
    assert leaf1.edx >> 28 & 1, "HTT with more than one vCPU"
    assert leaf1.ecx >> 23 & 1, "host policy keeps POPCNT"
    smt, core, invalid = find(table, 0xB, 0), find(table, 0xB, 1), find(table, 0xB, 2)
    assert smt is not None and core is not None and invalid is not None
    assert (smt.eax, smt.ebx, smt.ecx >> 8 & 0xFF, smt.edx) == (0, 1, 1, 2)
    assert (core.eax, core.ebx, core.ecx >> 8 & 0xFF, core.edx) == (2, 4, 2, 2)
    assert (invalid.ebx, invalid.ecx >> 8 & 0xFF) == (0, 0)
    cache = find(table, 4, 0)
    assert cache is not None and cache.eax >> 26 == 3
    sig = find(table, 0x40000000)
    assert sig is not None
    assert b"".join(r.to_bytes(4, "little") for r in (sig.ebx, sig.ecx, sig.edx)) == KVM_SIGNATURE
    kvm_features = find(table, 0x40000001)
    assert kvm_features is not None and kvm_features.eax & (1 << 3), "kvm-clock (CLOCKSOURCE2)"


def test_single_vcpu_has_no_htt() -> None:
    table = build_cpuid(SUPPORTED, "host", emulating=False, vcpu_index=0)
    leaf1 = find(table, 1)
    assert leaf1 is not None and not leaf1.edx >> 28 & 1


def test_conservative_clears_every_listed_bit_and_only_those() -> None:
    host = build_cpuid(SUPPORTED, "host", emulating=False, vcpu_index=0)
    cons = build_cpuid(SUPPORTED, "conservative", emulating=False, vcpu_index=0)
    for h in CONSERVATIVE_HIDDEN:
        entry = find(cons, h.leaf, h.subleaf or 0)
        assert entry is not None
        assert not getattr(entry, h.register) >> h.bit & 1, h.name
        assert h.why, f"{h.name} needs a justification"
    hidden = {(h.leaf, h.subleaf or 0, h.register, h.bit) for h in CONSERVATIVE_HIDDEN}
    leaf1_host, leaf1_cons = find(host, 1), find(cons, 1)
    assert leaf1_host is not None and leaf1_cons is not None
    for bit in range(32):
        if (1, 0, "ecx", bit) not in hidden:
            assert (leaf1_host.ecx >> bit & 1) == (leaf1_cons.ecx >> bit & 1), bit
    xsave = find(cons, 0xD, 0)
    assert xsave is not None and (xsave.eax, xsave.ebx, xsave.ecx) == (0, 0, 0)
    sub1 = find(cons, 7, 1)
    assert sub1 is not None and sub1.eax == 0


def test_auto_follows_the_host_kind() -> None:
    assert resolve_policy("auto", emulating=True) == "conservative"
    assert resolve_policy("auto", emulating=False) == "host"
    with pytest.raises(HypervisorError, match="'fast' is not one of auto, host, conservative"):
        resolve_policy("fast", emulating=False)
    with pytest.raises(HypervisorError, match="vCPU index 3"):
        build_cpuid(SUPPORTED, "host", emulating=False, vcpu_index=3, vcpu_count=2)


CPUID_PROBE = """
    mov eax, 1
    xor ecx, ecx
    cpuid
    mov dx, 0x500
    mov eax, ecx
    out dx, eax
    mov eax, ebx
    out dx, eax
    mov eax, 7
    xor ecx, ecx
    cpuid
    mov dx, 0x500
    mov eax, ebx
    out dx, eax
    mov eax, 0x40000000
    cpuid
    mov dx, 0x500
    mov eax, ebx
    out dx, eax
    hlt
"""


def _run_probe(policy: str) -> tuple[list[int], KvmVM]:
    need_binutils()
    from kvm_helpers import PortRecorder
    from vmboot.devices.bus import PortBus

    vm = KvmVM(16 << 20, cpuid_policy=policy)  # type: ignore[arg-type]
    try:
        vcpu = vm.create_vcpu(0)
        vm.write(CODE_GPA, assemble(CPUID_PROBE))
        enter_long_mode(vm, vcpu)
        rec = PortRecorder()
        bus = PortBus()
        bus.attach_device(0x500, 4, rec, "cpuid")
        result = Runner(vm, vcpu, bus).run(timeout=2.0)
        assert result.reason is ExitReason.HLT, result.one_line()
    except BaseException:
        vm.close()
        raise
    return [v for _, _, v in rec.writes], vm


@requires_kvm
@pytest.mark.kvm
@pytest.mark.parametrize("policy", ["host", "conservative", "auto"])
def test_guest_sees_hypervisor_identity(policy: str) -> None:
    (leaf1_ecx, leaf1_ebx, _leaf7_ebx, kvm_sig), vm = _run_probe(policy)
    vm.close()
    assert leaf1_ecx >> 31 & 1, "hypervisor bit"
    assert leaf1_ebx >> 24 == 0, "APIC id of vCPU 0"
    assert leaf1_ebx >> 8 & 0xFF == 8, "CLFLUSH line size 64 bytes"
    assert kvm_sig.to_bytes(4, "little") == b"KVMK"


@requires_kvm
@pytest.mark.kvm
@pytest.mark.skipif(host_is_emulating(), reason=(
    "PVM answers ring-0 CPUID feature leaves (1, 7) from the host CPU and ignores "
    "KVM_SET_CPUID2 there; on this host the kernel's clearcpuid= hides those instructions"))
def test_guest_sees_conservative_features_hidden() -> None:
    (leaf1_ecx, _ebx, leaf7_ebx, _sig), vm = _run_probe("conservative")
    vm.close()
    for value, bit, name in ((leaf1_ecx, 23, "popcnt"), (leaf1_ecx, 26, "xsave"), (leaf1_ecx, 13, "cx16"),
                             (leaf7_ebx, 20, "smap"), (leaf7_ebx, 0, "fsgsbase")):
        assert not value >> bit & 1, name
