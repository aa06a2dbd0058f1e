"""vmcore writer and core reader on MemoryVM: ELF layout, notes, holes, round trips, refusals."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

import fuzz_support  # noqa: F401  (puts the repository root on sys.path for ``fuzz``)

# isort: split
from fuzz.fuzz_core import make_core

from vmboot.debug.core_reader import read_core
from vmboot.debug.elf_core import (
    ET_CORE,
    NOTE_OWNER_CORE,
    NOTE_OWNER_QEMU,
    NOTE_OWNER_VMCOREINFO,
    NT_PRSTATUS,
    PRSTATUS_SIZE,
    QEMU_CPUSTATE_HEAD,
    QEMU_SEGMENT,
    CpuState,
    pack_note,
    pack_prstatus,
)
from vmboot.debug.kaslr import KERNEL_MAP_BASE
from vmboot.debug.page_walk import GuestAddressSpace
from vmboot.debug.vmcore import cpu_state, write_vmcore
from vmboot.debug.vmcoreinfo import (
    SOURCE_MINIMAL,
    VmcoreInfo,
    minimal_vmcoreinfo_from,
    parse_vmcoreinfo,
)
from vmboot.elf import NOTE_HEADER, PT_LOAD, PT_NOTE, ElfFile
from vmboot.errors import DebugError, VmbootError
from vmboot.hv.memory import MemoryVM
from vmboot.hv.registers import Register, Segment, SegmentRegister
from vmboot.units import GiB, MiB
from vmboot.x86.paging import PAGE_SIZE

PAGE_OFFSET = 0xFFFF_8880_0000_0000
INFO = VmcoreInfo(b"OSRELEASE=6.1.0\nPAGESIZE=4096\nKERNELOFFSET=1e00000\n", SOURCE_MINIMAL)
REGS = {Register.RIP: 0xFFFF_FFFF_8100_1234, Register.RSP: 0xFFFF_C900_0001_3F00,
        Register.RBP: 0x1111, Register.RAX: 0xAAAA, Register.R15: 0xF15, Register.RFLAGS: 0x246,
        Register.CR0: 0x8005_0033, Register.CR3: 0x1234_5000, Register.CR4: 0x20,
        Register.EFER: 0xD01}


def guest(size: int = 64 * MiB, cpus: int = 2) -> MemoryVM:
    vm = MemoryVM(size)
    for i in range(cpus):
        vcpu = vm.create_vcpu(i)
        vcpu.set_registers({r: v + i for r, v in REGS.items()})
        vcpu.set_segments({SegmentRegister.CS: Segment(selector=0x10),
                           SegmentRegister.SS: Segment(selector=0x18),
                           SegmentRegister.GS: Segment(base=0xFFFF_8880_0780_0000 + i)})
    return vm


def notes_of(path: Path) -> list[tuple[str, int, bytes]]:
    with ElfFile.open(path) as elf:
        return [(n.name, n.type, n.desc) for n in elf.notes()]


def test_layout_matches_proc_vmcore(tmp_path: Path) -> None:
    with guest() as vm:
        vm.write(0x10_0000, b"kernel data")
        result = write_vmcore(tmp_path / "core", vm, [cpu_state(v) for v in vm.vcpus], INFO,
                              PAGE_OFFSET)
    assert result.cpus == 2
    with ElfFile.open(tmp_path / "core") as elf:
        assert elf.e_type == ET_CORE
        note, load = elf.segments
        assert note.type == PT_NOTE and note.offset % 4 == 0 and note.filesz % 4 == 0
        assert load.type == PT_LOAD
        assert (load.paddr, load.vaddr) == (0, PAGE_OFFSET)
        assert load.filesz == load.memsz == 64 * MiB
        assert load.offset % PAGE_SIZE == 0
        assert bytes(elf.bytes_at("ram", load.offset + 0x10_0000, 11)) == b"kernel data"
    kinds = [(name, kind) for name, kind, _ in notes_of(tmp_path / "core")]
    assert kinds[:3] == [(NOTE_OWNER_CORE, NT_PRSTATUS), (NOTE_OWNER_CORE, NT_PRSTATUS),
                         (NOTE_OWNER_VMCOREINFO, 0)]


def test_prstatus_holds_registers_and_cpu_number(tmp_path: Path) -> None:
    with guest() as vm:
        write_vmcore(tmp_path / "core", vm, [cpu_state(v) for v in vm.vcpus], INFO)
    prstatus = [d for n, t, d in notes_of(tmp_path / "core") if t == NT_PRSTATUS]
    assert [len(d) for d in prstatus] == [PRSTATUS_SIZE, PRSTATUS_SIZE]
    for cpu, desc in enumerate(prstatus):
        pid = struct.unpack_from("<i", desc, 32)[0]
        regs = struct.unpack_from("<27Q", desc, 112)
        assert pid == cpu + 1
        assert regs[16] == REGS[Register.RIP] + cpu  # user_regs_struct.rip
        assert regs[19] == REGS[Register.RSP] + cpu  # .rsp
        assert regs[0] == REGS[Register.R15] + cpu   # .r15
        assert regs[17] == 0x10 and regs[20] == 0x18  # cs, ss
        assert regs[22] == 0xFFFF_8880_0780_0000 + cpu  # gs_base


def test_untouched_and_zero_pages_are_holes(tmp_path: Path) -> None:
    with guest(256 * MiB, 1) as vm:
        vm.write(8 * MiB, b"\x01" * (2 * MiB))
        vm.write(100 * MiB, bytes(4 * MiB))  # touched, but zero
        vm.write(200 * MiB + 5, b"x")
        result = write_vmcore(tmp_path / "core", vm, [cpu_state(vm.vcpus[0])], INFO)
    assert result.data_bytes == 2 * MiB + PAGE_SIZE
    st = os.stat(tmp_path / "core")
    assert st.st_size == result.file_size > 256 * MiB
    assert st.st_blocks * 512 < 4 * MiB


def test_round_trip_through_reader(tmp_path: Path) -> None:
    with guest(3 * GiB + 8 * MiB, 2) as vm:
        vm.write(0x2000, b"low")
        vm.write(4 * GiB + 0x1000, b"high")
        write_vmcore(tmp_path / "core", vm, [cpu_state(v) for v in vm.vcpus], INFO)
    with ElfFile.open(tmp_path / "core") as elf:
        assert [(s.paddr, s.memsz) for s in elf.segments if s.type == PT_LOAD] == [
            (0, 3 * GiB), (4 * GiB, 8 * MiB)]
    with read_core(tmp_path / "core") as core:
        assert core.writer == "vmboot"
        assert core.kaslr_offset == 0x1E0_0000
        assert core.vm.read(0x2000, 3) == b"low"
        assert core.vm.read(4 * GiB + 0x1000, 4) == b"high"
        assert [v.index for v in core.vm.vcpus] == [0, 1]
        regs = core.vm.vcpus[1].get_registers(REGS)
        assert regs == {r: v + 1 for r, v in REGS.items()}
        assert core.vm.vcpus[1].get_segment(SegmentRegister.GS).base == 0xFFFF_8880_0780_0001
        assert core.notes == []


def qemu_note(cr3: int) -> bytes:
    general = [0] * 18
    general[6] = 0xFFFF_C900_0000_0F00  # rsp
    general[16] = 0xFFFF_FFFF_8100_0000  # rip
    desc = QEMU_CPUSTATE_HEAD.pack(1, 0x1B8, *general)
    for _ in range(10):
        desc += QEMU_SEGMENT.pack(0x10, 0xFFFFFFFF, 0, 0, 0)
    desc += struct.pack("<5Q", 0x8005_0033, 0, 0x7FFF_0000, cr3, 0x20) + bytes(8)  # cr[0..4]
    return pack_note(NOTE_OWNER_QEMU, 0, desc)


def prstatus_note(rip: int) -> bytes:
    cpu = CpuState(0, {Register.RIP: rip})
    return pack_note(NOTE_OWNER_CORE, NT_PRSTATUS, pack_prstatus(cpu))


def test_qemu_note_supplies_control_registers(tmp_path: Path) -> None:
    core = make_core(prstatus_note(0xFFFF_FFFF_8100_0000) + qemu_note(0x5000),
                     [(0, 4 * MiB, b"\x55" * PAGE_SIZE)])
    with read_core(core) as got:
        assert got.writer == "qemu"
        assert got.vm.vcpus[0].get_register(Register.CR3) == 0x5000
        assert got.vm.read(0, 2) == b"\x55\x55"


def test_cr3_from_vmcoreinfo_without_cpu_state_notes() -> None:
    info = b"SYMBOL(init_top_pgt)=ffffffff83a0a000\nNUMBER(phys_base)=16777216\n"
    core = make_core(prstatus_note(1) + pack_note(NOTE_OWNER_VMCOREINFO, 0, info),
                     [(0, 4 * MiB, b"")])
    with read_core(core) as got:
        assert got.writer == "kernel"
        cr3 = got.vm.vcpus[0].get_register(Register.CR3)
        assert cr3 == 0xFFFF_FFFF_83A0_A000 - KERNEL_MAP_BASE + 0x100_0000
        assert "init_top_pgt" in got.notes[0]


def test_minimal_vmcoreinfo_from_guest_variables() -> None:
    with MemoryVM(4 * MiB) as vm:
        vm.write(0x1000, b"Linux version 6.1.192 (vmboot@vmboot) #1 SMP\0")
        vm.write(0x2000, struct.pack("<Q", 0x200_0000))
        space = GuestAddressSpace(vm, 0, 0, 0)  # paging off: addresses are physical
        text = minimal_vmcoreinfo_from(space, {"linux_banner": 0x1000 - 0x40,
                                               "phys_base": 0x2000 - 0x40,
                                               "init_top_pgt": 0x3000}, 0x40)
    fields = parse_vmcoreinfo(text)
    assert fields["OSRELEASE"] == "6.1.192"
    assert fields["NUMBER(phys_base)"] == str(0x200_0000)
    assert fields["SYMBOL(swapper_pg_dir)"] == "3040"
    assert fields["KERNELOFFSET"] == "40"
    assert fields["PAGESIZE"] == "4096"


GOOD = make_core(prstatus_note(1), [(0, 4 * MiB, b"\x01" * 64)])
CORRUPT = {
    "not ELF": b"\0" * 128,
    "truncated header": GOOD[:40],
    "truncated program headers": GOOD[:100],
    "not a core": make_core(prstatus_note(1), [(0, 4 * MiB, b"")], e_type=2),
    "no prstatus": make_core(b"", [(0, 4 * MiB, b"")]),
    "short prstatus": make_core(pack_note(NOTE_OWNER_CORE, NT_PRSTATUS, bytes(100)),
                                [(0, 4 * MiB, b"")]),
    "note past its segment": make_core(NOTE_HEADER.pack(5, 4096, 1) + b"CORE\0\0\0\0",
                                       [(0, 4 * MiB, b"")]),
    "no memory": make_core(prstatus_note(1), []),
    "filesz over memsz": make_core(prstatus_note(1), [(0, 16, b"\x01" * 64)]),
    "segment past end of file": GOOD[:-10],
    "huge physical address": make_core(prstatus_note(1), [(1 << 60, 4096, b"")]),
    "too much memory": make_core(prstatus_note(1), [(0, 1 << 40, b"")]),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_cores_are_refused_with_vmboot_errors(case: str) -> None:
    with pytest.raises(VmbootError):
        read_core(CORRUPT[case]).close()


def test_good_core_reads() -> None:
    with read_core(GOOD) as core:
        assert core.vm.read(0, 64) == b"\x01" * 64


def test_writer_refuses_no_cpus_and_bad_paths(tmp_path: Path) -> None:
    with guest(4 * MiB, 1) as vm:
        with pytest.raises(DebugError, match="no CPU state"):
            write_vmcore(tmp_path / "core", vm, [], INFO)
        with pytest.raises(DebugError, match="cannot create"):
            write_vmcore(tmp_path / "missing" / "core", vm, [cpu_state(vm.vcpus[0])], INFO)
        assert not (tmp_path / "core").exists()
