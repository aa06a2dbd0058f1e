"""The hypervisor abstraction: what a virtual machine and a virtual CPU offer.

Two implementations exist: :class:`vmboot.hv.memory.MemoryVM` (guest RAM and a
register file in this process, for planning and tests) and the KVM backend in
:mod:`vmboot.hv.kvm`. Boot code is written against these interfaces only.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence

from vmboot.closeable import Closeable
from vmboot.hv.cpuid_entry import CpuidEntry
from vmboot.hv.guest_memory import GuestMemory
from vmboot.hv.memory_map import MemoryRegion
from vmboot.hv.registers import DescriptorTable, Register, Segment, SegmentRegister
from vmboot.x86.apic import LvtDelivery


class VirtualMachine(Closeable):
    """A guest: its RAM (bounds-checked, by guest-physical address) and its vCPUs."""

    memory: GuestMemory

    # -- RAM ----------------------------------------------------------------------------------
    @property
    def memory_size(self) -> int:
        """Bytes of guest RAM (the sum of all regions)."""
        return self.memory.size

    @property
    def regions(self) -> tuple[MemoryRegion, ...]:
        """Guest-physical runs of RAM, lowest first."""
        return self.memory.regions

    def read(self, gpa: int, n: int) -> bytes:
        """Copy ``n`` bytes from guest-physical ``gpa``; an access outside RAM raises."""
        return self.memory.read(gpa, n)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at guest-physical ``gpa``; writes nothing if any byte is outside RAM."""
        self.memory.write(gpa, data)

    def zero(self, gpa: int, n: int) -> None:
        """Zero ``n`` bytes at guest-physical ``gpa``."""
        self.memory.zero(gpa, n)

    def view(self, gpa: int, n: int) -> memoryview:
        """Zero-copy view of guest RAM (release it before closing the VM)."""
        return self.memory.view(gpa, n)

    # -- vCPUs and lifetime -------------------------------------------------------------------
    @abc.abstractmethod
    def create_vcpu(self, index: int) -> VirtualCPU:
        """Create vCPU number ``index``, in its reset state."""

    @abc.abstractmethod
    def cpuid_table(self, index: int) -> list[CpuidEntry]:
        """The CPUID table this VM offers vCPU ``index`` (for :meth:`VirtualCPU.set_cpuid`)."""

    @property
    def has_local_apic(self) -> bool:
        """Whether each vCPU has a local APIC (:meth:`VirtualCPU.set_lapic_lint`)."""
        return False

    @abc.abstractmethod
    def close(self) -> None:
        """Release guest RAM and every host resource; idempotent."""


class VirtualCPU(abc.ABC):
    """One virtual x86_64 CPU: general, segment, control registers and MSRs."""

    @property
    @abc.abstractmethod
    def vm(self) -> VirtualMachine:
        """The VM this vCPU belongs to."""

    @property
    @abc.abstractmethod
    def index(self) -> int:
        """The vCPU number."""

    @abc.abstractmethod
    def get_registers(self, registers: Iterable[Register]) -> dict[Register, int]:
        """Read several registers at once."""

    @abc.abstractmethod
    def set_registers(self, values: Mapping[Register, int]) -> None:
        """Write several registers at once."""

    def get_register(self, register: Register) -> int:
        return self.get_registers((register,))[register]

    def set_register(self, register: Register, value: int) -> None:
        self.set_registers({register: value})

    @abc.abstractmethod
    def get_segment(self, register: SegmentRegister) -> Segment: ...

    @abc.abstractmethod
    def set_segments(self, values: Mapping[SegmentRegister, Segment]) -> None: ...

    def set_segment(self, register: SegmentRegister, value: Segment) -> None:
        self.set_segments({register: value})

    @abc.abstractmethod
    def get_gdt(self) -> DescriptorTable: ...

    @abc.abstractmethod
    def set_gdt(self, table: DescriptorTable) -> None: ...

    @abc.abstractmethod
    def get_idt(self) -> DescriptorTable: ...

    @abc.abstractmethod
    def set_idt(self, table: DescriptorTable) -> None: ...

    @abc.abstractmethod
    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]: ...

    @abc.abstractmethod
    def set_msrs(self, values: Mapping[int, int]) -> None: ...

    @abc.abstractmethod
    def set_cpuid(self, entries: Sequence[CpuidEntry]) -> None:
        """What the CPUID instruction reports (before the vCPU first runs)."""

    @abc.abstractmethod
    def set_fpu_control(self, fcw: int, mxcsr: int) -> None:
        """The x87 control word and MXCSR, the rest of the FPU/SSE state cleared."""

    @abc.abstractmethod
    def set_lapic_lint(self, lint0: LvtDelivery, lint1: LvtDelivery) -> None:
        """The delivery modes of the local APIC's LINT0 and LINT1 pins."""
