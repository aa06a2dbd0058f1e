"""write_guest_vmcore on a synthetic guest: VMCOREINFO found through symbols and page tables."""

from __future__ import annotations

import struct
from pathlib import Path

from debug_support import KERNEL_TEXT, ElfBuilder, GuestStack, Sym, make_guest
from vmboot.debug.core_reader import read_core
from vmboot.debug.vmcore import write_guest_vmcore
from vmboot.debug.vmcoreinfo import SOURCE_GUEST, SOURCE_MINIMAL
from vmboot.elf import PT_LOAD, ElfFile
from vmboot.hv.registers import Register

SLIDE = 0x1E0_0000
PAGE_OFFSET_BASE = 0xFFFF_9C02_4000_0000
TEXT_PA = 0x20_0000
INFO_PA = 0x40_0000
VARS = KERNEL_TEXT + 0x1000
"""Link-time address of the variables, inside the kernel's first 2 MiB page."""
OWN_INFO = b"OSRELEASE=6.1.192\nPAGESIZE=4096\nKERNELOFFSET=1e00000\nCRASH_CORE=yes\n"
BANNER = b"Linux version 6.1.192 (vmboot@vmboot) #1 SMP\n\0"
OBJECT = 1


def vmlinux(tmp_path: Path) -> Path:
    names = ["vmcoreinfo_data", "vmcoreinfo_size", "page_offset_base", "phys_base",
             "linux_banner"]
    syms = [Sym("_text", KERNEL_TEXT, 0x10), Sym("start_kernel", KERNEL_TEXT + 0x10, 0x10)]
    syms += [Sym(name, VARS + 0x100 * i, 8, type=OBJECT) for i, name in enumerate(names)]
    path = tmp_path / "vmlinux"
    path.write_bytes(ElfBuilder(symbols=syms).build())
    return path


def kernel_guest(info_pointer: int) -> GuestStack:
    """Kernel text slid by SLIDE, the variables set, the direct map of INFO_PA mapped."""
    g = make_guest(text_va=KERNEL_TEXT + SLIDE, text_pa=TEXT_PA)
    g.tables.map(PAGE_OFFSET_BASE + INFO_PA, INFO_PA)
    var_pa = TEXT_PA + (VARS - KERNEL_TEXT)
    g.vm.write(var_pa, struct.pack("<Q", info_pointer))
    g.vm.write(var_pa + 0x100, struct.pack("<Q", len(OWN_INFO)))
    g.vm.write(var_pa + 0x200, struct.pack("<Q", PAGE_OFFSET_BASE))
    g.vm.write(var_pa + 0x300, struct.pack("<Q", 0x100_0000))
    g.vm.write(var_pa + 0x400, BANNER)
    g.vm.write(INFO_PA, OWN_INFO)
    g.vcpu(KERNEL_TEXT + SLIDE + 0x10, 0, 0)
    return g


def test_the_kernels_own_vmcoreinfo_and_direct_map(tmp_path: Path) -> None:
    g = kernel_guest(PAGE_OFFSET_BASE + INFO_PA)
    with g.vm:
        result = write_guest_vmcore(tmp_path / "core", g.vm, g.vm.vcpus,
                                    vmlinux=vmlinux(tmp_path))
    assert result.vmcoreinfo_source == SOURCE_GUEST, result.notes
    with ElfFile.open(tmp_path / "core") as elf:
        (load,) = [s for s in elf.segments if s.type == PT_LOAD]
        assert load.vaddr == PAGE_OFFSET_BASE
    with read_core(tmp_path / "core") as core:
        assert core.vmcoreinfo is not None and core.vmcoreinfo["CRASH_CORE"] == "yes"
        assert core.vm.vcpus[0].get_register(Register.CR3) == g.tables.root


def test_a_kernel_without_vmcoreinfo_gets_the_minimum(tmp_path: Path) -> None:
    g = kernel_guest(0)
    with g.vm:
        result = write_guest_vmcore(tmp_path / "core", g.vm, g.vm.vcpus,
                                    vmlinux=vmlinux(tmp_path))
    assert result.vmcoreinfo_source == SOURCE_MINIMAL
    assert any("not set up" in n for n in result.notes), result.notes
    with read_core(tmp_path / "core") as core:
        info = core.vmcoreinfo
        assert info is not None
        assert info["OSRELEASE"] == "6.1.192"
        assert info["KERNELOFFSET"] == f"{SLIDE:x}"
        assert info["NUMBER(phys_base)"] == str(0x100_0000)
        assert core.kaslr_offset == SLIDE


def test_without_symbols_the_core_has_no_vmcoreinfo_and_says_why(tmp_path: Path) -> None:
    g = kernel_guest(0)
    empty = tmp_path / "empty"
    empty.write_bytes(ElfBuilder(with_symtab=False).build())
    with g.vm:
        result = write_guest_vmcore(tmp_path / "core", g.vm, g.vm.vcpus, vmlinux=empty)
    assert result.vmcoreinfo_source is None
    assert any("no VMCOREINFO" in n for n in result.notes), result.notes
    with read_core(tmp_path / "core") as core:
        assert core.vmcoreinfo is None
