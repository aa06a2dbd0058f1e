"""Register names and the wire shapes of segment and descriptor-table registers."""

from __future__ import annotations

import enum

from vmboot.x86.segment import DescriptorTable, Segment

__all__ = ["DescriptorTable", "Register", "Segment", "SegmentRegister"]


class Register(enum.Enum):
    """General, instruction-pointer, flags and control registers of an x86_64 vCPU.

    Segment registers, GDTR/IDTR and MSRs have their own typed accessors on
    :class:`~vmboot.hv.VirtualCPU`.
    """

    RAX = "rax"
    RBX = "rbx"
    RCX = "rcx"
    RDX = "rdx"
    RSI = "rsi"
    RDI = "rdi"
    RSP = "rsp"
    RBP = "rbp"
    R8 = "r8"
    R9 = "r9"
    R10 = "r10"
    R11 = "r11"
    R12 = "r12"
    R13 = "r13"
    R14 = "r14"
    R15 = "r15"
    RIP = "rip"
    RFLAGS = "rflags"
    CR0 = "cr0"
    CR2 = "cr2"
    CR3 = "cr3"
    CR4 = "cr4"
    CR8 = "cr8"
    EFER = "efer"


GENERAL_REGISTERS: tuple[Register, ...] = (
    Register.RAX, Register.RBX, Register.RCX, Register.RDX,
    Register.RSI, Register.RDI, Register.RSP, Register.RBP,
    Register.R8, Register.R9, Register.R10, Register.R11,
    Register.R12, Register.R13, Register.R14, Register.R15,
    Register.RIP, Register.RFLAGS,
)
"""The registers KVM_GET_REGS carries."""

SPECIAL_REGISTERS: tuple[Register, ...] = (
    Register.CR0, Register.CR2, Register.CR3, Register.CR4, Register.CR8, Register.EFER,
)
"""The scalar registers KVM_GET_SREGS carries."""


class SegmentRegister(enum.Enum):
    """Segment registers, including the task register and the LDT register."""

    CS = "cs"
    DS = "ds"
    ES = "es"
    FS = "fs"
    GS = "gs"
    SS = "ss"
    TR = "tr"
    LDTR = "ldt"
