"""Helpers for the KVM tests: assemble guest code with GNU as, set up real or long mode by hand.

Guest code is assembled at test time (``as`` + ``ld --oformat binary``) into a temporary
directory; tests that need it skip when binutils is missing.
"""

from __future__ import annotations

import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from vmboot.hv import DescriptorTable, Register, Segment, SegmentRegister
from vmboot.hv.kvm import KvmVCPU, KvmVM
from vmboot.linux.configurator.cpu_reset import set_firmware_state
from vmboot.x86 import cr
from vmboot.x86.gdt import encode_descriptor, flat_code64, flat_data, tss64
from vmboot.x86.paging import PTE_PRESENT, PTE_PS, PTE_WRITABLE

CODE_GPA = 0x10000
"""Where test guest code is loaded (and linked)."""
PML4_GPA = 0x2000
PDPT_GPA = 0x3000
PD_GPA = 0x4000
"""Four page directories (0x4000..0x7fff) map the first 4 GiB with 2 MiB pages."""
GDT_GPA = 0x1000
STACK_TOP = 0x80000
IDENTITY_GIB = 4

SEL_CODE64 = 0x10
SEL_DATA = 0x18
SEL_TSS = 0x20


def need_binutils() -> None:
    from conftest import require_tool

    for tool in ("as", "ld"):
        require_tool(tool, "binutils")


def assemble(source: str, base: int = CODE_GPA, bits: int = 64) -> bytes:
    """Assemble ``source`` (GNU as, Intel syntax) linked at ``base``; return the flat binary."""
    return assemble_with_symbols(source, base, bits)[0]


def assemble_with_symbols(source: str, base: int = CODE_GPA, bits: int = 64) -> tuple[bytes, bytes]:
    """:func:`assemble`, plus the program's symbols as a System.map (``nm -n`` of the ELF)."""
    need_binutils()
    header = ".intel_syntax noprefix\n" + (".code16\n" if bits == 16 else ".code64\n")
    with tempfile.TemporaryDirectory(prefix="vmboot-asm-") as tmp:
        src = Path(tmp) / "guest.S"
        obj = Path(tmp) / "guest.o"
        elf = Path(tmp) / "guest.elf"
        out = Path(tmp) / "guest.bin"
        src.write_text(header + ".text\n.globl _start\n_start:\n" + source + "\n")
        link = ["ld", "-m", "elf_x86_64", "-nostdlib", "-e", "_start", f"-Ttext={base:#x}"]
        for cmd in (
            ["as", "--64", "-o", str(obj), str(src)],
            [*link, "--oformat", "binary", "-o", str(out), str(obj)],
            [*link, "-o", str(elf), str(obj)],
            ["nm", "-n", str(elf)],
        ):
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise AssertionError(f"{cmd[0]} failed:\n{proc.stderr}\n--- source ---\n{source}")
        return out.read_bytes(), proc.stdout.encode()


def identity_map(vm: KvmVM) -> None:
    """Identity-map the first 4 GiB with 2 MiB pages (including the MMIO hole)."""
    vm.write(PML4_GPA, struct.pack("<Q", PDPT_GPA | PTE_PRESENT | PTE_WRITABLE))
    vm.write(PDPT_GPA, struct.pack(f"<{IDENTITY_GIB}Q", *(
        (PD_GPA + i * 0x1000) | PTE_PRESENT | PTE_WRITABLE for i in range(IDENTITY_GIB))))
    entries = [(i << 21) | PTE_PRESENT | PTE_WRITABLE | PTE_PS for i in range(512 * IDENTITY_GIB)]
    vm.write(PD_GPA, struct.pack(f"<{len(entries)}Q", *entries))


def enter_long_mode(vm: KvmVM, vcpu: KvmVCPU, entry: int = CODE_GPA) -> None:
    """Program ``vcpu`` for 64-bit mode by hand: firmware state (CPUID, MSRs, FPU, LAPIC pins),
    page tables, GDT, segments, control registers. The firmware state is set once, before the
    vCPU's first run: KVM refuses a new CPUID table after it."""
    if not vcpu.cpuid:
        set_firmware_state(vcpu)
    identity_map(vm)
    gdt = [0, 0, encode_descriptor(flat_code64(SEL_CODE64)), encode_descriptor(flat_data(SEL_DATA)),
           encode_descriptor(tss64(SEL_TSS)), 0]
    vm.write(GDT_GPA, struct.pack(f"<{len(gdt)}Q", *gdt))
    vcpu.set_gdt(DescriptorTable(GDT_GPA, len(gdt) * 8 - 1))
    vcpu.set_idt(DescriptorTable(0, 0))
    data = flat_data(SEL_DATA)
    vcpu.set_segments({
        SegmentRegister.CS: flat_code64(SEL_CODE64),
        SegmentRegister.DS: data, SegmentRegister.ES: data, SegmentRegister.FS: data,
        SegmentRegister.GS: data, SegmentRegister.SS: data,
        SegmentRegister.TR: tss64(SEL_TSS),
    })
    vcpu.set_registers({
        Register.CR3: PML4_GPA,
        Register.CR4: cr.CR4_PAE | cr.CR4_OSFXSR | cr.CR4_OSXMMEXCPT,
        Register.EFER: cr.EFER_LME | cr.EFER_LMA,
        Register.CR0: cr.CR0_PE | cr.CR0_MP | cr.CR0_ET | cr.CR0_NE | cr.CR0_WP | cr.CR0_PG,
        Register.RIP: entry,
        Register.RSP: STACK_TOP,
        Register.RFLAGS: cr.RFLAGS_RESERVED_1,
    })


def enter_real_mode(vcpu: KvmVCPU, entry: int = CODE_GPA) -> None:
    """Real mode with CS:IP = (entry >> 4):(entry & 0xf) and flat 64 KiB data segments."""
    segs: dict[SegmentRegister, Segment] = {}
    for reg in (SegmentRegister.CS, SegmentRegister.DS, SegmentRegister.ES, SegmentRegister.SS):
        old = vcpu.get_segment(reg)
        segs[reg] = Segment(base=(entry >> 4) << 4 if reg is SegmentRegister.CS else 0,
                            limit=0xFFFF, selector=entry >> 4 if reg is SegmentRegister.CS else 0,
                            type=old.type, present=True, s=True)
    vcpu.set_segments(segs)
    vcpu.set_registers({Register.RIP: entry & 0xF, Register.RSP: 0x8000,
                        Register.RFLAGS: cr.RFLAGS_RESERVED_1})


@dataclass
class PortRecorder:
    """A port device that records writes and answers reads from a queue (then ``fill``)."""

    reads: list[int] = field(default_factory=list)
    fill: int = 0
    writes: list[tuple[int, int, int]] = field(default_factory=list)
    read_log: list[tuple[int, int]] = field(default_factory=list)

    def port_write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))

    def port_read(self, offset: int, size: int) -> int:
        self.read_log.append((offset, size))
        return self.reads.pop(0) if self.reads else self.fill


@dataclass
class MmioRecorder:
    """An MMIO device with a small register file: reads return what was last written + ``bias``."""

    bias: int = 0
    writes: list[tuple[int, int, int]] = field(default_factory=list)
    regs: dict[int, int] = field(default_factory=dict)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))
        self.regs[offset] = value

    def mmio_read(self, offset: int, size: int) -> int:
        return self.regs.get(offset, 0) + self.bias
