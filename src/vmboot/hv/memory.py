"""An in-process, memory-only VM: guest RAM in an anonymous mmap and a register file in Python.

Used for planning (``vmboot inspect``), for tests, and anywhere a boot layout is
wanted without running it. It behaves like the KVM backend for everything but
execution.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from vmboot.errors import HypervisorError
from vmboot.hv.base import VirtualCPU, VirtualMachine
from vmboot.hv.cpuid_entry import CpuidEntry
from vmboot.hv.guest_memory import GuestMemory
from vmboot.hv.registers import DescriptorTable, Register, Segment, SegmentRegister
from vmboot.x86.apic import LvtDelivery

_MASK64 = (1 << 64) - 1


class MemoryVM(VirtualMachine):
    """A VM that holds state but never runs."""

    def __init__(self, memory_bytes: int) -> None:
        self.memory = GuestMemory(memory_bytes)
        self._vcpus: dict[int, MemoryVCPU] = {}

    def create_vcpu(self, index: int = 0) -> MemoryVCPU:
        if index in self._vcpus:
            raise HypervisorError(f"vcpu index {index} already exists; indices in use: "
                                  f"{sorted(self._vcpus)}")
        if not 0 <= index < 256:
            raise HypervisorError(f"vcpu index {index} is outside 0..255")
        vcpu = MemoryVCPU(self, index)
        self._vcpus[index] = vcpu
        return vcpu

    @property
    def vcpus(self) -> tuple[MemoryVCPU, ...]:
        return tuple(self._vcpus[i] for i in sorted(self._vcpus))

    def cpuid_table(self, index: int) -> list[CpuidEntry]:
        """Empty: a VM that never runs describes no processor."""
        return []

    def close(self) -> None:
        self.memory.close()


class MemoryVCPU(VirtualCPU):
    """A register file; reset state is all zero except RFLAGS bit 1 and CR0.ET, as on real CPUs."""

    def __init__(self, vm: MemoryVM, index: int) -> None:
        self._vm = vm
        self._index = index
        self._regs: dict[Register, int] = dict.fromkeys(Register, 0)
        self._regs[Register.RFLAGS] = 0x2
        self._regs[Register.CR0] = 0x60000010
        self._segments: dict[SegmentRegister, Segment] = dict.fromkeys(SegmentRegister, Segment())
        self._gdt = DescriptorTable()
        self._idt = DescriptorTable()
        self._msrs: dict[int, int] = {}
        self.cpuid: list[CpuidEntry] = []
        self.fpu_control: tuple[int, int] | None = None
        """(FCW, MXCSR) as :meth:`set_fpu_control` left them."""

    @property
    def vm(self) -> MemoryVM:
        return self._vm

    @property
    def index(self) -> int:
        return self._index

    def get_registers(self, registers: Iterable[Register]) -> dict[Register, int]:
        return {r: self._regs[Register(r)] for r in registers}

    def set_registers(self, values: Mapping[Register, int]) -> None:
        checked = {}
        for reg, value in values.items():
            reg = Register(reg)
            if not isinstance(value, int) or not 0 <= value <= _MASK64:
                raise HypervisorError(
                    f"register {reg.name}: value {value!r} is not an unsigned 64-bit integer"
                )
            checked[reg] = value
        self._regs.update(checked)

    def get_segment(self, register: SegmentRegister) -> Segment:
        return self._segments[SegmentRegister(register)]

    def set_segments(self, values: Mapping[SegmentRegister, Segment]) -> None:
        for reg, seg in values.items():
            self._segments[SegmentRegister(reg)] = seg

    def get_gdt(self) -> DescriptorTable:
        return self._gdt

    def set_gdt(self, table: DescriptorTable) -> None:
        self._gdt = table

    def get_idt(self) -> DescriptorTable:
        return self._idt

    def set_idt(self, table: DescriptorTable) -> None:
        self._idt = table

    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        return {i: self._msrs.get(i, 0) for i in indices}

    def set_msrs(self, values: Mapping[int, int]) -> None:
        for index, value in values.items():
            if not 0 <= value <= _MASK64:
                raise HypervisorError(f"MSR {index:#x}: value {value!r} is not unsigned 64-bit")
        self._msrs.update(values)

    def set_cpuid(self, entries: Sequence[CpuidEntry]) -> None:
        self.cpuid = list(entries)

    def set_fpu_control(self, fcw: int, mxcsr: int) -> None:
        if not 0 <= fcw <= 0xFFFF or not 0 <= mxcsr <= 0xFFFF_FFFF:
            raise HypervisorError(f"FPU control: FCW {fcw!r} / MXCSR {mxcsr!r} is not an "
                                  f"unsigned 16-bit / 32-bit integer")
        self.fpu_control = (fcw, mxcsr)

    def set_lapic_lint(self, lint0: LvtDelivery, lint1: LvtDelivery) -> None:
        raise HypervisorError("MemoryVM: its vCPUs have no local APIC (has_local_apic is False)")
