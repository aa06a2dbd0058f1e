"""ELF kernel cores (vmboot vmcores, QEMU dumps, kdump copies) read back into a MemoryVM."""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

import contextlib
import struct

from fuzz.harness import Target, atheris_main
from vmboot.debug.core_reader import read_core
from vmboot.debug.elf_core import (
    ET_CORE,
    NOTE_OWNER_CORE,
    NOTE_OWNER_QEMU,
    NOTE_OWNER_VMBOOT,
    NOTE_OWNER_VMCOREINFO,
    NT_PRSTATUS,
    NT_QEMU_CPUSTATE,
    NT_VMBOOT_CPU,
    NT_VMCOREINFO,
    QEMU_CPUSTATE_HEAD,
    QEMU_SEGMENT,
    CpuState,
    pack_note,
    pack_prstatus,
    pack_vmboot_cpu,
)
from vmboot.debug.page_walk import GuestAddressSpace
from vmboot.elf import ELF_HEADER, EM_X86_64, PROGRAM_HEADER, PT_LOAD, PT_NOTE
from vmboot.errors import PageWalkError
from vmboot.hv.registers import GENERAL_REGISTERS, Register

MAX_MEMORY = 64 << 20
"""Guest RAM a fuzzed core may ask for (the reader's own limit is tested separately)."""
INFO = (b"OSRELEASE=6.1.192\nPAGESIZE=4096\nSYMBOL(init_top_pgt)=ffffffff82a0a000\n"
        b"NUMBER(phys_base)=0\nKERNELOFFSET=1e00000\n")


def make_core(notes: bytes, loads: list[tuple[int, int, bytes]], e_type: int = ET_CORE) -> bytes:
    """A core file with ``notes`` in one PT_NOTE and ``(paddr, memsz, data)`` PT_LOADs."""
    phnum = 1 + len(loads)
    offset = ELF_HEADER.size + phnum * PROGRAM_HEADER.size
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    out = bytearray(ELF_HEADER.pack(ident, e_type, EM_X86_64, 1, 0, ELF_HEADER.size, 0, 0,
                                    ELF_HEADER.size, PROGRAM_HEADER.size, phnum, 0, 0, 0))
    body = bytearray(notes)
    out += PROGRAM_HEADER.pack(PT_NOTE, 0, offset, 0, 0, len(notes), len(notes), 4)
    for paddr, memsz, data in loads:
        vaddr = (0xFFFF_8880_0000_0000 + paddr) & ((1 << 64) - 1)
        out += PROGRAM_HEADER.pack(PT_LOAD, 7, offset + len(body), vaddr,
                                   paddr, len(data), memsz, 0)
        body += data
    return bytes(out + body)


def prstatus_note(cpu: int, rip: int) -> bytes:
    state = CpuState(cpu, {Register.RIP: rip, Register.RSP: 0x8000, Register.CR3: 0x1000},
                     pid=cpu + 1)
    return pack_note(NOTE_OWNER_CORE, NT_PRSTATUS, pack_prstatus(state))


def qemu_note(cr3: int) -> bytes:
    desc = QEMU_CPUSTATE_HEAD.pack(1, 0x1B8, *([0] * 18))
    desc += QEMU_SEGMENT.pack(0x10, 0xFFFFFFFF, 0, 0, 0) * 10
    desc += struct.pack("<5QQ", 0x8005_0033, 0, 0, cr3, 0x20, 0)
    return pack_note(NOTE_OWNER_QEMU, NT_QEMU_CPUSTATE, desc)


def _seeds() -> list[bytes]:
    ram = struct.pack("<Q", 0x2003) + bytes(4088) + struct.pack("<Q", 0x83) * 4
    vmboot_cpu = pack_vmboot_cpu(CpuState(0, {Register.CR0: 0x8000_0001, Register.CR3: 0}))
    return [
        make_core(prstatus_note(0, 0x1234) + pack_note(NOTE_OWNER_VMCOREINFO, NT_VMCOREINFO, INFO)
                  + pack_note(NOTE_OWNER_VMBOOT, NT_VMBOOT_CPU, vmboot_cpu),
                  [(0, 2 << 20, ram)]),
        make_core(prstatus_note(0, 0x10) + prstatus_note(1, 0x20) + qemu_note(0) + qemu_note(0),
                  [(0, 0xA0000, ram[:512]), (0x100000, 0x100000, b"\x90" * 64)]),
        make_core(prstatus_note(0, 0xFFFF_FFFF_8100_0000)
                  + pack_note(NOTE_OWNER_VMCOREINFO, NT_VMCOREINFO, INFO),
                  [(0, 4 << 20, ram[:64])]),
    ]


def _offsets() -> list[int]:
    header = list(range(16, ELF_HEADER.size, 2))
    phdrs = [ELF_HEADER.size + i * PROGRAM_HEADER.size + f for i in range(3)
             for f in (0, 8, 16, 24, 32, 40)]
    notes = [ELF_HEADER.size + 3 * PROGRAM_HEADER.size + f for f in (0, 4, 8, 20 + 32, 20 + 240)]
    return header + phdrs + notes


def one_input(data: bytes) -> None:
    with read_core(data, max_memory=MAX_MEMORY) as core:
        core.kaslr_offset  # noqa: B018 - parses KERNELOFFSET
        for vcpu in core.vm.vcpus:
            regs = vcpu.get_registers((*GENERAL_REGISTERS, Register.CR0, Register.CR3,
                                       Register.CR4))
            space = GuestAddressSpace(core.vm, regs[Register.CR3], regs[Register.CR4],
                                      regs[Register.CR0])
            with contextlib.suppress(PageWalkError):
                space.read(regs[Register.RIP], 16)


TARGET = Target("core", one_input, _seeds, _offsets, max_len=1 << 14,
                description="read_core: ELF cores into a MemoryVM with vCPUs")

if __name__ == "__main__":
    atheris_main(TARGET)
