"""The ELF core-dump format of Linux's ``/proc/vmcore``: plain data types and their wire forms.

A kernel core is an ``ET_CORE`` ELF64 file: one ``PT_NOTE`` segment holding a ``CORE``
``NT_PRSTATUS`` note per CPU (``struct elf_prstatus``, whose ``pr_reg`` is the x86_64
``struct user_regs_struct``) and a ``VMCOREINFO`` note, then one ``PT_LOAD`` per run of RAM
with ``p_paddr`` its physical address and ``p_vaddr`` its address in the kernel's direct map.

vmboot adds a ``VMBOOT`` note per CPU with what ``NT_PRSTATUS`` cannot carry (CR0, CR3, CR4,
EFER...); QEMU's ``dump-guest-memory`` adds a ``QEMU`` note per CPU (``QEMUCPUState``) for the
same reason. Readers that do not know a note's owner skip it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from vmboot.elf import NOTE_HEADER
from vmboot.hv.registers import Register, SegmentRegister

ET_CORE = 4
EV_CURRENT = 1
ELFOSABI_NONE = 0
NOTE_ALIGN = 4
"""Note headers, names and descriptors are padded to 4 bytes (as the kernel's vmcore)."""

NT_PRSTATUS = 1
NOTE_OWNER_CORE = "CORE"
NOTE_OWNER_VMCOREINFO = "VMCOREINFO"
NOTE_OWNER_VMBOOT = "VMBOOT"
NOTE_OWNER_QEMU = "QEMU"
NT_VMCOREINFO = 0
"""The kernel writes its VMCOREINFO note with type 0."""
NT_VMBOOT_CPU = 0x564D4254
"""``"VMBT"``: distinct from every ``NT_*`` type crash counts whatever the note's owner
(crash takes any note of type 1 for an ``NT_PRSTATUS``)."""
NT_QEMU_CPUSTATE = 0


USER_REGS_ORDER: tuple[str, ...] = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
    "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds",
    "es", "fs", "gs",
)
"""``struct user_regs_struct`` (x86_64) field order: ``pr_reg`` of ``NT_PRSTATUS``."""

PRSTATUS = struct.Struct("<iiih2xQQiiii64s27QI4x")
"""``struct elf_prstatus`` on x86_64 (336 bytes): si_signo, si_code, si_errno, pr_cursig,
pr_sigpend, pr_sighold, pr_pid, pr_ppid, pr_pgrp, pr_sid, four ``timeval`` (opaque here),
``pr_reg``, pr_fpvalid."""
PRSTATUS_SIZE = PRSTATUS.size
PRSTATUS_PID_CPU_BASE = 1
"""``pr_pid`` of a CPU's note in a core taken while the kernel runs (no kdump): CPU number + 1,
as QEMU's ``dump-guest-memory`` writes it.

kdump writes the running task's pid instead, but a reader cannot find a CPU by it: every
idle CPU's task (``swapper/N``) has pid 0. drgn therefore finds a CPU's registers in a core
whose VMCOREINFO has no ``CRASHTIME`` (one not written by kdump, as vmboot's are not) in the
note with ``pr_pid`` = CPU + 1, and in a kdump core through the kernel's ``crash_notes``;
with task pids here, it could unwind no running task (``registers for CPU N were not
saved``; ``tests/test_report_faults.py`` shows it on a real oops). crash on x86_64 takes
the notes in CPU order and does not read ``pr_pid``. Which task runs on each CPU is in the
kernel's own ``current_task`` (``Machine.tasks()``, drgn's ``cpu_curr()``)."""
assert PRSTATUS_SIZE == 336

_GENERAL_BY_NAME: dict[str, Register] = {
    "r15": Register.R15, "r14": Register.R14, "r13": Register.R13, "r12": Register.R12,
    "rbp": Register.RBP, "rbx": Register.RBX, "r11": Register.R11, "r10": Register.R10,
    "r9": Register.R9, "r8": Register.R8, "rax": Register.RAX, "rcx": Register.RCX,
    "rdx": Register.RDX, "rsi": Register.RSI, "rdi": Register.RDI, "rip": Register.RIP,
    "eflags": Register.RFLAGS, "rsp": Register.RSP,
}
_SELECTOR_BY_NAME: dict[str, SegmentRegister] = {
    "cs": SegmentRegister.CS, "ss": SegmentRegister.SS, "ds": SegmentRegister.DS,
    "es": SegmentRegister.ES, "fs": SegmentRegister.FS, "gs": SegmentRegister.GS,
}

VMBOOT_CPU_REGISTERS: tuple[Register, ...] = (
    Register.CR0, Register.CR2, Register.CR3, Register.CR4, Register.CR8, Register.EFER,
)
VMBOOT_CPU_VERSION = 1
VMBOOT_CPU = struct.Struct("<II6Q")
"""The ``VMBOOT`` note: version, CPU index, then :data:`VMBOOT_CPU_REGISTERS`."""

QEMU_SEGMENT = struct.Struct("<IIIIQ")
"""``QEMUCPUSegment``: selector, limit, flags, pad, base."""
QEMU_CPUSTATE_HEAD = struct.Struct("<II18Q")
"""``QEMUCPUState`` up to the segments: version, size, RAX..R15, RIP, RFLAGS."""
QEMU_CPUSTATE_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt")
QEMU_CPUSTATE_GENERAL: tuple[Register, ...] = (
    Register.RAX, Register.RBX, Register.RCX, Register.RDX, Register.RSI, Register.RDI,
    Register.RSP, Register.RBP, Register.R8, Register.R9, Register.R10, Register.R11,
    Register.R12, Register.R13, Register.R14, Register.R15, Register.RIP, Register.RFLAGS,
)
QEMU_CPUSTATE_CRS: tuple[Register | None, ...] = (
    Register.CR0, None, Register.CR2, Register.CR3, Register.CR4,
)
"""``QEMUCPUState.cr[5]``, indexed by control-register number (CR1 does not exist)."""
QEMU_CPUSTATE_MIN_SIZE = (QEMU_CPUSTATE_HEAD.size + len(QEMU_CPUSTATE_SEGMENTS) * QEMU_SEGMENT.size
                          + 8 * len(QEMU_CPUSTATE_CRS))


@dataclass
class CpuState:
    """What a core records of one CPU: registers, segment selectors and bases, the task's pid."""

    index: int
    registers: dict[Register, int] = field(default_factory=dict)
    selectors: dict[SegmentRegister, int] = field(default_factory=dict)
    fs_base: int = 0
    gs_base: int = 0
    pid: int = 0


def align_note(n: int) -> int:
    return (n + NOTE_ALIGN - 1) & ~(NOTE_ALIGN - 1)


def pack_note(owner: str, note_type: int, desc: bytes) -> bytes:
    """One ELF note: header, NUL-terminated owner name, descriptor, each padded to 4 bytes."""
    name = owner.encode("ascii") + b"\0"
    out = bytearray(NOTE_HEADER.pack(len(name), len(desc), note_type))
    out += name + bytes(align_note(len(name)) - len(name))
    out += desc + bytes(align_note(len(desc)) - len(desc))
    return bytes(out)


def pack_prstatus(cpu: CpuState) -> bytes:
    """``struct elf_prstatus`` with ``pr_reg`` filled from ``cpu``."""
    values = []
    for name in USER_REGS_ORDER:
        if name in _GENERAL_BY_NAME:
            values.append(cpu.registers.get(_GENERAL_BY_NAME[name], 0))
        elif name in _SELECTOR_BY_NAME:
            values.append(cpu.selectors.get(_SELECTOR_BY_NAME[name], 0))
        elif name == "fs_base":
            values.append(cpu.fs_base)
        elif name == "gs_base":
            values.append(cpu.gs_base)
        else:  # orig_rax: no system call in progress
            values.append((1 << 64) - 1)
    return PRSTATUS.pack(0, 0, 0, 0, 0, 0, cpu.pid, 0, 0, 0, bytes(64), *values, 0)


def unpack_prstatus(index: int, desc: bytes) -> CpuState:
    """The registers of an ``NT_PRSTATUS`` descriptor (at least :data:`PRSTATUS_SIZE` bytes)."""
    fields = PRSTATUS.unpack_from(desc)
    pid = fields[6]
    regs = dict(zip(USER_REGS_ORDER, fields[11:11 + len(USER_REGS_ORDER)], strict=True))
    cpu = CpuState(index, pid=pid)
    for name, value in regs.items():
        if name in _GENERAL_BY_NAME:
            cpu.registers[_GENERAL_BY_NAME[name]] = value
        elif name in _SELECTOR_BY_NAME:
            cpu.selectors[_SELECTOR_BY_NAME[name]] = value & 0xFFFF
    cpu.fs_base = regs["fs_base"]
    cpu.gs_base = regs["gs_base"]
    return cpu


def pack_vmboot_cpu(cpu: CpuState) -> bytes:
    return VMBOOT_CPU.pack(VMBOOT_CPU_VERSION, cpu.index,
                           *(cpu.registers.get(r, 0) for r in VMBOOT_CPU_REGISTERS))


def unpack_vmboot_cpu(desc: bytes) -> tuple[int, dict[Register, int]] | None:
    """``(cpu index, control registers)`` of a ``VMBOOT`` note, None for another version."""
    if len(desc) < VMBOOT_CPU.size:
        return None
    version, index, *values = VMBOOT_CPU.unpack_from(desc)
    if version != VMBOOT_CPU_VERSION:
        return None
    return index, dict(zip(VMBOOT_CPU_REGISTERS, values, strict=True))


def unpack_qemu_cpustate(desc: bytes) -> tuple[dict[Register, int], dict[SegmentRegister, int],
                                                 int, int] | None:
    """``(registers, selectors, fs_base, gs_base)`` of a ``QEMU`` note; None when too short."""
    if len(desc) < QEMU_CPUSTATE_MIN_SIZE:
        return None
    _version, size, *general = QEMU_CPUSTATE_HEAD.unpack_from(desc)
    if size < QEMU_CPUSTATE_MIN_SIZE:
        return None
    registers = dict(zip(QEMU_CPUSTATE_GENERAL, general, strict=True))
    selectors: dict[SegmentRegister, int] = {}
    bases: dict[str, int] = {}
    pos = QEMU_CPUSTATE_HEAD.size
    for name in QEMU_CPUSTATE_SEGMENTS:
        selector, _limit, _flags, _pad, base = QEMU_SEGMENT.unpack_from(desc, pos)
        pos += QEMU_SEGMENT.size
        bases[name] = base
        if name in _SELECTOR_BY_NAME:
            selectors[_SELECTOR_BY_NAME[name]] = selector & 0xFFFF
    for reg in QEMU_CPUSTATE_CRS:
        if reg is not None:
            registers[reg] = struct.unpack_from("<Q", desc, pos)[0]
        pos += 8
    return registers, selectors, bases["fs"], bases["gs"]
