"""The KVM user-space ABI: every ioctl number, C struct layout and constant vmboot uses.

Everything here mirrors ``<linux/kvm.h>`` and ``<asm/kvm.h>`` (x86_64) and nothing else
lives here; ``tests/test_kvm_abi.py`` compiles a C program against the installed headers
and checks every size, offset and number below against it.

Reference: Documentation/virt/kvm/api.rst.
"""

from __future__ import annotations

import ctypes
import functools
from typing import ClassVar

u8 = ctypes.c_uint8
u16 = ctypes.c_uint16
u32 = ctypes.c_uint32
u64 = ctypes.c_uint64
s32 = ctypes.c_int32

# --------------------------------------------------------------------------------------------
# ioctl number encoding (include/uapi/asm-generic/ioctl.h)
# --------------------------------------------------------------------------------------------
_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2

KVMIO = 0xAE
"""The ioctl 'type' byte of every KVM ioctl."""


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << _IOC_DIRSHIFT) | (KVMIO << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (
        size << _IOC_SIZESHIFT
    )


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _ior(nr: int, struct: type[ctypes._CData]) -> int:
    return _ioc(_IOC_READ, nr, ctypes.sizeof(struct))


def _iow(nr: int, struct: type[ctypes._CData]) -> int:
    return _ioc(_IOC_WRITE, nr, ctypes.sizeof(struct))


def _iowr(nr: int, struct: type[ctypes._CData]) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, ctypes.sizeof(struct))


# --------------------------------------------------------------------------------------------
# Structures
# --------------------------------------------------------------------------------------------
class KvmRegs(ctypes.Structure):
    """struct kvm_regs (KVM_GET_REGS / KVM_SET_REGS)."""

    _fields_: ClassVar = [
        (name, u64)
        for name in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
            "rip", "rflags",
        )
    ]


class KvmSegment(ctypes.Structure):
    """struct kvm_segment: a segment register and its hidden descriptor cache."""

    _fields_: ClassVar = [
        ("base", u64),
        ("limit", u32),
        ("selector", u16),
        ("type", u8),
        ("present", u8),
        ("dpl", u8),
        ("db", u8),
        ("s", u8),
        ("l", u8),
        ("g", u8),
        ("avl", u8),
        ("unusable", u8),
        ("padding", u8),
    ]


class KvmDtable(ctypes.Structure):
    """struct kvm_dtable: GDTR or IDTR."""

    _fields_: ClassVar = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


KVM_NR_INTERRUPTS = 256


class KvmSregs(ctypes.Structure):
    """struct kvm_sregs (KVM_GET_SREGS / KVM_SET_SREGS)."""

    _fields_: ClassVar = [
        ("cs", KvmSegment), ("ds", KvmSegment), ("es", KvmSegment), ("fs", KvmSegment),
        ("gs", KvmSegment), ("ss", KvmSegment), ("tr", KvmSegment), ("ldt", KvmSegment),
        ("gdt", KvmDtable), ("idt", KvmDtable),
        ("cr0", u64), ("cr2", u64), ("cr3", u64), ("cr4", u64), ("cr8", u64),
        ("efer", u64), ("apic_base", u64),
        ("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class KvmFpu(ctypes.Structure):
    """struct kvm_fpu (KVM_GET_FPU / KVM_SET_FPU): the legacy FXSAVE-like FPU/SSE state."""

    _fields_: ClassVar = [
        ("fpr", (u8 * 16) * 8),
        ("fcw", u16),
        ("fsw", u16),
        ("ftwx", u8),
        ("pad1", u8),
        ("last_opcode", u16),
        ("last_ip", u64),
        ("last_dp", u64),
        ("xmm", (u8 * 16) * 16),
        ("mxcsr", u32),
        ("pad2", u32),
    ]


class KvmMsrEntry(ctypes.Structure):
    """struct kvm_msr_entry."""

    _fields_: ClassVar = [("index", u32), ("reserved", u32), ("data", u64)]


class KvmMsrs(ctypes.Structure):
    """struct kvm_msrs header (followed by ``nmsrs`` entries; see :func:`kvm_msrs_type`)."""

    _fields_: ClassVar = [("nmsrs", u32), ("pad", u32)]


class KvmMsrList(ctypes.Structure):
    """struct kvm_msr_list header (followed by ``nmsrs`` u32 indices)."""

    _fields_: ClassVar = [("nmsrs", u32)]


class KvmCpuidEntry2(ctypes.Structure):
    """struct kvm_cpuid_entry2: one CPUID leaf/subleaf."""

    _fields_: ClassVar = [
        ("function", u32),
        ("index", u32),
        ("flags", u32),
        ("eax", u32),
        ("ebx", u32),
        ("ecx", u32),
        ("edx", u32),
        ("padding", u32 * 3),
    ]


class KvmCpuid2(ctypes.Structure):
    """struct kvm_cpuid2 header (followed by ``nent`` entries; see :func:`kvm_cpuid2_type`)."""

    _fields_: ClassVar = [("nent", u32), ("padding", u32)]


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0
"""The leaf has subleaves: ``index`` matters (the header spells it SIGNIFCANT)."""


@functools.cache
def kvm_msrs_type(n: int) -> type[ctypes.Structure]:
    """struct kvm_msrs with room for ``n`` entries."""
    return type(f"KvmMsrs{n}", (ctypes.Structure,), {
        "_fields_": [("nmsrs", u32), ("pad", u32), ("entries", KvmMsrEntry * n)],
    })


@functools.cache
def kvm_msr_list_type(n: int) -> type[ctypes.Structure]:
    """struct kvm_msr_list with room for ``n`` indices."""
    return type(f"KvmMsrList{n}", (ctypes.Structure,), {
        "_fields_": [("nmsrs", u32), ("indices", u32 * n)],
    })


@functools.cache
def kvm_cpuid2_type(n: int) -> type[ctypes.Structure]:
    """struct kvm_cpuid2 with room for ``n`` entries."""
    return type(f"KvmCpuid2_{n}", (ctypes.Structure,), {
        "_fields_": [("nent", u32), ("padding", u32), ("entries", KvmCpuidEntry2 * n)],
    })


class KvmUserspaceMemoryRegion(ctypes.Structure):
    """struct kvm_userspace_memory_region (KVM_SET_USER_MEMORY_REGION)."""

    _fields_: ClassVar = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),
        ("userspace_addr", u64),
    ]


KVM_APIC_REG_SIZE = 0x400


class KvmLapicState(ctypes.Structure):
    """struct kvm_lapic_state: the local APIC's 1 KiB register page."""

    _fields_: ClassVar = [("regs", ctypes.c_char * KVM_APIC_REG_SIZE)]


class KvmPitConfig(ctypes.Structure):
    """struct kvm_pit_config (KVM_CREATE_PIT2)."""

    _fields_: ClassVar = [("flags", u32), ("pad", u32 * 15)]


KVM_PIT_SPEAKER_DUMMY = 1
"""KVM_CREATE_PIT2 flag: emulate a dummy speaker port (0x61) in the kernel."""


class KvmIrqLevel(ctypes.Structure):
    """struct kvm_irq_level (KVM_IRQ_LINE); ``irq`` shares a union with ``status``."""

    _fields_: ClassVar = [("irq", u32), ("level", u32)]


class KvmIoeventfd(ctypes.Structure):
    """struct kvm_ioeventfd (KVM_IOEVENTFD): signal ``fd`` on a guest write to ``addr``."""

    _fields_: ClassVar = [
        ("datamatch", u64),
        ("addr", u64),
        ("len", u32),
        ("fd", s32),
        ("flags", u32),
        ("pad", u8 * 36),
    ]


KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2


class KvmIrqfd(ctypes.Structure):
    """struct kvm_irqfd (KVM_IRQFD): a write to ``fd`` raises (edge) interrupt ``gsi``."""

    _fields_: ClassVar = [
        ("fd", u32),
        ("gsi", u32),
        ("flags", u32),
        ("resamplefd", u32),
        ("pad", u8 * 16),
    ]


KVM_IRQFD_FLAG_DEASSIGN = 1 << 0


class KvmMpState(ctypes.Structure):
    """struct kvm_mp_state."""

    _fields_: ClassVar = [("mp_state", u32)]


class KvmTranslation(ctypes.Structure):
    """struct kvm_translation (KVM_TRANSLATE)."""

    _fields_: ClassVar = [
        ("linear_address", u64),
        ("physical_address", u64),
        ("valid", u8),
        ("writeable", u8),
        ("usermode", u8),
        ("pad", u8 * 5),
    ]


# -- state for snapshots (KVM_GET/SET_* of the VM and the vCPU) --------------------------------
class KvmPicState(ctypes.Structure):
    """struct kvm_pic_state: one 8259A of the in-kernel PIC."""

    _fields_: ClassVar = [
        (name, u8)
        for name in (
            "last_irr", "irr", "imr", "isr", "priority_add", "irq_base", "read_reg_select",
            "poll", "special_mask", "init_state", "auto_eoi", "rotate_on_auto_eoi",
            "special_fully_nested_mode", "init4", "elcr", "elcr_mask",
        )
    ]


KVM_IOAPIC_NUM_PINS = 24


class KvmIoapicState(ctypes.Structure):
    """struct kvm_ioapic_state (each redirection entry kept as its 64 raw bits)."""

    _fields_: ClassVar = [
        ("base_address", u64),
        ("ioregsel", u32),
        ("id", u32),
        ("irr", u32),
        ("pad", u32),
        ("redirtbl", u64 * KVM_IOAPIC_NUM_PINS),
    ]


KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2
KVM_NR_IRQCHIPS = 3
IRQCHIP_UNION_SIZE = 512


class KvmIrqchipUnion(ctypes.Union):
    _fields_: ClassVar = [
        ("dummy", ctypes.c_char * IRQCHIP_UNION_SIZE),
        ("pic", KvmPicState),
        ("ioapic", KvmIoapicState),
    ]


class KvmIrqchip(ctypes.Structure):
    """struct kvm_irqchip (KVM_GET_IRQCHIP / KVM_SET_IRQCHIP): one of the PICs or the IOAPIC."""

    _fields_: ClassVar = [("chip_id", u32), ("pad", u32), ("chip", KvmIrqchipUnion)]


class KvmPitChannelState(ctypes.Structure):
    """struct kvm_pit_channel_state: one 8254 counter."""

    _fields_: ClassVar = [
        ("count", u32),
        ("latched_count", u16),
        ("count_latched", u8),
        ("status_latched", u8),
        ("status", u8),
        ("read_state", u8),
        ("write_state", u8),
        ("write_latch", u8),
        ("rw_mode", u8),
        ("mode", u8),
        ("bcd", u8),
        ("gate", u8),
        ("count_load_time", ctypes.c_int64),
    ]


class KvmPitState2(ctypes.Structure):
    """struct kvm_pit_state2 (KVM_GET_PIT2 / KVM_SET_PIT2)."""

    _fields_: ClassVar = [
        ("channels", KvmPitChannelState * 3), ("flags", u32), ("reserved", u32 * 9),
    ]


class KvmClockData(ctypes.Structure):
    """struct kvm_clock_data (KVM_GET_CLOCK / KVM_SET_CLOCK): the guest's kvmclock in ns."""

    _fields_: ClassVar = [
        ("clock", u64), ("flags", u32), ("pad0", u32), ("realtime", u64), ("host_tsc", u64),
        ("pad", u32 * 4),
    ]


KVM_CLOCK_TSC_STABLE = 2
KVM_CLOCK_REALTIME = 1 << 2
KVM_CLOCK_HOST_TSC = 1 << 3


class KvmVcpuEvents(ctypes.Structure):
    """struct kvm_vcpu_events: pending/injected exception, interrupt, NMI, SMI (raw groups)."""

    _fields_: ClassVar = [
        ("exception", u8 * 8),
        ("interrupt", u8 * 4),
        ("nmi", u8 * 4),
        ("sipi_vector", u32),
        ("flags", u32),
        ("smi", u8 * 4),
        ("triple_fault", u8 * 1),
        ("reserved", u8 * 26),
        ("exception_has_payload", u8),
        ("exception_payload", u64),
    ]


KVM_VCPUEVENT_VALID_NMI_PENDING = 0x00000001
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x00000002
KVM_VCPUEVENT_VALID_SHADOW = 0x00000004
KVM_VCPUEVENT_VALID_SMM = 0x00000008


class KvmDebugregs(ctypes.Structure):
    """struct kvm_debugregs: DR0-DR3, DR6, DR7."""

    _fields_: ClassVar = [
        ("db", u64 * 4), ("dr6", u64), ("dr7", u64), ("flags", u64), ("reserved", u64 * 9),
    ]


XSAVE_REGION_WORDS = 1024


class KvmXsave(ctypes.Structure):
    """struct kvm_xsave: the 4 KiB XSAVE area (KVM_GET_XSAVE / KVM_SET_XSAVE)."""

    _fields_: ClassVar = [("region", u32 * XSAVE_REGION_WORDS)]


KVM_MAX_XCRS = 16


class KvmXcr(ctypes.Structure):
    """struct kvm_xcr: one extended control register (XCR0)."""

    _fields_: ClassVar = [("xcr", u32), ("reserved", u32), ("value", u64)]


class KvmXcrs(ctypes.Structure):
    """struct kvm_xcrs (KVM_GET_XCRS / KVM_SET_XCRS)."""

    _fields_: ClassVar = [
        ("nr_xcrs", u32), ("flags", u32), ("xcrs", KvmXcr * KVM_MAX_XCRS), ("padding", u64 * 16),
    ]


# --------------------------------------------------------------------------------------------
# struct kvm_run (the per-vCPU shared page). Defined field by field up to the exit union;
# the run loop reads it with struct.unpack_from at these offsets (no ctypes per exit).
# --------------------------------------------------------------------------------------------
class KvmRunIo(ctypes.Structure):
    _fields_: ClassVar = [
        ("direction", u8), ("size", u8), ("port", u16), ("count", u32), ("data_offset", u64),
    ]


class KvmRunMmio(ctypes.Structure):
    _fields_: ClassVar = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class KvmRunFailEntry(ctypes.Structure):
    _fields_: ClassVar = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class KvmRunInternal(ctypes.Structure):
    _fields_: ClassVar = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class KvmRunEmulationFailure(ctypes.Structure):
    _fields_: ClassVar = [
        ("suberror", u32), ("ndata", u32), ("flags", u64),
        ("insn_size", u8), ("insn_bytes", u8 * 15),
    ]


class KvmRunSystemEvent(ctypes.Structure):
    _fields_: ClassVar = [("type", u32), ("ndata", u32), ("data", u64 * 16)]


class KvmRunHw(ctypes.Structure):
    _fields_: ClassVar = [("hardware_exit_reason", u64)]


class KvmRunEx(ctypes.Structure):
    _fields_: ClassVar = [("exception", u32), ("error_code", u32)]


class KvmDebugExitArch(ctypes.Structure):
    """struct kvm_debug_exit_arch (x86): the exception, where, and DR6/DR7 at the stop."""

    _fields_: ClassVar = [("exception", u32), ("pad", u32), ("pc", u64), ("dr6", u64), ("dr7", u64)]


class KvmGuestDebugArch(ctypes.Structure):
    """struct kvm_guest_debug_arch (x86): DR0-DR7 as the host wants them while debugging."""

    _fields_: ClassVar = [("debugreg", u64 * 8)]


class KvmGuestDebug(ctypes.Structure):
    """struct kvm_guest_debug (KVM_SET_GUEST_DEBUG)."""

    _fields_: ClassVar = [("control", u32), ("pad", u32), ("arch", KvmGuestDebugArch)]


RUN_EXIT_UNION_SIZE = 256


class KvmRunExit(ctypes.Union):
    """The exit-reason union of struct kvm_run (256 bytes, padded)."""

    _fields_: ClassVar = [
        ("hw", KvmRunHw),
        ("fail_entry", KvmRunFailEntry),
        ("ex", KvmRunEx),
        ("io", KvmRunIo),
        ("debug", KvmDebugExitArch),
        ("mmio", KvmRunMmio),
        ("internal", KvmRunInternal),
        ("emulation_failure", KvmRunEmulationFailure),
        ("system_event", KvmRunSystemEvent),
        ("padding", ctypes.c_char * RUN_EXIT_UNION_SIZE),
    ]


class KvmRun(ctypes.Structure):
    """struct kvm_run up to and including the exit union (the page is larger: sync regs)."""

    _fields_: ClassVar = [
        ("request_interrupt_window", u8),
        ("immediate_exit", u8),
        ("padding1", u8 * 6),
        ("exit_reason", u32),
        ("ready_for_interrupt_injection", u8),
        ("if_flag", u8),
        ("flags", u16),
        ("cr8", u64),
        ("apic_base", u64),
        ("exit", KvmRunExit),
        ("kvm_valid_regs", u64),
        ("kvm_dirty_regs", u64),
    ]


def _offset(struct: type[ctypes.Structure], field: str) -> int:
    return int(getattr(struct, field).offset)


RUN_IMMEDIATE_EXIT = _offset(KvmRun, "immediate_exit")
RUN_EXIT_REASON = _offset(KvmRun, "exit_reason")
RUN_IF_FLAG = _offset(KvmRun, "if_flag")
RUN_EXIT_UNION = _offset(KvmRun, "exit")
"""Offset of the exit union; the io/mmio/... fields below are relative to the kvm_run start."""
RUN_IO = RUN_EXIT_UNION
RUN_IO_FORMAT = "<BBHIQ"
"""direction, size, port, count, data_offset."""
RUN_MMIO = RUN_EXIT_UNION
RUN_MMIO_DATA = RUN_EXIT_UNION + _offset(KvmRunMmio, "data")
RUN_MMIO_FORMAT = "<Q8sIB"
"""phys_addr, data, len, is_write."""
RUN_MMIO_HEAD_FORMAT = "<Q8xIB"
"""phys_addr, len, is_write (the data bytes skipped)."""
RUN_INTERNAL = RUN_EXIT_UNION
RUN_INTERNAL_DATA = RUN_EXIT_UNION + _offset(KvmRunInternal, "data")
RUN_EMULATION_INSN = RUN_EXIT_UNION + _offset(KvmRunEmulationFailure, "insn_size")
RUN_FAIL_ENTRY = RUN_EXIT_UNION
RUN_SYSTEM_EVENT = RUN_EXIT_UNION
RUN_DEBUG = RUN_EXIT_UNION
RUN_DEBUG_FORMAT = "<I4xQQQ"
"""exception, pc, dr6, dr7."""

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------
KVM_API_VERSION = 12
"""The only KVM API version there has ever been in mainline Linux."""

# Exit reasons (kvm_run.exit_reason)
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_SET_TPR = 11
KVM_EXIT_TPR_ACCESS = 12
KVM_EXIT_NMI = 16
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_IOAPIC_EOI = 26
KVM_EXIT_X86_RDMSR = 29
KVM_EXIT_X86_WRMSR = 30
KVM_EXIT_X86_BUS_LOCK = 33
KVM_EXIT_NOTIFY = 37

EXIT_REASON_NAMES: dict[int, str] = {
    value: name for name, value in globals().items()
    if name.startswith("KVM_EXIT_") and isinstance(value, int)
}
"""Exit reason number -> its KVM_EXIT_* name, for messages."""

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

# kvm_run.internal.suberror
KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4
KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1 << 0

# kvm_run.system_event.type
KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3

# kvm_mp_state.mp_state
KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3

# Capabilities (KVM_CHECK_EXTENSION)
KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_PIT = 11
KVM_CAP_MP_STATE = 14
KVM_CAP_SYNC_MMU = 16
KVM_CAP_IRQFD = 32
KVM_CAP_PIT2 = 33
KVM_CAP_IOEVENTFD = 36
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_INTERNAL_ERROR_DATA = 40
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_TSC_DEADLINE_TIMER = 72
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_ADJUST_CLOCK = 39
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_DEBUGREGS = 50
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56

# ioctls on /dev/kvm
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_GET_MSR_INDEX_LIST = _iowr(0x02, KvmMsrList)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, KvmCpuid2)

# ioctls on a VM fd
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, KvmUserspaceMemoryRegion)
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, u64)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IRQ_LINE = _iow(0x61, KvmIrqLevel)
KVM_IRQFD = _iow(0x76, KvmIrqfd)
KVM_CREATE_PIT2 = _iow(0x77, KvmPitConfig)
KVM_GET_IRQCHIP = _iowr(0x62, KvmIrqchip)
KVM_SET_IRQCHIP = _ior(0x63, KvmIrqchip)
"""(The header declares KVM_SET_IRQCHIP with _IOR; the number is what matters.)"""
KVM_SET_CLOCK = _iow(0x7B, KvmClockData)
KVM_GET_CLOCK = _ior(0x7C, KvmClockData)
KVM_GET_PIT2 = _ior(0x9F, KvmPitState2)
KVM_SET_PIT2 = _iow(0xA0, KvmPitState2)
KVM_IOEVENTFD = _iow(0x79, KvmIoeventfd)
KVM_GET_TSC_KHZ = _io(0xA3)
"""The guests' TSC rate in kHz (the ioctl's return value; on a VM fd with
KVM_CAP_VM_TSC_CONTROL, as on a vCPU's)."""

# ioctls on a vCPU fd
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, KvmRegs)
KVM_SET_REGS = _iow(0x82, KvmRegs)
KVM_GET_SREGS = _ior(0x83, KvmSregs)
KVM_SET_SREGS = _iow(0x84, KvmSregs)
KVM_TRANSLATE = _iowr(0x85, KvmTranslation)
KVM_GET_MSRS = _iowr(0x88, KvmMsrs)
KVM_SET_MSRS = _iow(0x89, KvmMsrs)
KVM_GET_FPU = _ior(0x8C, KvmFpu)
KVM_SET_FPU = _iow(0x8D, KvmFpu)
KVM_GET_LAPIC = _ior(0x8E, KvmLapicState)
KVM_SET_LAPIC = _iow(0x8F, KvmLapicState)
KVM_SET_CPUID2 = _iow(0x90, KvmCpuid2)
KVM_GET_CPUID2 = _iowr(0x91, KvmCpuid2)
KVM_GET_MP_STATE = _ior(0x98, KvmMpState)
KVM_SET_MP_STATE = _iow(0x99, KvmMpState)
KVM_GET_VCPU_EVENTS = _ior(0x9F, KvmVcpuEvents)
KVM_SET_VCPU_EVENTS = _iow(0xA0, KvmVcpuEvents)
KVM_GET_DEBUGREGS = _ior(0xA1, KvmDebugregs)
KVM_SET_DEBUGREGS = _iow(0xA2, KvmDebugregs)
KVM_GET_XSAVE = _ior(0xA4, KvmXsave)
KVM_SET_XSAVE = _iow(0xA5, KvmXsave)
KVM_GET_XCRS = _ior(0xA6, KvmXcrs)
KVM_SET_XCRS = _iow(0xA7, KvmXcrs)
KVM_SET_GUEST_DEBUG = _iow(0x9B, KvmGuestDebug)

# KVM_SET_GUEST_DEBUG control bits (asm/kvm.h, linux/kvm.h)
KVM_GUESTDBG_ENABLE = 0x00000001
KVM_GUESTDBG_SINGLESTEP = 0x00000002
KVM_GUESTDBG_USE_SW_BP = 0x00010000
KVM_GUESTDBG_USE_HW_BP = 0x00020000
KVM_CAP_SET_GUEST_DEBUG = 23

# Structures checked by tests/test_kvm_abi.py: C name -> ctypes type.
CHECKED_STRUCTS: dict[str, type[ctypes._CData]] = {
    "kvm_regs": KvmRegs,
    "kvm_segment": KvmSegment,
    "kvm_dtable": KvmDtable,
    "kvm_sregs": KvmSregs,
    "kvm_fpu": KvmFpu,
    "kvm_msr_entry": KvmMsrEntry,
    "kvm_msrs": KvmMsrs,
    "kvm_msr_list": KvmMsrList,
    "kvm_cpuid_entry2": KvmCpuidEntry2,
    "kvm_cpuid2": KvmCpuid2,
    "kvm_userspace_memory_region": KvmUserspaceMemoryRegion,
    "kvm_lapic_state": KvmLapicState,
    "kvm_pit_config": KvmPitConfig,
    "kvm_irq_level": KvmIrqLevel,
    "kvm_ioeventfd": KvmIoeventfd,
    "kvm_irqfd": KvmIrqfd,
    "kvm_mp_state": KvmMpState,
    "kvm_translation": KvmTranslation,
    "kvm_pic_state": KvmPicState,
    "kvm_ioapic_state": KvmIoapicState,
    "kvm_irqchip": KvmIrqchip,
    "kvm_pit_channel_state": KvmPitChannelState,
    "kvm_pit_state2": KvmPitState2,
    "kvm_clock_data": KvmClockData,
    "kvm_vcpu_events": KvmVcpuEvents,
    "kvm_debugregs": KvmDebugregs,
    "kvm_xsave": KvmXsave,
    "kvm_xcr": KvmXcr,
    "kvm_xcrs": KvmXcrs,
    "kvm_debug_exit_arch": KvmDebugExitArch,
    "kvm_guest_debug_arch": KvmGuestDebugArch,
    "kvm_guest_debug": KvmGuestDebug,
}
