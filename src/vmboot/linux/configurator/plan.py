"""A boot plan: where everything went, and how to program a vCPU to enter the kernel.

This is the "configurator" half (as in rust-vmm linux-loader): the loader
(:mod:`vmboot.linux.loader`) decides and writes guest memory; the plan then sets up the
vCPU. :class:`EntryPlan` is what every entry has; :class:`BootPlan` is the 64-bit boot
protocol (boot.rst, "64-bit BOOT PROTOCOL"):

- long mode with paging, the first ``address_space_gib`` GiB identity-mapped
  (2 MiB pages) by tables at ``paging_base``;
- a GDT with ``__BOOT_CS`` (0x10, 64-bit flat code) and ``__BOOT_DS`` (0x18, flat data);
  CS = 0x10 and DS = ES = SS = FS = GS = 0x18;
- interrupts disabled; RSI = the zero page; RIP = the 64-bit entry; RSP = the stack top;
  every other general register zero.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from vmboot.hv.base import VirtualCPU, VirtualMachine
from vmboot.hv.registers import DescriptorTable, Register, SegmentRegister
from vmboot.linux.configurator import layout
from vmboot.linux.configurator.cpu_reset import set_firmware_state
from vmboot.linux.configurator.e820 import E820Entry
from vmboot.linux.configurator.gdt import boot_gdt, boot_segments
from vmboot.linux.configurator.layout import Region
from vmboot.linux.configurator.page_tables import identity_map_tables
from vmboot.linux.options import EntryMode
from vmboot.x86 import cr

# CR0 as Linux itself runs with it (arch/x86/include/asm/processor-flags.h, CR0_STATE), so
# the kernel sees no change when it reloads CR0.
BOOT_CR0 = cr.CR0_PE | cr.CR0_MP | cr.CR0_ET | cr.CR0_NE | cr.CR0_WP | cr.CR0_AM | cr.CR0_PG
BOOT_CR4 = cr.CR4_PAE
BOOT_EFER = cr.EFER_LME | cr.EFER_LMA
BOOT_RFLAGS = cr.RFLAGS_RESERVED_1
"""Interrupts off (IF = 0); bit 1 always reads as 1."""


@dataclass(frozen=True, kw_only=True)
class EntryPlan(abc.ABC):
    """Where a kernel and its boot data were placed, and how a vCPU enters it: what every
    entry has. :class:`BootPlan` (the 64-bit entries) and
    :class:`~vmboot.linux.configurator.pvh.PvhBootPlan` (PVH) add what is theirs."""

    load_addr: int
    entry_gpa: int
    cmdline_gpa: int
    initrd_gpa: int | None = None
    initrd_size: int = 0
    kernel_end: int = 0
    """One past the last byte the kernel may use at boot (load + max(init_size, payload))."""
    cmdline: bytes = b""
    e820: tuple[E820Entry, ...] = ()
    gdt_gpa: int = layout.GDT_GPA
    regions: tuple[Region, ...] = field(default=())
    entry_mode: EntryMode = "bzimage64"
    """Which entry this plan enters: ``"bzimage64"``, ``"elf64"`` (:class:`BootPlan`) or
    ``"pvh"`` (:class:`~vmboot.linux.configurator.pvh.PvhBootPlan`)."""

    def describe(self) -> list[str]:
        """One line per region, in address order, for humans."""
        return [r.describe() for r in sorted(self.regions, key=lambda r: r.start)]

    @abc.abstractmethod
    def write_cpu_tables(self, vm: VirtualMachine) -> None:
        """Write the descriptor (and page) tables the entry needs into guest memory."""

    @abc.abstractmethod
    def configure_vcpu(self, vcpu: VirtualCPU) -> None:
        """Program ``vcpu`` (created, never run) to enter the kernel: the firmware state of
        :func:`~vmboot.linux.configurator.cpu_reset.set_firmware_state`, then the entry's
        registers (writes the tables of :meth:`write_cpu_tables`)."""


@dataclass(frozen=True, kw_only=True)
class BootPlan(EntryPlan):
    """A boot through a 64-bit entry (``"bzimage64"`` or ``"elf64"``): zero page, identity
    map and stack."""

    zero_page_gpa: int
    stack_top_gpa: int
    paging_base: int
    address_space_gib: int
    setup_data_gpa: int | None = None

    @property
    def page_tables_size(self) -> int:
        return layout.page_table_bytes(self.address_space_gib)

    def write_cpu_tables(self, vm: VirtualMachine) -> None:
        """Write the identity-map page tables and the boot GDT into guest memory."""
        vm.write(self.paging_base, identity_map_tables(self.paging_base, self.address_space_gib))
        vm.write(self.gdt_gpa, boot_gdt())

    def configure_vcpu(self, vcpu: VirtualCPU) -> None:
        """Program ``vcpu`` for the 64-bit entry (writes the page tables and GDT too)."""
        set_firmware_state(vcpu)
        self.write_cpu_tables(vcpu.vm)
        regs: dict[Register, int] = {
            Register.RAX: 0, Register.RBX: 0, Register.RCX: 0, Register.RDX: 0,
            Register.RDI: 0, Register.RBP: 0,
            Register.R8: 0, Register.R9: 0, Register.R10: 0, Register.R11: 0,
            Register.R12: 0, Register.R13: 0, Register.R14: 0, Register.R15: 0,
            Register.RSI: self.zero_page_gpa,
            Register.RSP: self.stack_top_gpa,
            Register.RIP: self.entry_gpa,
            Register.RFLAGS: BOOT_RFLAGS,
            Register.CR3: self.paging_base,
            Register.CR4: BOOT_CR4,
            Register.EFER: BOOT_EFER,
            Register.CR0: BOOT_CR0,
        }
        # Control registers first: KVM refuses a 64-bit CS (L=1) while EFER.LMA is clear.
        vcpu.set_registers(regs)
        load_boot_segments(vcpu, self.gdt_gpa, "code64")


def load_boot_segments(vcpu: VirtualCPU, gdt_gpa: int, code: str) -> None:
    """Point GDTR at the boot GDT, clear IDTR, and load CS with the boot GDT's ``code``
    segment ("code64" or "code32"), DS/ES/FS/GS/SS with its data segment and TR with its TSS."""
    segs = boot_segments()
    vcpu.set_gdt(DescriptorTable(gdt_gpa, len(boot_gdt()) - 1))
    vcpu.set_idt(DescriptorTable(0, 0))
    data = segs["data"]
    vcpu.set_segments({
        SegmentRegister.CS: segs[code],
        SegmentRegister.DS: data,
        SegmentRegister.ES: data,
        SegmentRegister.FS: data,
        SegmentRegister.GS: data,
        SegmentRegister.SS: data,
        SegmentRegister.TR: segs["tss"],
    })
