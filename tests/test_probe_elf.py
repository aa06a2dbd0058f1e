"""The ELF probes under real KVM.

vmboot.linux cannot load ELF vmlinux files yet, so these tests load the probe's PT_LOAD
segment and set up the entry state themselves, following the PVH ABI (Xen start_info.h,
pvh.pandoc) and the 64-bit boot protocol, to check the probes and the PVH verifier now.
The tests that go through ``load_kernel``/``prepare`` skip, saying why, until the loader
lands.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable

import pytest

from conftest import requires_kvm
from vmboot.devices.bus import PortBus
from vmboot.elf import ElfFile
from vmboot.hv import DescriptorTable, Register, SegmentRegister
from vmboot.hv.kvm import KvmVCPU, KvmVM
from vmboot.linux import BootOptions, BootPlan, default_e820_map, load_kernel
from vmboot.linux.configurator import gdt as boot_gdt
from vmboot.linux.configurator import layout
from vmboot.probes import (
    Check,
    EntryKind,
    ProbeDevice,
    ProbeKind,
    ProbeReport,
    probe_image,
    run_probe,
    verify,
)
from vmboot.probes import pvh_abi as pvh
from vmboot.probes.verify_pvh import PvhExpectation, verify_pvh
from vmboot.vmm.exits import ExitReason
from vmboot.vmm.runner import Runner
from vmboot.x86 import cr

pytestmark = [requires_kvm, pytest.mark.kvm]

MEMORY = 64 << 20
PT_LOAD = 1
START_INFO = 0x6000
MODLIST = 0x6100
MEMMAP = 0x6400
CMDLINE = 0x7000
MODULE = 0x800000


def load_elf_segments(vm: KvmVM, image: bytes) -> tuple[int, int, int | None]:
    """Copy every PT_LOAD segment to its p_paddr; returns (lowest p_paddr, e_entry, PVH entry)."""
    with ElfFile(image, "probe") as elf:
        loads = [p for p in elf.segments if p.type == PT_LOAD]
        for p in loads:
            vm.write(p.paddr, bytes(elf.segment_data(p)))
            vm.zero(p.paddr + p.filesz, p.memsz - p.filesz)
        notes = [n for n in elf.notes() if n.name == pvh.XEN_ELFNOTE_NAME.decode()
                 and n.type == pvh.XEN_ELFNOTE_PHYS32_ENTRY]
        pvh_entry = int.from_bytes(notes[0].desc, "little") if notes else None
        return min(p.paddr for p in loads), elf.e_entry, pvh_entry


def run(vm: KvmVM, vcpu: KvmVCPU) -> tuple[ProbeReport, str]:
    bus = PortBus()
    device = ProbeDevice()
    bus.attach_device(device.port_base, device.port_count, device, "probe")
    runner = Runner(vm, vcpu, bus)
    device.connect_stop(runner.stop)
    result = runner.run(timeout=30)
    assert result.reason is ExitReason.POWEROFF, result.one_line()
    return device.report, result.one_line()


def assert_all_ok(checks: list[Check]) -> None:
    failed = [f"{c.name}: expected {c.expected}, observed {c.observed}" for c in checks if not c.ok]
    assert not failed, "\n".join(failed)


# -- PVH ----------------------------------------------------------------------------------------

Tamper = Callable[[KvmVM, KvmVCPU], object]


@dataclasses.dataclass
class PvhSetup:
    cmdline: bytes = b"console=hvc0 pvh=1"
    modules: tuple[bytes, ...] = (bytes(range(256)) * 40 + b"tail",)
    version: int = 1


def boot_pvh(setup: PvhSetup, tamper: Tamper | None = None) -> tuple[ProbeReport, PvhExpectation, str]:
    with KvmVM(MEMORY, irqchip=False) as vm:
        vcpu = vm.create_vcpu(0)
        load, _, entry = load_elf_segments(vm, probe_image("pvh"))
        assert entry is not None
        memmap = default_e820_map(0, MEMORY)
        info = struct.pack("<IIIIQQQQII", pvh.HVM_START_MAGIC, setup.version, 0, len(setup.modules),
                           MODLIST if setup.modules else 0, CMDLINE, 0, MEMMAP, len(memmap), 0)
        assert len(info) == pvh.HVM_START_INFO_SIZE_V1
        vm.write(START_INFO, info)
        vm.write(CMDLINE, setup.cmdline + b"\0")
        placed: list[tuple[int, bytes]] = []
        at = MODULE
        for i, data in enumerate(setup.modules):
            vm.write(MODLIST + i * pvh.HVM_MODLIST_ENTRY_SIZE, struct.pack("<QQQQ", at, len(data), 0, 0))
            vm.write(at, data)
            placed.append((at, data))
            at += (len(data) + 0xFFF) & ~0xFFF
        vm.write(MEMMAP, pvh.pack_memmap(memmap))
        # 32-bit protected mode, paging off, flat segments from the boot GDT
        table = boot_gdt.boot_gdt()
        vm.write(layout.GDT_GPA, table)
        segs = boot_gdt.boot_segments()
        vcpu.set_registers({
            Register.CR0: cr.CR0_PE | cr.CR0_ET, Register.CR4: 0, Register.CR3: 0, Register.EFER: 0,
            Register.RIP: entry, Register.RBX: START_INFO, Register.RFLAGS: cr.RFLAGS_RESERVED_1,
            Register.RSP: 0,
        })
        vcpu.set_gdt(DescriptorTable(layout.GDT_GPA, len(table) - 1))
        vcpu.set_idt(DescriptorTable(0, 0))
        data_seg = segs["data"]
        vcpu.set_segments({
            SegmentRegister.CS: segs["code32"], SegmentRegister.DS: data_seg,
            SegmentRegister.ES: data_seg, SegmentRegister.SS: data_seg,
            SegmentRegister.FS: data_seg, SegmentRegister.GS: data_seg,
            SegmentRegister.TR: segs["tss"],
        })
        if tamper is not None:
            tamper(vm, vcpu)
        report, how = run(vm, vcpu)
    expected = PvhExpectation(entry_gpa=entry, load_addr=load, start_info_gpa=START_INFO,
                              start_info_version=setup.version, cmdline=setup.cmdline,
                              cmdline_gpa=CMDLINE, modules=placed, memmap=memmap)
    return report, expected, how


@pytest.mark.parametrize("setup", [
    PvhSetup(),
    PvhSetup(cmdline=b"", modules=()),
    PvhSetup(modules=(b"initrd" * 1000, b"second module", b"x")),
    PvhSetup(version=0),
], ids=["initrd", "nothing", "three modules", "start_info v0"])
def test_pvh_probe_hand_loaded(setup: PvhSetup) -> None:
    report, expected, how = boot_pvh(setup)
    checks = verify_pvh(report, expected, exit_detail=how)
    assert_all_ok(checks)
    assert len({c.name for c in checks}) == len(checks)


def _flip_module_byte(vm: KvmVM, vcpu: KvmVCPU) -> None:
    vm.write(MODULE + 5, bytes([vm.read(MODULE + 5, 1)[0] ^ 0xFF]))


def _start_info_copy(vm: KvmVM, vcpu: KvmVCPU) -> None:
    copy = 0x5000
    vm.write(copy, vm.read(START_INFO, pvh.HVM_START_INFO_SIZE_V1))
    vcpu.set_register(Register.RBX, copy)


def _paging_bit_in_cr4(vm: KvmVM, vcpu: KvmVCPU) -> None:
    vcpu.set_register(Register.CR4, cr.CR4_PAE)


def _drop_memmap_entry(vm: KvmVM, vcpu: KvmVCPU) -> None:
    (n,) = struct.unpack("<I", vm.read(START_INFO + pvh.HVM_MEMMAP_ENTRIES, 4))
    vm.write(START_INFO + pvh.HVM_MEMMAP_ENTRIES, struct.pack("<I", n - 1))


@pytest.mark.parametrize("tamper, failures", [
    (_flip_module_byte, {"module 0 checksum"}),
    (_start_info_copy, {"EBX (hvm_start_info)"}),
    (_paging_bit_in_cr4, {"CR4 (all clear)"}),
    (_drop_memmap_entry, {"memmap_entries", "memmap checksum"}),
], ids=["module byte", "start_info elsewhere", "CR4.PAE", "memmap entry dropped"])
def test_pvh_negative_controls(tamper: Tamper, failures: set[str]) -> None:
    report, expected, how = boot_pvh(PvhSetup(), tamper)
    checks = verify_pvh(report, expected, exit_detail=how)
    assert {c.name for c in checks if not c.ok} == failures


# -- ELF64 entry ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["elf64", "pvh"])
def test_elf64_entry_hand_loaded(kind: str) -> None:
    """The ELF probes' e_entry, entered in 64-bit mode with a zero page (the bzImage probe's
    prepare() builds the zero page, page tables and GDT; the ELF image replaces the kernel)."""
    options = BootOptions(cmdline="elf64 entry", initrd=b"0123456789" * 333)
    with KvmVM(MEMORY, irqchip=False) as vm:
        vcpu = vm.create_vcpu(0)
        plan = load_kernel(probe_image("bzimage")).prepare(vm, options)
        assert isinstance(plan, BootPlan)
        load, e_entry, _ = load_elf_segments(vm, probe_image(kind))
        plan = dataclasses.replace(plan, load_addr=load, entry_gpa=e_entry)
        plan.configure_vcpu(vcpu)
        report, how = run(vm, vcpu)
    checks = verify(report, plan, options, kind=EntryKind.ELF64, exit_detail=how)
    assert_all_ok(checks)


# -- through the loader ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["elf64", "pvh"])
def test_elf_probe_through_the_loader(kind: ProbeKind) -> None:
    result = run_probe(kind, BootOptions(cmdline="loader", initrd=b"abc" * 1000))
    failed = [f"{c.name}: expected {c.expected}, observed {c.observed}" for c in result.failed]
    assert result.ok, "\n".join(failed)
