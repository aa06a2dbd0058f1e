"""CPUID policies: what each vCPU's CPUID instruction reports, derived from KVM's supported set.

Two policies:

``host``
    KVM_GET_SUPPORTED_CPUID as it is, plus what a VMM must fill in itself: the
    hypervisor bit, the KVM signature leaves (0x40000000 "KVMKVMKVM", 0x40000001 with
    kvm-clock), the vCPU's APIC id, and a topology of ``count`` single-thread cores in one
    package (leaves 0x1, 0x4, 0xB, 0x1F).

``conservative``
    ``host`` minus every feature whose instructions the PVM software hypervisor cannot
    emulate in guest ring 0 (it stops the VM with an emulation failure), and the features
    that only make sense with them, and the KVM paravirtual features whose guest code makes
    a hypercall, which PVM never completes (with several vCPUs the guest would hang). Each
    bit is justified where it is cleared below.

``auto`` (the default) is ``conservative`` when the host KVM emulates guest ring 0
(:func:`vmboot.hv.kvm.host.host_is_emulating`), else ``host``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal, get_args

from vmboot.errors import HypervisorError
from vmboot.hv.cpuid_entry import CpuidEntry

CpuidPolicyName = Literal["auto", "host", "conservative"]
POLICY_NAMES: tuple[str, ...] = get_args(CpuidPolicyName)

# Leaves
LEAF_FEATURES = 0x1
LEAF_CACHE_PARAMS = 0x4
LEAF_EXT_FEATURES = 0x7
LEAF_TOPOLOGY = 0xB
LEAF_XSAVE_STATE = 0xD
LEAF_TOPOLOGY_V2 = 0x1F
LEAF_KVM_SIGNATURE = 0x40000000
LEAF_KVM_FEATURES = 0x40000001
LEAF_EXT_MAX = 0x80000000
LEAF_EXT_FEATURES_AMD = 0x80000001

KVM_SIGNATURE = b"KVMKVMKVM\0\0\0"
"""EBX, ECX, EDX of leaf 0x40000000 on KVM (arch/x86/include/uapi/asm/kvm_para.h)."""

KVM_FEATURE_CLOCKSOURCE = 1 << 0
KVM_FEATURE_NOP_IO_DELAY = 1 << 1
KVM_FEATURE_CLOCKSOURCE2 = 1 << 3
KVM_FEATURE_PV_UNHALT_BIT = 7
KVM_FEATURE_PV_SEND_IPI_BIT = 11
KVM_FEATURE_PV_SCHED_YIELD_BIT = 13
"""Bits of leaf 0x40000001 EAX whose guest code makes a hypercall (see CONSERVATIVE_HIDDEN)."""
KVM_HC_KICK_CPU = 5
KVM_HC_SEND_IPI = 10
KVM_HC_SCHED_YIELD = 11
"""Hypercall numbers (include/uapi/linux/kvm_para.h) behind those features."""
KVM_FEATURE_CLOCKSOURCE_STABLE_BIT = 1 << 24
KVM_CLOCK_FEATURES = (
    KVM_FEATURE_CLOCKSOURCE | KVM_FEATURE_NOP_IO_DELAY | KVM_FEATURE_CLOCKSOURCE2
    | KVM_FEATURE_CLOCKSOURCE_STABLE_BIT
)
"""What leaf 0x40000001 EAX advertises when KVM's own list lacks the leaf: kvm-clock."""

CPUID_FLAG_SIGNIFICANT_INDEX = 1 << 0
"""kvm_cpuid_entry2.flags: the leaf has subleaves selected by ECX."""

# Leaf 1
L1_EBX_CLFLUSH_SHIFT = 8
L1_EBX_CLFLUSH_LINE_QWORDS = 8
"""CLFLUSH line size in 8-byte units (64 bytes)."""
L1_EBX_LOGICAL_COUNT_SHIFT = 16
L1_EBX_APIC_ID_SHIFT = 24
L1_EDX_HTT = 1 << 28
L1_ECX_HYPERVISOR = 1 << 31

# Leaf 4 EAX: cores per package - 1 (bits 31:26), threads sharing this cache - 1 (25:14).
L4_EAX_CORES_SHIFT = 26
L4_EAX_CORES_MASK = 0x3F << L4_EAX_CORES_SHIFT
L4_EAX_SHARING_SHIFT = 14
L4_EAX_SHARING_MASK = 0xFFF << L4_EAX_SHARING_SHIFT
L4_EAX_CACHE_TYPE_MASK = 0x1F

# Leaf 0xB / 0x1F: level types in ECX[15:8].
TOPOLOGY_LEVEL_INVALID = 0
TOPOLOGY_LEVEL_SMT = 1
TOPOLOGY_LEVEL_CORE = 2
TOPOLOGY_LEVEL_TYPE_SHIFT = 8


@dataclass(frozen=True, slots=True)
class HiddenFeature:
    """A CPUID bit the conservative policy clears, and why."""

    leaf: int
    subleaf: int | None
    register: Literal["eax", "ebx", "ecx", "edx"]
    bit: int
    name: str
    why: str


_PVM = "the PVM emulator stops with an emulation failure on"
_HYPERCALL = "a ring-0 VMCALL never returns under PVM (seen), and the kernel makes"

CONSERVATIVE_HIDDEN: tuple[HiddenFeature, ...] = (
    # Leaf 1 ECX
    HiddenFeature(1, None, "ecx", 26, "xsave", f"{_PVM} XSAVE/XRSTOR(S) in ring 0 (seen)"),
    HiddenFeature(1, None, "ecx", 27, "osxsave", "follows XSAVE: XGETBV/XSETBV are XSAVE-family"),
    HiddenFeature(1, None, "ecx", 28, "avx", "AVX state is managed with XSAVE only"),
    HiddenFeature(1, None, "ecx", 29, "f16c", "VEX-encoded; needs AVX state (XSAVE)"),
    HiddenFeature(1, None, "ecx", 12, "fma", "VEX-encoded; needs AVX state (XSAVE)"),
    HiddenFeature(1, None, "ecx", 23, "popcnt", f"{_PVM} POPCNT (seen; the kernel's hweight uses it)"),
    HiddenFeature(1, None, "ecx", 13, "cx16", f"{_PVM} CMPXCHG16B (seen with SLUB)"),
    HiddenFeature(1, None, "ecx", 17, "pcid", "INVPCID/PCID-tagged CR3 writes: not known to emulate"),
    # Leaf 7.0 EBX
    HiddenFeature(7, 0, "ebx", 0, "fsgsbase", "RD/WRFSBASE, RD/WRGSBASE in ring 0"
                  " (precaution, as the kernel's nofsgsbase)"),
    HiddenFeature(7, 0, "ebx", 4, "hle", "TSX prefixes/XBEGIN cannot be emulated"),
    HiddenFeature(7, 0, "ebx", 11, "rtm", "TSX XBEGIN/XEND cannot be emulated"),
    HiddenFeature(7, 0, "ebx", 5, "avx2", "AVX state is managed with XSAVE only"),
    HiddenFeature(7, 0, "ebx", 10, "invpcid", "INVPCID in ring 0 (precaution, as the kernel's noinvpcid)"),
    HiddenFeature(7, 0, "ebx", 14, "mpx", "MPX state is XSAVE-managed"),
    HiddenFeature(7, 0, "ebx", 16, "avx512f", "AVX-512 state is XSAVE-managed"),
    HiddenFeature(7, 0, "ebx", 17, "avx512dq", "AVX-512 state is XSAVE-managed"),
    HiddenFeature(7, 0, "ebx", 20, "smap", f"{_PVM} CLAC/STAC (seen)"),
    HiddenFeature(7, 0, "ebx", 21, "avx512ifma", "AVX-512 state is XSAVE-managed"),
    HiddenFeature(7, 0, "ebx", 26, "avx512pf", "AVX-512 state is XSAVE-managed"),
    HiddenFeature(7, 0, "ebx", 27, "avx512er", "AVX-512 state is XSAVE-managed"),
    HiddenFeature(7, 0, "ebx", 28, "avx512cd", "AVX-512 state is XSAVE-managed"),
    HiddenFeature(7, 0, "ebx", 30, "avx512bw", "AVX-512 state is XSAVE-managed"),
    HiddenFeature(7, 0, "ebx", 31, "avx512vl", "AVX-512 state is XSAVE-managed"),
    # Leaf 7.0 ECX
    HiddenFeature(7, 0, "ecx", 1, "avx512vbmi", "AVX-512 state is XSAVE-managed"),
    HiddenFeature(7, 0, "ecx", 3, "pku", "RDPKRU/WRPKRU on context switch; PKRU is XSAVE-managed"),
    HiddenFeature(7, 0, "ecx", 4, "ospke", "follows PKU"),
    HiddenFeature(7, 0, "ecx", 5, "waitpkg", "UMWAIT/TPAUSE cannot be emulated"),
    HiddenFeature(7, 0, "ecx", 6, "avx512_vbmi2", "AVX-512 state is XSAVE-managed"),
    HiddenFeature(7, 0, "ecx", 8, "gfni", "kernel crypto uses it with AVX (XSAVE)"),
    HiddenFeature(7, 0, "ecx", 9, "vaes", "VEX/EVEX-encoded; needs AVX state"),
    HiddenFeature(7, 0, "ecx", 10, "vpclmulqdq", "VEX/EVEX-encoded; needs AVX state"),
    HiddenFeature(7, 0, "ecx", 11, "avx512_vnni", "AVX-512 state is XSAVE-managed"),
    HiddenFeature(7, 0, "ecx", 12, "avx512_bitalg", "AVX-512 state is XSAVE-managed"),
    HiddenFeature(7, 0, "ecx", 14, "avx512_vpopcntdq", "AVX-512 state is XSAVE-managed"),
    HiddenFeature(7, 0, "ecx", 16, "la57", "5-level paging: keep the guest on the"
                  " 4-level tables vmboot sets up"),
    # Leaf 7.0 EDX
    HiddenFeature(7, 0, "edx", 14, "serialize", "the kernel's sync_core() uses SERIALIZE when present"),
    HiddenFeature(7, 0, "edx", 16, "tsxldtrk", "TSX instructions cannot be emulated"),
    HiddenFeature(7, 0, "edx", 22, "amx_bf16", "AMX state is XSAVE-managed"),
    HiddenFeature(7, 0, "edx", 24, "amx_tile", "AMX state is XSAVE-managed"),
    HiddenFeature(7, 0, "edx", 25, "amx_int8", "AMX state is XSAVE-managed"),
    HiddenFeature(7, 0, "edx", 29, "arch_capabilities", "reading IA32_ARCH_CAPABILITIES is"
                  " not supported everywhere (QEMU runs this host with -arch-capabilities)"),
    # Leaf 0x80000001 ECX
    HiddenFeature(0x80000001, None, "ecx", 5, "abm", "LZCNT and, on AMD, implies POPCNT"),
    # Leaf 0x40000001 EAX: KVM paravirtual features (arch/x86/include/uapi/asm/kvm_para.h).
    # Under PVM a hypercall (VMCALL) from guest ring 0 never returns, whatever its number:
    # hide each feature whose kernel code makes one. Steal time, PV TLB flush (it reads the
    # steal-time page), PV EOI, async PF and poll control only use MSRs and shared memory.
    HiddenFeature(LEAF_KVM_FEATURES, None, "eax", KVM_FEATURE_PV_SEND_IPI_BIT, "kvm_pv_send_ipi",
                  f"{_HYPERCALL} KVM_HC_SEND_IPI: with 2 vCPUs the second hangs in __send_ipi_mask "
                  "while the boot CPU spins on a lock (seen)"),
    HiddenFeature(LEAF_KVM_FEATURES, None, "eax", KVM_FEATURE_PV_UNHALT_BIT, "kvm_pv_unhalt",
                  f"{_HYPERCALL} KVM_HC_KICK_CPU, which paravirtual spinlocks make to wake a "
                  "waiter that halted: a contended lock would hang its holder"),
    HiddenFeature(LEAF_KVM_FEATURES, None, "eax", KVM_FEATURE_PV_SCHED_YIELD_BIT,
                  "kvm_pv_sched_yield", f"{_HYPERCALL} KVM_HC_SCHED_YIELD, made when a call-"
                  "function IPI targets a preempted vCPU"),
)
"""Every feature bit the conservative policy clears, with the reason."""


def _has_subleaves(leaf: int) -> bool:
    return leaf in (LEAF_CACHE_PARAMS, LEAF_EXT_FEATURES, LEAF_TOPOLOGY, LEAF_XSAVE_STATE, LEAF_TOPOLOGY_V2)


def _bits_for(count: int) -> int:
    """Bits of APIC id needed to number ``count`` cores (0 for one)."""
    return max(0, (count - 1).bit_length())


def resolve_policy(name: str, emulating: bool) -> Literal["host", "conservative"]:
    """The concrete policy for ``name`` ('auto' picks by the host kind)."""
    if name == "auto":
        return "conservative" if emulating else "host"
    if name == "host":
        return "host"
    if name == "conservative":
        return "conservative"
    raise HypervisorError(f"CPUID policy {name!r} is not one of {', '.join(POLICY_NAMES)}")


def build_cpuid(
    supported: Iterable[CpuidEntry],
    policy: str,
    *,
    emulating: bool,
    vcpu_index: int,
    vcpu_count: int = 1,
) -> list[CpuidEntry]:
    """The CPUID table for vCPU ``vcpu_index`` of ``vcpu_count`` under ``policy``."""
    if not 0 <= vcpu_index < vcpu_count:
        raise HypervisorError(f"CPUID: vCPU index {vcpu_index} is outside 0..{vcpu_count - 1}")
    concrete = resolve_policy(policy, emulating)
    entries = _with_topology_levels([_host_entry(e, vcpu_index, vcpu_count) for e in supported],
                                    vcpu_index, vcpu_count)
    entries = _ensure_kvm_leaves(entries)
    if concrete == "conservative":
        entries = [_conservative_entry(e) for e in entries]
    return entries


def _host_entry(e: CpuidEntry, apic_id: int, count: int) -> CpuidEntry:
    if e.function == LEAF_FEATURES:
        ebx = (
            (L1_EBX_CLFLUSH_LINE_QWORDS << L1_EBX_CLFLUSH_SHIFT)
            | (count << L1_EBX_LOGICAL_COUNT_SHIFT)
            | (apic_id << L1_EBX_APIC_ID_SHIFT)
        )
        edx = e.edx | L1_EDX_HTT if count > 1 else e.edx & ~L1_EDX_HTT
        return replace(e, ebx=ebx, ecx=e.ecx | L1_ECX_HYPERVISOR, edx=edx)
    if e.function == LEAF_CACHE_PARAMS:
        if e.eax & L4_EAX_CACHE_TYPE_MASK == 0:
            return e
        eax = e.eax & ~(L4_EAX_CORES_MASK | L4_EAX_SHARING_MASK)
        eax |= ((count - 1) & 0x3F) << L4_EAX_CORES_SHIFT
        return replace(e, eax=eax)
    if e.function in (LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2):
        return _topology_entry(e, apic_id, count)
    return e


TOPOLOGY_SUBLEAVES = 3
"""Leaves 0xB / 0x1F describe SMT (subleaf 0), core (1), then an invalid level ending the list."""


def _with_topology_levels(entries: list[CpuidEntry], apic_id: int, count: int) -> list[CpuidEntry]:
    """Every subleaf of the topology leaves the host lists, whatever KVM gave for them.

    KVM lists leaves 0xB and 0x1F with subleaf 0 only, and a guest that reads subleaf 1 then
    gets zeros (an invalid level): it sees no core level, takes each CPU for a package of
    its own, and numbers N packages instead of N cores in one.
    """
    present = {e.function: e for e in entries if e.function in (LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2)}
    out = [e for e in entries if e.function not in present]
    for first in present.values():
        flags = first.flags | CPUID_FLAG_SIGNIFICANT_INDEX
        out.extend(_topology_entry(replace(first, index=sub, flags=flags), apic_id, count)
                   for sub in range(TOPOLOGY_SUBLEAVES))
    return out


def _topology_entry(e: CpuidEntry, apic_id: int, count: int) -> CpuidEntry:
    """One thread per core, ``count`` cores in one package: level 0 = SMT, 1 = core."""
    if e.index == 0:
        eax, ebx, ecx = 0, 1, (TOPOLOGY_LEVEL_SMT << TOPOLOGY_LEVEL_TYPE_SHIFT) | 0
    elif e.index == 1:
        eax, ebx, ecx = _bits_for(count), count, (TOPOLOGY_LEVEL_CORE << TOPOLOGY_LEVEL_TYPE_SHIFT) | 1
    else:
        eax, ebx, ecx = 0, 0, (TOPOLOGY_LEVEL_INVALID << TOPOLOGY_LEVEL_TYPE_SHIFT) | (e.index & 0xFF)
    return replace(e, eax=eax, ebx=ebx, ecx=ecx, edx=apic_id)


def _ensure_kvm_leaves(entries: list[CpuidEntry]) -> list[CpuidEntry]:
    have = {e.function for e in entries}
    out = list(entries)
    if LEAF_KVM_SIGNATURE not in have:
        ebx, ecx, edx = (int.from_bytes(KVM_SIGNATURE[i : i + 4], "little") for i in (0, 4, 8))
        out.append(CpuidEntry(LEAF_KVM_SIGNATURE, eax=LEAF_KVM_FEATURES, ebx=ebx, ecx=ecx, edx=edx))
    if LEAF_KVM_FEATURES not in have:
        out.append(CpuidEntry(LEAF_KVM_FEATURES, eax=KVM_CLOCK_FEATURES))
    return out


def _conservative_entry(e: CpuidEntry) -> CpuidEntry:
    if e.function == LEAF_XSAVE_STATE:
        # With XSAVE hidden there are no XSAVE state components to enumerate.
        return replace(e, eax=0, ebx=0, ecx=0, edx=0)
    if e.function == LEAF_EXT_FEATURES and e.index == 1:
        # Subleaf 1: AVX-VNNI, AVX512_BF16 and friends, all XSAVE-managed state.
        return replace(e, eax=0)
    regs = {"eax": e.eax, "ebx": e.ebx, "ecx": e.ecx, "edx": e.edx}
    changed = False
    for h in CONSERVATIVE_HIDDEN:
        if h.leaf == e.function and (h.subleaf is None or h.subleaf == e.index):
            regs[h.register] &= ~(1 << h.bit)
            changed = True
    return replace(e, **regs) if changed else e


def hidden_features(supported: Iterable[CpuidEntry], table: Iterable[CpuidEntry]) -> list[str]:
    """Names of the :data:`CONSERVATIVE_HIDDEN` features the host has but ``table`` hides."""
    host, guest = list(supported), list(table)
    names = []
    for h in CONSERVATIVE_HIDDEN:
        have = find(host, h.leaf, h.subleaf or 0)
        shown = find(guest, h.leaf, h.subleaf or 0)
        if have is not None and getattr(have, h.register) >> h.bit & 1 and (
                shown is None or not getattr(shown, h.register) >> h.bit & 1):
            names.append(h.name)
    return names


def find(entries: Iterable[CpuidEntry], function: int, index: int = 0) -> CpuidEntry | None:
    """The entry for ``function`` (and ``index`` when the leaf has subleaves), or None."""
    for e in entries:
        if e.function == function and (not _has_subleaves(function) or e.index == index):
            return e
    return None
