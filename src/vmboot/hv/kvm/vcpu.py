"""A KVM vCPU: registers through KVM_GET/SET_(S)REGS and MSRs, plus the mmapped ``kvm_run`` page.

A new vCPU is in KVM's reset state; :meth:`KvmVCPU.set_cpuid`, :meth:`KvmVCPU.set_msrs`,
:meth:`KvmVCPU.set_fpu_control` and :meth:`KvmVCPU.set_lapic_lint` set what a boot needs,
with the values :mod:`vmboot.linux.configurator.cpu_reset` chooses.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence

from vmboot.errors import HypervisorError, KvmIoctlError
from vmboot.hv.base import VirtualCPU, VirtualMachine
from vmboot.hv.cpuid_entry import CpuidEntry
from vmboot.hv.kvm import abi
from vmboot.hv.kvm.ioctl import kvm_ioctl
from vmboot.hv.registers import (
    GENERAL_REGISTERS,
    DescriptorTable,
    Register,
    Segment,
    SegmentRegister,
)
from vmboot.x86.apic import (
    APIC_LVT_DELIVERY_MODE_MASK,
    APIC_LVT_DELIVERY_MODE_SHIFT,
    APIC_REG_LVT_LINT0,
    APIC_REG_LVT_LINT1,
    LvtDelivery,
)

_MASK64 = (1 << 64) - 1
_MASK16 = 0xFFFF
_MASK32 = 0xFFFFFFFF

_SREGS_SCALARS: dict[Register, str] = {
    Register.CR0: "cr0", Register.CR2: "cr2", Register.CR3: "cr3", Register.CR4: "cr4",
    Register.CR8: "cr8", Register.EFER: "efer",
}
_GENERAL = frozenset(GENERAL_REGISTERS)

CLOSE_WAIT_SECONDS = 30.0
"""How long :meth:`KvmVCPU.close` waits for a run in another thread to leave KVM_RUN."""

SNAPSHOT_SEGMENTS = (SegmentRegister.CS, SegmentRegister.SS)
"""Segment selectors included in :meth:`KvmVCPU.snapshot`."""


def _check_u64(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MASK64:
        raise HypervisorError(f"register {name}: value {value!r} is not an unsigned 64-bit integer")
    return value


def segment_from_kvm(k: abi.KvmSegment) -> Segment:
    return Segment(
        base=k.base, limit=k.limit, selector=k.selector, type=k.type, present=bool(k.present),
        dpl=k.dpl, db=bool(k.db), s=bool(k.s), l=bool(k.l), g=bool(k.g), avl=bool(k.avl),
        unusable=bool(k.unusable),
    )


def segment_to_kvm(name: str, seg: Segment, out: abi.KvmSegment) -> None:
    checks = (("base", seg.base, _MASK64), ("limit", seg.limit, _MASK32),
              ("selector", seg.selector, _MASK16), ("type", seg.type, 0xF), ("dpl", seg.dpl, 3))
    for field, value, mask in checks:
        if not isinstance(value, int) or not 0 <= value <= mask:
            raise HypervisorError(f"segment {name}: {field} {value!r} is outside 0..{mask:#x}")
    out.base, out.limit, out.selector = seg.base, seg.limit, seg.selector
    out.type, out.dpl = seg.type, seg.dpl
    out.present, out.db, out.s, out.l = int(seg.present), int(seg.db), int(seg.s), int(seg.l)
    out.g, out.avl, out.unusable = int(seg.g), int(seg.avl), int(seg.unusable)


class KvmVCPU(VirtualCPU):
    """vCPU ``index`` of a KVM VM (create it with :meth:`vmboot.hv.kvm.vm.KvmVM.create_vcpu`)."""

    def __init__(self, vm: VirtualMachine, vm_fd: int, index: int, run_page_size: int) -> None:
        """Create vCPU ``index`` in the VM whose fd is ``vm_fd`` (``vm`` is the object that owns it).

        The vCPU starts in KVM's reset state: the state a boot needs (CPUID, MSRs, FPU, LAPIC)
        is given through :meth:`set_cpuid`, :meth:`set_msrs`, :meth:`set_fpu_control` and
        :meth:`set_lapic_lint` (:func:`vmboot.linux.configurator.cpu_reset.set_firmware_state`
        does it).
        """
        self._vm = vm
        self._index = index
        self._fd: int | None = None
        self._run: mmap.mmap | None = None
        self._state = threading.Condition()
        self._run_thread: int | None = None
        self._on_close: Callable[[], object] | None = None
        self._close_when_run_ends = False
        self._after_close: list[Callable[[], object]] = []
        self.cpuid: list[CpuidEntry] = []
        self._fd = int(kvm_ioctl(vm_fd, abi.KVM_CREATE_VCPU, index, who=f"KVM vCPU {index}",
                                 what="KVM_CREATE_VCPU"))
        try:
            self._run = mmap.mmap(self._fd, run_page_size, flags=mmap.MAP_SHARED,
                                  prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            self.close()
            raise
        self._regs = abi.KvmRegs()
        self._sregs = abi.KvmSregs()
        self._sregs_dirty = False

    # -- identity, fds ------------------------------------------------------------------------
    @property
    def vm(self) -> VirtualMachine:
        return self._vm

    @property
    def index(self) -> int:
        return self._index

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise HypervisorError(f"KVM vCPU {self._index}: used after close()")
        return self._fd

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has unmapped kvm_run (the vCPU can no longer run)."""
        return self._run is None

    @property
    def run_page(self) -> mmap.mmap:
        """The shared ``struct kvm_run`` mapping (offsets in :mod:`vmboot.hv.kvm.abi`)."""
        if self._run is None:
            raise HypervisorError(f"KVM vCPU {self._index}: used after close()")
        return self._run

    def begin_run(self, on_close: Callable[[], object]) -> None:
        """Mark this vCPU as running in the calling thread (the run loop calls this).

        Until :meth:`end_run`, :meth:`close` from another thread calls ``on_close`` (which
        must make the run end soon, e.g. kick the thread out of KVM_RUN) and waits for
        :meth:`end_run` before it unmaps kvm_run and closes the fd, so a VM closed while its
        vCPU thread is inside KVM_RUN neither pulls the page from under the loop nor leaves
        the thread issuing ioctls on a closed (or reused) fd number.
        """
        with self._state:
            _ = self.fd  # refuse a run after close()
            if self._run_thread is not None:
                raise HypervisorError(f"KVM vCPU {self._index}: already running in another thread")
            self._run_thread = threading.get_ident()
            self._on_close = on_close

    def end_run(self) -> None:
        """The run that :meth:`begin_run` marked has ended (a close deferred by it happens now)."""
        with self._state:
            self._run_thread = None
            self._on_close = None
            deferred, self._close_when_run_ends = self._close_when_run_ends, False
            self._state.notify_all()
        if deferred:
            self.close()

    @property
    def close_deferred(self) -> bool:
        """True while a :meth:`close` made from inside this vCPU's own run waits for it to end."""
        return self._close_when_run_ends

    def call_after_close(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` once this vCPU is really closed (now, if it already is)."""
        if self._fd is None and not self._close_when_run_ends:
            callback()
        else:
            self._after_close.append(callback)

    def close(self) -> None:
        """Unmap kvm_run and close the vCPU fd; idempotent.

        A run in progress in another thread is stopped first and waited for (up to
        :data:`CLOSE_WAIT_SECONDS`). Called from inside the run itself (a device handler on
        the vCPU's own thread), the run is asked to end and the close happens when it has
        unwound (:meth:`end_run`): the run loop still holds views of kvm_run until then.
        """
        me = threading.get_ident()
        with self._state:
            if self._run_thread == me:
                on_own_thread, self._close_when_run_ends = self._on_close, True
            else:
                on_own_thread = None
            running = self._run_thread is not None and self._run_thread != me
            on_close = self._on_close if running else None
        if on_own_thread is not None:
            on_own_thread()
            return
        if on_close is not None:
            on_close()
        if running:
            with self._state:
                if not self._state.wait_for(lambda: self._run_thread in (None, me),
                                            timeout=CLOSE_WAIT_SECONDS):
                    raise HypervisorError(
                        f"KVM vCPU {self._index}: close(): the run in thread {self._run_thread} "
                        f"did not leave KVM_RUN within {CLOSE_WAIT_SECONDS:g} s; not closing"
                    )
        if self._run is not None:
            run, self._run = self._run, None
            run.close()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        callbacks, self._after_close = self._after_close, []
        for callback in callbacks:
            callback()

    def _ioctl(self, request: int, arg: ctypes.Structure | int | bytes, what: str) -> int:
        result = kvm_ioctl(self.fd, request, arg, who=f"KVM vCPU {self._index}", what=what)
        return result if isinstance(result, int) else 0

    # -- general and control registers --------------------------------------------------------
    def _load_regs(self) -> abi.KvmRegs:
        self._ioctl(abi.KVM_GET_REGS, self._regs, "KVM_GET_REGS")
        return self._regs

    def _load_sregs(self) -> abi.KvmSregs:
        """The special registers: KVM's, or the not yet accepted ones set through this object."""
        if not self._sregs_dirty:
            self._ioctl(abi.KVM_GET_SREGS, self._sregs, "KVM_GET_SREGS")
        return self._sregs

    def _commit_sregs(self) -> None:
        """Hand the special registers to KVM, or keep them pending if KVM finds them inconsistent.

        Boot code sets segments, descriptor tables and control registers in several calls
        (e.g. a 64-bit CS before EFER.LMA), and KVM refuses some intermediate states. Such a
        state stays pending here (reads return it) until a later call completes it, or until
        :meth:`flush` (which the run loop calls before entering the guest) reports it.
        """
        self._sregs_dirty = True
        try:
            self._ioctl(abi.KVM_SET_SREGS, self._sregs, "KVM_SET_SREGS")
        except KvmIoctlError as e:
            if e.errno != errno.EINVAL:
                raise
            return
        self._sregs_dirty = False

    def flush(self) -> None:
        """Apply pending special registers; raise if KVM still refuses them (before a run)."""
        if not self._sregs_dirty:
            return
        try:
            self._ioctl(abi.KVM_SET_SREGS, self._sregs, "KVM_SET_SREGS")
        except KvmIoctlError as e:
            s = self._sregs
            raise HypervisorError(
                f"KVM vCPU {self._index}: KVM refuses the special registers "
                f"({os.strerror(e.errno)}): "
                f"cr0={s.cr0:#x} cr3={s.cr3:#x} cr4={s.cr4:#x} efer={s.efer:#x} cs.l={s.cs.l} "
                f"cs.db={s.cs.db}; valid: long mode needs CR0.PG, CR4.PAE, EFER.LME and EFER.LMA "
                "together, and a 64-bit CS (l=1) needs long mode"
            ) from None
        self._sregs_dirty = False

    @property
    def has_pending_state(self) -> bool:
        """True while special registers set here have not been accepted by KVM yet."""
        return self._sregs_dirty

    def get_registers(self, registers: Iterable[Register]) -> dict[Register, int]:
        wanted = [Register(r) for r in registers]
        out: dict[Register, int] = {}
        if any(r in _GENERAL for r in wanted):
            regs = self._load_regs()
            out.update({r: getattr(regs, r.value) for r in wanted if r in _GENERAL})
        if any(r in _SREGS_SCALARS for r in wanted):
            sregs = self._load_sregs()
            out.update({r: getattr(sregs, _SREGS_SCALARS[r]) for r in wanted if r in _SREGS_SCALARS})
        return {r: out[r] for r in wanted}

    def set_registers(self, values: Mapping[Register, int]) -> None:
        checked = {Register(r): _check_u64(Register(r).name, v) for r, v in values.items()}
        special = {r: v for r, v in checked.items() if r in _SREGS_SCALARS}
        general = {r: v for r, v in checked.items() if r in _GENERAL}
        # Special registers first: a mode change (CR0/EFER) must be in place before RIP matters.
        if special:
            sregs = self._load_sregs()
            for r, v in special.items():
                setattr(sregs, _SREGS_SCALARS[r], v)
            self._commit_sregs()
        if general:
            regs = self._load_regs()
            for r, v in general.items():
                setattr(regs, r.value, v)
            self._ioctl(abi.KVM_SET_REGS, regs, "KVM_SET_REGS")

    # -- segments and descriptor tables -------------------------------------------------------
    def get_segment(self, register: SegmentRegister) -> Segment:
        reg = SegmentRegister(register)
        return segment_from_kvm(getattr(self._load_sregs(), reg.value))

    def set_segments(self, values: Mapping[SegmentRegister, Segment]) -> None:
        sregs = self._load_sregs()
        for reg, seg in values.items():
            reg = SegmentRegister(reg)
            segment_to_kvm(reg.name, seg, getattr(sregs, reg.value))
        self._commit_sregs()

    def _get_table(self, which: str) -> DescriptorTable:
        t = getattr(self._load_sregs(), which)
        return DescriptorTable(base=t.base, limit=t.limit)

    def _set_table(self, which: str, table: DescriptorTable) -> None:
        if not 0 <= table.base <= _MASK64 or not 0 <= table.limit <= _MASK16:
            raise HypervisorError(
                f"{which.upper()}: base {table.base:#x} / limit {table.limit:#x} out of range "
                "(base: unsigned 64-bit, limit: 0..0xffff)"
            )
        sregs = self._load_sregs()
        t = getattr(sregs, which)
        t.base, t.limit = table.base, table.limit
        self._commit_sregs()

    def get_gdt(self) -> DescriptorTable:
        return self._get_table("gdt")

    def set_gdt(self, table: DescriptorTable) -> None:
        self._set_table("gdt", table)

    def get_idt(self) -> DescriptorTable:
        return self._get_table("idt")

    def set_idt(self, table: DescriptorTable) -> None:
        self._set_table("idt", table)

    # -- MSRs ---------------------------------------------------------------------------------
    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        wanted = list(indices)
        buf = abi.kvm_msrs_type(len(wanted))()
        buf.nmsrs = len(wanted)
        for i, index in enumerate(wanted):
            buf.entries[i].index = index
        done = self._ioctl(abi.KVM_GET_MSRS, buf, "KVM_GET_MSRS")
        if done != len(wanted):
            raise HypervisorError(
                f"KVM vCPU {self._index}: KVM_GET_MSRS could not read MSR {wanted[done]:#x} "
                f"({done} of {len(wanted)} read); KVM supports the MSRs in KVM.msr_index_list()"
            )
        return {buf.entries[i].index: buf.entries[i].data for i in range(len(wanted))}

    def set_msrs(self, values: Mapping[int, int]) -> None:
        items = list(values.items())
        buf = abi.kvm_msrs_type(len(items))()
        buf.nmsrs = len(items)
        for i, (index, value) in enumerate(items):
            if not isinstance(index, int) or not 0 <= index <= _MASK32:
                raise HypervisorError(f"MSR index {index!r} is not an unsigned 32-bit integer")
            buf.entries[i].index = index
            buf.entries[i].data = _check_u64(f"MSR {index:#x}", value)
        done = self._ioctl(abi.KVM_SET_MSRS, buf, "KVM_SET_MSRS")
        if done != len(items):
            index, value = items[done]
            raise HypervisorError(
                f"KVM vCPU {self._index}: KVM_SET_MSRS refused MSR {index:#x} = {value:#x} "
                f"({done} of {len(items)} written)"
            )

    # -- CPUID, FPU, LAPIC, MP state ----------------------------------------------------------
    def set_cpuid(self, entries: Sequence[CpuidEntry]) -> None:
        """KVM_SET_CPUID2 (must happen before the first KVM_RUN)."""
        buf = abi.kvm_cpuid2_type(len(entries))()
        buf.nent = len(entries)
        for i, e in enumerate(entries):
            k = buf.entries[i]
            k.function, k.index, k.flags = e.function, e.index, e.flags
            k.eax, k.ebx, k.ecx, k.edx = e.eax, e.ebx, e.ecx, e.edx
        self._ioctl(abi.KVM_SET_CPUID2, buf, f"KVM_SET_CPUID2 ({len(entries)} entries)")
        self.cpuid = list(entries)

    def get_fpu(self) -> abi.KvmFpu:
        fpu = abi.KvmFpu()
        self._ioctl(abi.KVM_GET_FPU, fpu, "KVM_GET_FPU")
        return fpu

    def set_fpu_control(self, fcw: int, mxcsr: int) -> None:
        """KVM_SET_FPU with the x87 control word ``fcw`` and ``mxcsr``, the rest cleared."""
        if not 0 <= fcw <= _MASK16:
            raise HypervisorError(f"FPU control word {fcw!r} is not an unsigned 16-bit integer")
        if not 0 <= mxcsr <= _MASK32:
            raise HypervisorError(f"MXCSR {mxcsr!r} is not an unsigned 32-bit integer")
        self._ioctl(abi.KVM_SET_FPU, abi.KvmFpu(fcw=fcw, mxcsr=mxcsr), "KVM_SET_FPU")

    def get_lapic(self) -> bytes:
        """The 1 KiB local-APIC register page (needs the in-kernel irqchip)."""
        state = abi.KvmLapicState()
        self._ioctl(abi.KVM_GET_LAPIC, state, "KVM_GET_LAPIC")
        return bytes(state)

    def set_lapic(self, page: bytes) -> None:
        if len(page) != abi.KVM_APIC_REG_SIZE:
            raise HypervisorError(f"LAPIC page: {len(page)} bytes, expected {abi.KVM_APIC_REG_SIZE}")
        self._ioctl(abi.KVM_SET_LAPIC, page, "KVM_SET_LAPIC")

    def set_lapic_lint(self, lint0: LvtDelivery, lint1: LvtDelivery) -> None:
        """The delivery modes of the LAPIC's LINT0 and LINT1 entries (needs the irqchip)."""
        page = bytearray(self.get_lapic())
        for reg, mode in ((APIC_REG_LVT_LINT0, lint0), (APIC_REG_LVT_LINT1, lint1)):
            (value,) = struct.unpack_from("<I", page, reg)
            value = (value & ~APIC_LVT_DELIVERY_MODE_MASK) | (LvtDelivery(mode)
                                                               << APIC_LVT_DELIVERY_MODE_SHIFT)
            struct.pack_into("<I", page, reg, value)
        self.set_lapic(bytes(page))

    def set_guest_debug(self, control: int, debugregs: tuple[int, ...] = ()) -> None:
        """KVM_SET_GUEST_DEBUG: ``control`` is KVM_GUESTDBG_* bits; ``debugregs`` DR0-DR7.

        With ``KVM_GUESTDBG_USE_HW_BP``, DR0-DR3 and DR7 are the host's, and a hit ends
        KVM_RUN with KVM_EXIT_DEBUG instead of raising #DB in the guest.
        """
        if len(debugregs) > 8:
            raise HypervisorError(f"KVM_SET_GUEST_DEBUG: {len(debugregs)} debug registers given, "
                                  f"at most 8 (DR0-DR7)")
        arg = abi.KvmGuestDebug()
        arg.control = control
        for i, value in enumerate(debugregs):
            arg.arch.debugreg[i] = _check_u64(f"DR{i}", value)
        self._ioctl(abi.KVM_SET_GUEST_DEBUG, arg, "KVM_SET_GUEST_DEBUG")

    def get_mp_state(self) -> int:
        """KVM_GET_MP_STATE: RUNNABLE (0), HALTED (3), ... (see abi.KVM_MP_STATE_*)."""
        state = abi.KvmMpState()
        self._ioctl(abi.KVM_GET_MP_STATE, state, "KVM_GET_MP_STATE")
        return int(state.mp_state)

    # -- snapshots ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, int]:
        """Every general and control register, plus CS/SS selectors, by lower-case name."""
        regs = self._load_regs()
        out = {r.value: getattr(regs, r.value) for r in GENERAL_REGISTERS}
        sregs = self._load_sregs()
        out.update({name: getattr(sregs, name) for name in _SREGS_SCALARS.values()})
        for seg in SNAPSHOT_SEGMENTS:
            out[seg.value] = getattr(sregs, seg.value).selector
        return out
