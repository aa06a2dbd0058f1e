"""Builders for vmboot.debug tests: guest page tables in a MemoryVM, tiny ELF files, System.maps."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from vmboot.hv import MemoryVM, Register
from vmboot.hv.memory import MemoryVCPU
from vmboot.x86.paging import PAGE_SIZE, PAGE_SIZE_1G, PAGE_SIZE_2M, PTE_PRESENT, PTE_PS, PTE_WRITABLE

KERNEL_TEXT = 0xFFFF_FFFF_8100_0000
STACK_TOP = 0xFFFF_C900_0000_4000
"""Guest-virtual end of a 16 KiB synthetic kernel stack."""


class PageTables:
    """Builds 4- or 5-level page tables inside a MemoryVM, tables allocated from ``table_base``."""

    def __init__(self, vm: MemoryVM, table_base: int, five_level: bool = False) -> None:
        self.vm = vm
        self.next_table = table_base
        self.five_level = five_level
        self.root = self._new_table()

    def _new_table(self) -> int:
        addr = self.next_table
        self.vm.zero(addr, PAGE_SIZE)
        self.next_table += PAGE_SIZE
        return addr

    def _entry(self, table: int, index: int) -> int:
        value: int = struct.unpack("<Q", self.vm.read(table + index * 8, 8))[0]
        return value

    def map(self, va: int, pa: int, size: int = PAGE_SIZE) -> None:
        """Map one page of ``size`` (4 KiB, 2 MiB or 1 GiB) at ``va`` to ``pa``."""
        levels = 5 if self.five_level else 4
        leaf_depth = {PAGE_SIZE: levels - 1, PAGE_SIZE_2M: levels - 2, PAGE_SIZE_1G: levels - 3}[size]
        table = self.root
        for depth in range(levels):
            shift = 12 + 9 * (levels - 1 - depth)
            index = (va >> shift) & 0x1FF
            if depth == leaf_depth:
                flags = PTE_PRESENT | PTE_WRITABLE | (PTE_PS if size != PAGE_SIZE else 0)
                self.vm.write(table + index * 8, struct.pack("<Q", pa | flags))
                return
            entry = self._entry(table, index)
            if not entry & PTE_PRESENT:
                child = self._new_table()
                self.vm.write(table + index * 8, struct.pack("<Q", child | PTE_PRESENT | PTE_WRITABLE))
                table = child
            else:
                table = entry & 0x000F_FFFF_FFFF_F000

    def map_range(self, va: int, pa: int, length: int) -> None:
        for off in range(0, length, PAGE_SIZE):
            self.map(va + off, pa + off)


@dataclass
class GuestStack:
    """A synthetic guest: page tables, a mapped stack and helpers to write words on it."""

    vm: MemoryVM
    tables: PageTables
    stack_phys: int
    stack_top: int = STACK_TOP
    stack_size: int = 0x4000

    def write_u64(self, va: int, value: int) -> None:
        offset = va - (self.stack_top - self.stack_size)
        self.vm.write(self.stack_phys + offset, struct.pack("<Q", value))

    def frame(self, rbp: int, next_rbp: int, ret: int) -> None:
        """A frame-pointer frame at ``rbp``: [rbp] = next_rbp, [rbp+8] = ret."""
        self.write_u64(rbp, next_rbp)
        self.write_u64(rbp + 8, ret)

    def vcpu(self, rip: int, rsp: int, rbp: int, cr4: int = 0, cr3_extra: int = 0,
             **extra: int) -> MemoryVCPU:
        cpu = self.vm.create_vcpu(len(self.vm.vcpus))
        regs = {Register.RIP: rip, Register.RSP: rsp, Register.RBP: rbp,
                Register.CR3: self.tables.root | cr3_extra, Register.CR4: cr4,
                Register.CR0: 0x8000_0011}
        for name, value in extra.items():
            regs[Register[name.upper()]] = value
        cpu.set_registers(regs)
        return cpu


def make_guest(memory: int = 16 << 20, five_level: bool = False, stack_top: int = STACK_TOP,
               text_va: int = KERNEL_TEXT, text_pa: int = 0x200000) -> GuestStack:
    """A MemoryVM with kernel text mapped (2 MiB page at ``text_va``) and a 16 KiB stack."""
    vm = MemoryVM(memory)
    tables = PageTables(vm, 0x1000, five_level)
    tables.map(text_va & ~(PAGE_SIZE_2M - 1), text_pa, PAGE_SIZE_2M)
    stack_phys = 0x800000
    tables.map_range(stack_top - 0x4000, stack_phys, 0x4000)
    return GuestStack(vm, tables, stack_phys, stack_top)


# -- ELF writer -------------------------------------------------------------------------------
@dataclass
class Sym:
    name: str
    value: int
    size: int = 0
    type: int = 2  # STT_FUNC
    bind: int = 1  # STB_GLOBAL
    shndx: int | None = None  # default: the .text section


@dataclass
class Section:
    name: str
    data: bytes
    addr: int = 0
    type: int = 1  # SHT_PROGBITS
    flags: int = 0x6  # SHF_ALLOC | SHF_EXECINSTR
    link: int = 0
    info: int = 0
    entsize: int = 0


@dataclass
class ElfBuilder:
    """A minimal ELF64 x86-64 executable with a .text, extra sections and a .symtab."""

    text_addr: int = KERNEL_TEXT
    text: bytes = b"\xcc" * 0x1000
    symbols: list[Sym] = field(default_factory=list)
    extra: list[Section] = field(default_factory=list)
    with_symtab: bool = True

    def build(self) -> bytes:
        sections = [Section("", b"", type=0, flags=0),
                    Section(".text", self.text, self.text_addr)]
        sections += self.extra
        if self.with_symtab:
            strtab = bytearray(b"\0")
            entries = [b"\0" * 24]
            for sym in self.symbols:
                off = len(strtab)
                strtab += sym.name.encode() + b"\0"
                shndx = 1 if sym.shndx is None else sym.shndx
                entries.append(struct.pack("<IBBHQQ", off, (sym.bind << 4) | sym.type, 0, shndx,
                                           sym.value, sym.size))
            symtab_index = len(sections)
            sections.append(Section(".symtab", b"".join(entries), type=2, flags=0,
                                    link=symtab_index + 1, info=1, entsize=24))
            sections.append(Section(".strtab", bytes(strtab), type=3, flags=0))
        shstr = bytearray(b"\0")
        name_offs = []
        for s in sections:
            if s.name:
                name_offs.append(len(shstr))
                shstr += s.name.encode() + b"\0"
            else:
                name_offs.append(0)
        name_offs.append(len(shstr))
        shstr += b".shstrtab\0"
        sections.append(Section(".shstrtab", bytes(shstr), type=3, flags=0))
        body = bytearray(b"\0" * 64)
        offsets = []
        for s in sections:
            while len(body) % 16:
                body += b"\0"
            offsets.append(len(body))
            body += s.data
        while len(body) % 8:
            body += b"\0"
        shoff = len(body)
        for i, s in enumerate(sections):
            body += struct.pack("<IIQQQQIIQQ", name_offs[i], s.type, s.flags, s.addr,
                                offsets[i] if s.type else 0, len(s.data), s.link, s.info,
                                16, s.entsize)
        ident = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
        header = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 62, 1, self.text_addr, 0, shoff, 0,
                             64, 56, 0, 64, len(sections), len(sections) - 1)
        body[:64] = header
        return bytes(body)


def system_map(entries: Sequence[tuple[int, str, str]]) -> bytes:
    """System.map text from ``(address, type, name)``."""
    return "".join(f"{a:016x} {t} {n}\n" for a, t, n in entries).encode()
