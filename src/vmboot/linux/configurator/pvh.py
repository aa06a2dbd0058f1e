"""The PVH entry: program a vCPU to enter it (the note that names it is read by
:mod:`vmboot.linux.loader.pvh_note`).

A PVH kernel (Xen ``docs/misc/pvh.pandoc``; Linux ``arch/x86/platform/pvh/head.S``)
declares its 32-bit physical entry point in an ELF note named "Xen" of type
``XEN_ELFNOTE_PHYS32_ENTRY`` (18; Xen ``public/elfnote.h``). It is entered in 32-bit
protected mode with paging off:

- CR0 = PE (and ET), CR4 = 0, EFER = 0 (not in long mode);
- CS a flat 32-bit execute/read code segment, DS/ES/SS flat 32-bit read/write data
  segments (vmboot's boot GDT has them at 0x08 and 0x18); TR a valid busy TSS;
- EFLAGS.IF, TF and VM clear;
- EBX = the physical address of ``struct hvm_start_info``; no stack and no other
  register are defined (vmboot zeroes them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vmboot.hv.base import VirtualCPU, VirtualMachine
from vmboot.hv.registers import Register
from vmboot.linux.configurator.cpu_reset import set_firmware_state
from vmboot.linux.configurator.gdt import boot_gdt
from vmboot.linux.configurator.plan import EntryPlan, load_boot_segments
from vmboot.linux.configurator.start_info import HvmMemmapEntry, HvmModlistEntry, HvmStartInfo
from vmboot.x86 import cr

PVH_CR0 = cr.CR0_PE | cr.CR0_ET
PVH_CR4 = 0
PVH_EFER = 0
PVH_EFLAGS = cr.RFLAGS_RESERVED_1
"""Interrupts off (IF = 0), TF = 0, VM = 0; bit 1 always reads as 1."""


@dataclass(frozen=True, kw_only=True)
class PvhBootPlan(EntryPlan):
    """A boot through the PVH entry: where ``hvm_start_info`` and its tables went.

    No zero page (the kernel builds its own boot_params from the start info), no page
    tables (paging is off) and no stack (PVH defines none).
    """

    start_info_gpa: int
    start_info: HvmStartInfo
    modlist_gpa: int | None = None
    modules: tuple[HvmModlistEntry, ...] = ()
    memmap_gpa: int = 0
    memmap: tuple[HvmMemmapEntry, ...] = field(default=())

    def write_cpu_tables(self, vm: VirtualMachine) -> None:
        """Write the boot GDT (no page tables: the PVH entry runs with paging off)."""
        vm.write(self.gdt_gpa, boot_gdt())

    def configure_vcpu(self, vcpu: VirtualCPU) -> None:
        """Program ``vcpu`` for the PVH entry (writes the GDT too)."""
        set_firmware_state(vcpu)
        self.write_cpu_tables(vcpu.vm)
        regs: dict[Register, int] = {
            Register.RAX: 0, Register.RCX: 0, Register.RDX: 0, Register.RSI: 0,
            Register.RDI: 0, Register.RSP: 0, Register.RBP: 0,
            Register.R8: 0, Register.R9: 0, Register.R10: 0, Register.R11: 0,
            Register.R12: 0, Register.R13: 0, Register.R14: 0, Register.R15: 0,
            Register.RBX: self.start_info_gpa,
            Register.RIP: self.entry_gpa,
            Register.RFLAGS: PVH_EFLAGS,
            Register.CR3: 0,
            Register.CR4: PVH_CR4,
            Register.EFER: PVH_EFER,
            Register.CR0: PVH_CR0,
        }
        vcpu.set_registers(regs)
        load_boot_segments(vcpu, self.gdt_gpa, "code32")
