"""The real tiny vmlinux (../shared/kernels/tiny-vmlinux) prepared into a MemoryVM.

Expected values come from sources independent of vmboot's ELF reader: the program headers
are decoded here with ``struct``, and the entry points are checked against System.map.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from conftest import shared_kernel_file
from vmboot.hv import MemoryVM
from vmboot.linux import BootOptions, BootPlan, ElfKernel, PvhBootPlan, default_e820_map, load_kernel
from vmboot.linux.configurator.start_info import HvmMemmapEntry, HvmModlistEntry, HvmStartInfo

MEM = 64 << 20
START_KERNEL_MAP = 0xFFFFFFFF80000000
"""``__START_KERNEL_map``: kernel virtual = physical + this (no KASLR in the tiny kernel)."""


def program_headers(image: bytes) -> list[tuple[int, ...]]:
    """(type, flags, offset, vaddr, paddr, filesz, memsz, align) of every program header."""
    phoff, = struct.unpack_from("<Q", image, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", image, 0x36)
    return [struct.unpack_from("<IIQQQQQQ", image, phoff + i * phentsize) for i in range(phnum)]


def system_map(name: str) -> int:
    for line in shared_kernel_file("tiny-System.map").read_text().splitlines():
        addr, _, sym = line.split()
        if sym == name:
            return int(addr, 16)
    pytest.fail(f"{name} not in tiny-System.map")


@pytest.fixture(scope="module")
def image() -> bytes:
    return Path(shared_kernel_file("tiny-vmlinux")).read_bytes()


def test_entries_match_system_map(image: bytes) -> None:
    kernel = load_kernel(image)
    assert isinstance(kernel, ElfKernel)
    assert kernel.entry_point == system_map("startup_64") - START_KERNEL_MAP == 0x1000000
    assert kernel.pvh_entry == system_map("pvh_start_xen") - START_KERNEL_MAP
    assert kernel.default_entry == "pvh"
    assert kernel.kernel_version is not None
    assert kernel.kernel_version.startswith("Linux version 6.1.")


@pytest.mark.parametrize("entry", ["pvh", "elf64"])
def test_segments_land_at_their_paddr(image: bytes, entry: str) -> None:
    loads = [p for p in program_headers(image) if p[0] == 1]
    assert len(loads) == 3
    initrd = Path(shared_kernel_file("tiny-initramfs-min.cpio")).read_bytes()
    with MemoryVM(MEM) as vm:
        vm.write(0, b"\xA5" * MEM)
        plan = load_kernel(image).prepare(vm, BootOptions(
            cmdline="console=ttyS0 reboot=k panic=-1", initrd=initrd, entry=entry))  # type: ignore[arg-type]
        assert plan.load_addr == min(p[4] for p in loads)
        assert plan.kernel_end == max(p[4] + p[6] for p in loads)
        for _type, _flags, offset, _vaddr, paddr, filesz, memsz, _align in loads:
            assert vm.read(paddr, filesz) == image[offset : offset + filesz]
            assert vm.read(paddr + filesz, memsz - filesz) == bytes(memsz - filesz)
        assert plan.initrd_gpa is not None
        assert vm.read(plan.initrd_gpa, len(initrd)) == initrd
        assert vm.read(plan.cmdline_gpa, len(plan.cmdline) + 1) == b"console=ttyS0 reboot=k panic=-1\0"


def test_pvh_start_info_read_back(image: bytes) -> None:
    initrd = Path(shared_kernel_file("tiny-initramfs-min.cpio")).read_bytes()
    with MemoryVM(MEM) as vm:
        plan = load_kernel(image).prepare(vm, BootOptions(cmdline="quiet", initrd=initrd))
        assert isinstance(plan, PvhBootPlan)
        info = HvmStartInfo.unpack(vm.read(plan.start_info_gpa, HvmStartInfo.SIZE))
        assert (info.magic, info.version, info.flags, info.rsdp_paddr) == (0x336EC578, 1, 0, 0)
        assert info.nr_modules == 1
        assert vm.read(info.cmdline_paddr, 6) == b"quiet\0"
        mod = HvmModlistEntry.unpack(vm.read(info.modlist_paddr, HvmModlistEntry.SIZE))
        assert (mod.size, mod.cmdline_paddr) == (len(initrd), 0)
        assert vm.read(mod.paddr, mod.size) == initrd
        e820 = default_e820_map(0, MEM)
        got = [HvmMemmapEntry.unpack(vm.read(info.memmap_paddr + i * HvmMemmapEntry.SIZE,
                                             HvmMemmapEntry.SIZE))
               for i in range(info.memmap_entries)]
        assert [(m.addr, m.size, m.type) for m in got] == [(e.addr, e.size, e.type) for e in e820]
        # every structure the PVH kernel reads sits below 4 GiB and outside the kernel
        for gpa in (plan.start_info_gpa, info.modlist_paddr, info.memmap_paddr, info.cmdline_paddr):
            assert gpa < plan.load_addr or gpa >= plan.kernel_end


def test_elf64_zero_page_read_back(image: bytes) -> None:
    with MemoryVM(MEM) as vm:
        plan = load_kernel(image).prepare(vm, BootOptions(cmdline="console=ttyS0", entry="elf64",
                                                          initrd=b"\x07" * 4096))
        assert isinstance(plan, BootPlan)
        zp = vm.read(plan.zero_page_gpa, 4096)
        assert plan.entry_gpa == 0x1000000
        assert struct.unpack_from("<H", zp, 0x1FE)[0] == 0xAA55
        assert zp[0x202:0x206] == b"HdrS"
        assert zp[0x210] == 0xFF
        assert struct.unpack_from("<I", zp, 0x228)[0] == plan.cmdline_gpa
        assert struct.unpack_from("<II", zp, 0x218) == (plan.initrd_gpa, 4096)
        assert zp[0x1E8] == len(default_e820_map(0, MEM))
