"""Get and set the whole KVM state of a vCPU and of a VM, as plain data (for snapshots).

:class:`VcpuState` holds each KVM structure as the exact bytes KVM returned (the layouts
are in :mod:`vmboot.hv.kvm.abi`), the MSRs as ``index -> value`` and the MP state as its
number; :class:`VmState` holds the in-kernel PICs and IOAPIC, the PIT and the KVM clock.
:func:`set_vcpu_state` puts a vCPU's state back in the order KVM needs: CPUID first (it
decides which MSRs and XSAVE components exist), MSRs, then the special registers (EFER,
the APIC base) before the LAPIC, the TSC deadline after the LAPIC, and the pending
events last (api.rst: KVM_SET_VCPU_EVENTS).

The hv layer knows nothing of the file these go into: see :mod:`vmboot.snapshot`.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

from vmboot.errors import HypervisorError
from vmboot.hv.cpuid_entry import CpuidEntry
from vmboot.hv.kvm import abi
from vmboot.hv.kvm.ioctl import kvm_ioctl
from vmboot.hv.kvm.vcpu import KvmVCPU
from vmboot.hv.kvm.vm import KvmVM
from vmboot.x86 import msr

LATE_MSRS = frozenset({msr.MSR_IA32_TSC_DEADLINE})
"""Written after the LAPIC: KVM ignores a deadline while the LVT timer is not in that mode."""

_CPUID_ENTRY_SIZE = ctypes.sizeof(abi.KvmCpuidEntry2)
_IRQCHIP_IDS = (abi.KVM_IRQCHIP_PIC_MASTER, abi.KVM_IRQCHIP_PIC_SLAVE, abi.KVM_IRQCHIP_IOAPIC)

STATE_CAPABILITIES: dict[str, int] = {
    "xsave": abi.KVM_CAP_XSAVE,
    "xcrs": abi.KVM_CAP_XCRS,
    "vcpu_events": abi.KVM_CAP_VCPU_EVENTS,
    "debugregs": abi.KVM_CAP_DEBUGREGS,
    "adjust_clock": abi.KVM_CAP_ADJUST_CLOCK,
    "pit2": abi.KVM_CAP_PIT2,
    "irqchip": abi.KVM_CAP_IRQCHIP,
}
"""The KVM capabilities a saved state may depend on, by the name a snapshot records."""


@dataclass
class VcpuState:
    """Everything KVM keeps for one vCPU. ``None``: the host KVM lacks that capability."""

    index: int
    regs: bytes
    sregs: bytes
    fpu: bytes
    cpuid: bytes
    """Packed struct kvm_cpuid_entry2: the table set with KVM_SET_CPUID2."""
    msrs: dict[int, int]
    mp_state: int
    events: bytes
    debugregs: bytes | None
    xsave: bytes | None
    xcrs: bytes | None
    lapic: bytes | None

    def to_plain(self) -> dict[str, object]:
        """JSON-ready: bytes as hex, MSRs as ``[index, value]`` pairs."""
        out: dict[str, object] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, bytes):
                value = value.hex()
            elif name == "msrs":
                value = [[i, v] for i, v in sorted(self.msrs.items())]
            out[name] = value
        return out

    @classmethod
    def from_plain(cls, data: dict[str, object]) -> VcpuState:
        """The inverse of :meth:`to_plain`; raises :class:`HypervisorError` naming a bad field."""
        sizes = _VCPU_SIZES
        kwargs: dict[str, object] = {}
        for name in cls.__dataclass_fields__:
            if name not in data:
                raise HypervisorError(f"vCPU state: field {name!r} is missing")
            value = data[name]
            if name in ("index", "mp_state"):
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise HypervisorError(f"vCPU state: {name} {value!r} is not a number >= 0")
            elif name == "msrs":
                kwargs[name] = _msrs_from_plain(value)
                continue
            elif value is not None or name in ("regs", "sregs", "fpu", "cpuid", "events"):
                value = _hex_field(name, value, sizes.get(name))
            kwargs[name] = value
        state = cls(**kwargs)  # type: ignore[arg-type]
        if len(state.cpuid) % _CPUID_ENTRY_SIZE:
            raise HypervisorError(f"vCPU state: cpuid is {len(state.cpuid)} bytes, not a multiple "
                                  f"of struct kvm_cpuid_entry2 ({_CPUID_ENTRY_SIZE} bytes)")
        return state

    def cpuid_entries(self) -> list[CpuidEntry]:
        n = len(self.cpuid) // _CPUID_ENTRY_SIZE
        raw = (abi.KvmCpuidEntry2 * n).from_buffer_copy(self.cpuid)
        return [CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx) for e in raw]


_VCPU_SIZES: dict[str, int] = {
    "regs": ctypes.sizeof(abi.KvmRegs),
    "sregs": ctypes.sizeof(abi.KvmSregs),
    "fpu": ctypes.sizeof(abi.KvmFpu),
    "events": ctypes.sizeof(abi.KvmVcpuEvents),
    "debugregs": ctypes.sizeof(abi.KvmDebugregs),
    "xsave": ctypes.sizeof(abi.KvmXsave),
    "xcrs": ctypes.sizeof(abi.KvmXcrs),
    "lapic": ctypes.sizeof(abi.KvmLapicState),
}


@dataclass
class VmState:
    """The VM-wide KVM state: PIC master, PIC slave, IOAPIC, PIT and the KVM clock."""

    irqchips: list[bytes] = field(default_factory=list)
    """struct kvm_irqchip for chip 0, 1, 2 (empty without the in-kernel irqchip)."""
    pit: bytes | None = None
    clock: bytes = b""

    def to_plain(self) -> dict[str, object]:
        return {"irqchips": [c.hex() for c in self.irqchips],
                "pit": None if self.pit is None else self.pit.hex(), "clock": self.clock.hex()}

    @classmethod
    def from_plain(cls, data: dict[str, object]) -> VmState:
        chips = data.get("irqchips")
        if not isinstance(chips, list) or len(chips) not in (0, len(_IRQCHIP_IDS)):
            raise HypervisorError(f"VM state: irqchips {chips!r} is not a list of 0 or "
                                  f"{len(_IRQCHIP_IDS)} chips")
        pit = data.get("pit")
        return cls(
            irqchips=[_hex_field("irqchip", c, ctypes.sizeof(abi.KvmIrqchip)) for c in chips],
            pit=None if pit is None else _hex_field("pit", pit, ctypes.sizeof(abi.KvmPitState2)),
            clock=_hex_field("clock", data.get("clock"), ctypes.sizeof(abi.KvmClockData)),
        )

    @property
    def clock_ns(self) -> int:
        return int(abi.KvmClockData.from_buffer_copy(self.clock).clock)


def _hex_field(name: str, value: object, size: int | None) -> bytes:
    if not isinstance(value, str):
        raise HypervisorError(f"KVM state: {name} {value!r} is not a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise HypervisorError(f"KVM state: {name} is not valid hex") from None
    if size is not None and len(raw) != size:
        raise HypervisorError(f"KVM state: {name} is {len(raw)} bytes; the KVM structure is {size}")
    return raw


def _msrs_from_plain(value: object) -> dict[int, int]:
    if not isinstance(value, list):
        raise HypervisorError(f"vCPU state: msrs {value!r} is not a list of [index, value]")
    out: dict[int, int] = {}
    for pair in value:
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
                or not 0 <= pair[0] <= 0xFFFFFFFF or not 0 <= pair[1] < 1 << 64):
            raise HypervisorError(f"vCPU state: MSR entry {pair!r} is not [u32 index, u64 value]")
        out[pair[0]] = pair[1]
    return out


# -- ioctls ---------------------------------------------------------------------------------
def _ioctl(fd: int, request: int, buf: ctypes.Structure, what: str) -> None:
    kvm_ioctl(fd, request, buf, who="KVM", what=what)


def _get(fd: int, request: int, struct: type[ctypes.Structure], what: str) -> bytes:
    buf = struct()
    _ioctl(fd, request, buf, what)
    return bytes(buf)


def _set(fd: int, request: int, struct: type[ctypes.Structure], data: bytes, what: str) -> None:
    _ioctl(fd, request, struct.from_buffer_copy(data), what)


def capabilities(vm: KvmVM) -> dict[str, int]:
    """The values of :data:`STATE_CAPABILITIES` on this host (0: missing)."""
    return {name: vm.kvm.check_extension(cap) for name, cap in STATE_CAPABILITIES.items()}


def _pack_cpuid(entries: list[CpuidEntry]) -> bytes:
    """The CPUID table vmboot gave the vCPU, as packed struct kvm_cpuid_entry2.

    This, not KVM_GET_CPUID2, is what is saved: some hosts (PVM) report more feature bits
    through KVM_GET_CPUID2 than were set, and setting those would expose instructions
    the policy hid from the guest on purpose.
    """
    raw = (abi.KvmCpuidEntry2 * len(entries))()
    for k, e in zip(raw, entries, strict=True):
        k.function, k.index, k.flags = e.function, e.index, e.flags
        k.eax, k.ebx, k.ecx, k.edx = e.eax, e.ebx, e.ecx, e.edx
    return bytes(raw)


def _set_cpuid(vcpu: KvmVCPU, raw: bytes) -> None:
    n = len(raw) // _CPUID_ENTRY_SIZE
    buf = abi.kvm_cpuid2_type(n)()
    buf.nent = n
    ctypes.memmove(ctypes.addressof(buf.entries), raw, len(raw))
    _ioctl(vcpu.fd, abi.KVM_SET_CPUID2, buf, f"vCPU {vcpu.index}: KVM_SET_CPUID2 ({n} entries)")


def readable_msrs(vcpu: KvmVCPU, indices: list[int]) -> dict[int, int]:
    """The values of every MSR in ``indices`` that KVM lets this vCPU read (others skipped).

    KVM_GET_MSRS stops at the first MSR it refuses (e.g. one listed by
    KVM_GET_MSR_INDEX_LIST for a feature this vCPU's CPUID does not have): read in
    batches, stepping over each refused one.
    """
    out: dict[int, int] = {}
    rest = list(indices)
    while rest:
        buf = abi.kvm_msrs_type(len(rest))()
        buf.nmsrs = len(rest)
        for i, index in enumerate(rest):
            buf.entries[i].index = index
        done = int(kvm_ioctl(vcpu.fd, abi.KVM_GET_MSRS, buf, who=f"KVM vCPU {vcpu.index}",
                             what="KVM_GET_MSRS"))
        out.update((buf.entries[i].index, buf.entries[i].data) for i in range(done))
        rest = rest[done + 1:]
    return out


def get_vcpu_state(vcpu: KvmVCPU, msr_indices: list[int], caps: dict[str, int]) -> VcpuState:
    """Read every piece of ``vcpu``'s state (it must not be running)."""
    vcpu.flush()
    fd, tag = vcpu.fd, f"vCPU {vcpu.index}: "
    mp = abi.KvmMpState()
    _ioctl(fd, abi.KVM_GET_MP_STATE, mp, tag + "KVM_GET_MP_STATE")
    return VcpuState(
        index=vcpu.index,
        regs=_get(fd, abi.KVM_GET_REGS, abi.KvmRegs, tag + "KVM_GET_REGS"),
        sregs=_get(fd, abi.KVM_GET_SREGS, abi.KvmSregs, tag + "KVM_GET_SREGS"),
        fpu=_get(fd, abi.KVM_GET_FPU, abi.KvmFpu, tag + "KVM_GET_FPU"),
        cpuid=_pack_cpuid(vcpu.cpuid),
        msrs=readable_msrs(vcpu, msr_indices),
        mp_state=int(mp.mp_state),
        events=_get(fd, abi.KVM_GET_VCPU_EVENTS, abi.KvmVcpuEvents, tag + "KVM_GET_VCPU_EVENTS"),
        debugregs=(_get(fd, abi.KVM_GET_DEBUGREGS, abi.KvmDebugregs, tag + "KVM_GET_DEBUGREGS")
                   if caps.get("debugregs") else None),
        xsave=(_get(fd, abi.KVM_GET_XSAVE, abi.KvmXsave, tag + "KVM_GET_XSAVE")
               if caps.get("xsave") else None),
        xcrs=(_get(fd, abi.KVM_GET_XCRS, abi.KvmXcrs, tag + "KVM_GET_XCRS")
              if caps.get("xcrs") else None),
        lapic=vcpu.get_lapic() if _has_irqchip(vcpu) else None,
    )


def _has_irqchip(vcpu: KvmVCPU) -> bool:
    """Whether the vCPU's VM has the in-kernel irqchip (and so each vCPU a LAPIC)."""
    vm = vcpu.vm
    return isinstance(vm, KvmVM) and vm.irqchip


def set_vcpu_state(vcpu: KvmVCPU, state: VcpuState) -> None:
    """Put ``state`` into ``vcpu`` (created, never run) in the order KVM requires."""
    fd, tag = vcpu.fd, f"vCPU {vcpu.index}: "
    if (state.lapic is None) == _has_irqchip(vcpu):
        raise HypervisorError(
            f"{tag}the saved state {'has no' if state.lapic is None else 'has a'} LAPIC but the "
            f"VM was created {'with' if _has_irqchip(vcpu) else 'without'} the in-kernel irqchip; "
            "create it with irqchip matching the saved VM"
        )
    _set_cpuid(vcpu, state.cpuid)
    vcpu.cpuid = state.cpuid_entries()
    vcpu.set_msrs({i: v for i, v in state.msrs.items() if i not in LATE_MSRS})
    _set(fd, abi.KVM_SET_SREGS, abi.KvmSregs, state.sregs, tag + "KVM_SET_SREGS")
    _set(fd, abi.KVM_SET_REGS, abi.KvmRegs, state.regs, tag + "KVM_SET_REGS")
    _set(fd, abi.KVM_SET_FPU, abi.KvmFpu, state.fpu, tag + "KVM_SET_FPU")
    if state.xsave is not None:
        _set(fd, abi.KVM_SET_XSAVE, abi.KvmXsave, state.xsave, tag + "KVM_SET_XSAVE")
    if state.xcrs is not None:
        _set(fd, abi.KVM_SET_XCRS, abi.KvmXcrs, state.xcrs, tag + "KVM_SET_XCRS")
    if state.lapic is not None:
        vcpu.set_lapic(state.lapic)
    late = {i: v for i, v in state.msrs.items() if i in LATE_MSRS}
    if late:
        vcpu.set_msrs(late)
    _ioctl(fd, abi.KVM_SET_MP_STATE, abi.KvmMpState(mp_state=state.mp_state),
           tag + "KVM_SET_MP_STATE")
    if state.debugregs is not None:
        _set(fd, abi.KVM_SET_DEBUGREGS, abi.KvmDebugregs, state.debugregs,
             tag + "KVM_SET_DEBUGREGS")
    events = abi.KvmVcpuEvents.from_buffer_copy(state.events)
    events.flags |= abi.KVM_VCPUEVENT_VALID_NMI_PENDING | abi.KVM_VCPUEVENT_VALID_SIPI_VECTOR
    _ioctl(fd, abi.KVM_SET_VCPU_EVENTS, events, tag + "KVM_SET_VCPU_EVENTS")


def get_vm_state(vm: KvmVM) -> VmState:
    """Read the PICs, IOAPIC, PIT (with the in-kernel irqchip) and the KVM clock."""
    state = VmState()
    if vm.irqchip:
        for chip_id in _IRQCHIP_IDS:
            chip = abi.KvmIrqchip(chip_id=chip_id)
            _ioctl(vm.fd, abi.KVM_GET_IRQCHIP, chip, f"VM: KVM_GET_IRQCHIP (chip {chip_id})")
            state.irqchips.append(bytes(chip))
        state.pit = _get(vm.fd, abi.KVM_GET_PIT2, abi.KvmPitState2, "VM: KVM_GET_PIT2")
    state.clock = _get(vm.fd, abi.KVM_GET_CLOCK, abi.KvmClockData, "VM: KVM_GET_CLOCK")
    return state


def set_vm_state(vm: KvmVM, state: VmState) -> None:
    """Put ``state`` back: interrupt controllers, PIT, then the clock (continuing, not jumping)."""
    if bool(state.irqchips) != bool(vm.irqchip):
        raise HypervisorError(
            "VM: the saved state and this VM disagree about the in-kernel irqchip "
            f"(saved: {'yes' if state.irqchips else 'no'}, VM: {'yes' if vm.irqchip else 'no'})"
        )
    for raw in state.irqchips:
        chip = abi.KvmIrqchip.from_buffer_copy(raw)
        _ioctl(vm.fd, abi.KVM_SET_IRQCHIP, chip, f"VM: KVM_SET_IRQCHIP (chip {chip.chip_id})")
    if state.pit is not None:
        _set(vm.fd, abi.KVM_SET_PIT2, abi.KvmPitState2, state.pit, "VM: KVM_SET_PIT2")
    clock = abi.KvmClockData.from_buffer_copy(state.clock)
    clock.flags = 0  # the saved value as is: the guest's time continues from the snapshot
    _ioctl(vm.fd, abi.KVM_SET_CLOCK, clock, "VM: KVM_SET_CLOCK")


__all__ = [
    "LATE_MSRS", "STATE_CAPABILITIES", "VcpuState", "VmState", "capabilities",
    "get_vcpu_state", "get_vm_state", "readable_msrs", "set_vcpu_state", "set_vm_state",
]
