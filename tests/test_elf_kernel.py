"""ELF vmlinux loading with synthetic ELF files (tests/elf_builder.py).

Facts re-derived from rust-vmm linux-loader's ELF tests (test_load_elf, test_load_pvh,
test_dummy_elfnote, bad notes, bad magic/endianness/phoff) plus vmboot's own contract:
everything is checked before anything is written to guest memory.
"""

from __future__ import annotations

import json
import struct

import pytest

from elf_builder import (
    PT_NOTE,
    ElfSpec,
    Segment,
    build_elf,
    note,
    pvh_note,
    simple_kernel,
)
from vmboot.cli.inspect import describe_elf_kernel, elf_kernel_summary
from vmboot.errors import (
    BootConfigError,
    CmdlineError,
    ElfFormatError,
    KernelFormatError,
    LayoutError,
    UnsupportedKernelError,
    VmbootError,
)
from vmboot.hv import MemoryVM, Register, SegmentRegister
from vmboot.linux import (
    BootOptions,
    BootPlan,
    ElfKernel,
    PvhBootPlan,
    default_e820_map,
    load_kernel,
)
from vmboot.linux import bootparam as bp
from vmboot.linux.configurator.gdt import boot_gdt
from vmboot.linux.configurator.start_info import (
    XEN_HVM_START_MAGIC_VALUE,
    HvmMemmapEntry,
    HvmModlistEntry,
    HvmStartInfo,
)
from vmboot.x86 import cr

MEM = 64 << 20


def fresh_vm(fill: int = 0) -> MemoryVM:
    vm = MemoryVM(MEM)
    if fill:
        vm.write(0, bytes([fill]) * MEM)
    return vm


# -- rust-vmm facts -------------------------------------------------------------------------------


def test_pt_load_at_paddr_0_with_entry_0x400() -> None:
    """test_load_elf: a segment at physical 0 whose e_entry is 0x400 loads with entry 0x400."""
    body = bytes(range(256)) * 4 + b"\x90" * 0x80
    image = build_elf(ElfSpec(segments=[Segment(data=body, paddr=0)], entry=0x400))
    kernel = load_kernel(image)
    assert isinstance(kernel, ElfKernel)
    assert kernel.pvh_entry is None and kernel.default_entry == "elf64"
    with fresh_vm() as vm:
        plan = kernel.prepare(vm, BootOptions())
        assert plan.entry_gpa == 0x400 and plan.load_addr == 0 and plan.entry_mode == "elf64"
        assert vm.read(0, len(body)) == body


def test_pvh_note_after_a_dummy_note_is_found() -> None:
    """test_load_pvh: the Xen PHYS32_ENTRY note is found behind other notes."""
    dummy = note(b"GNU", 3, b"\x11" * 20) + note(b"Xen", 17, b"\0" * 8)
    kernel = ElfKernel(simple_kernel(pvh_entry=0x100010, extra_notes=dummy))
    assert kernel.pvh_entry == 0x100010
    assert kernel.default_entry == "pvh"
    assert kernel.entries()["pvh"].usable and kernel.entries()["elf64"].usable


def test_dummy_note_only_means_no_pvh_entry() -> None:
    """test_dummy_elfnote: notes that are not Xen/18 give no PVH entry, and no error."""
    kernel = ElfKernel(simple_kernel(extra_notes=note(b"Linux", 18, b"\1\2\3\4")
                                     + note(b"Xen", 5, b"4.17\0")))
    assert kernel.pvh_entry is None
    with fresh_vm() as vm, pytest.raises(UnsupportedKernelError, match="no XEN_ELFNOTE_PHYS32_ENTRY"):
        kernel.plan(vm, BootOptions(entry="pvh"))


@pytest.mark.parametrize("size", [4, 8])
def test_pvh_note_of_4_or_8_bytes(size: int) -> None:
    assert ElfKernel(simple_kernel(pvh_entry=0x100020, pvh_size=size)).pvh_entry == 0x100020


@pytest.mark.parametrize("size", [0, 1, 2, 3, 5, 16])
def test_pvh_note_with_a_bad_size_is_rejected(size: int) -> None:
    bad = note(b"Xen", 18, bytes(size))
    with pytest.raises(KernelFormatError, match=rf"{size}-byte descriptor; the entry address must be 4 or 8"):
        load_kernel(simple_kernel(extra_notes=bad))


def test_pvh_entry_above_4g_is_rejected() -> None:
    with pytest.raises(KernelFormatError, match="not below 4 GiB"):
        load_kernel(simple_kernel(pvh_entry=0x1_0000_0000))


def test_note_running_past_its_segment_is_rejected() -> None:
    broken = struct.pack("<III", 4, 64, 18) + b"Xen\0" + bytes(8)
    with pytest.raises(ElfFormatError, match="runs past the end"):
        load_kernel(simple_kernel(extra_notes=broken))


def test_bad_magic_is_rejected() -> None:
    image = bytearray(simple_kernel())
    image[1:4] = b"XYZ"
    with pytest.raises(KernelFormatError, match="vmboot accepts"):
        load_kernel(bytes(image))
    with pytest.raises(ElfFormatError, match="bad ELF magic"):
        ElfKernel(bytes(image))


def test_big_endian_and_32_bit_elf_are_rejected_with_what_they_are() -> None:
    be = build_elf(ElfSpec(segments=[Segment(data=b"x" * 16, paddr=0x100000)], entry=0x100000,
                           ident=b"\x7fELF\x02\x02\x01" + bytes(9)))
    with pytest.raises(KernelFormatError, match=r"ELF 64-bit big-endian .*vmboot accepts .*ELF64 x86-64"):
        load_kernel(be)
    elf32 = b"\x7fELF\x01\x01\x01" + bytes(9) + struct.pack("<HH", 2, 3) + bytes(40)
    with pytest.raises(KernelFormatError, match=r"ELF 32-bit little-endian i386.*vmboot accepts"):
        load_kernel(elf32)


def test_bad_phoff_is_rejected() -> None:
    image = build_elf(ElfSpec(segments=[Segment(data=b"x" * 64, paddr=0x100000)], entry=0x100000,
                              phoff=1 << 40))
    with pytest.raises(ElfFormatError, match=r"program header table \(e_phoff=0x10000000000"):
        load_kernel(image)


def test_overlapping_segments_are_rejected() -> None:
    image = build_elf(ElfSpec(segments=[
        Segment(data=b"a" * 0x2000, paddr=0x100000),
        Segment(data=b"b" * 0x100, paddr=0x101800),
    ], entry=0x100000))
    with pytest.raises(KernelFormatError,
                       match=r"segments 0 \[0x100000, 0x102000\) and 1 \[0x101800, 0x101900\) overlap"):
        load_kernel(image)


def test_overlap_through_bss_is_rejected() -> None:
    image = build_elf(ElfSpec(segments=[
        Segment(data=b"a" * 0x100, paddr=0x100000, memsz=0x3000),
        Segment(data=b"b" * 0x100, paddr=0x102000),
    ], entry=0x100000))
    with pytest.raises(KernelFormatError, match="overlap"):
        load_kernel(image)


@pytest.mark.parametrize("entry", [0x0FFFFF, 0x104000, 0x200000000])
def test_entry_outside_every_segment_is_rejected(entry: int) -> None:
    with pytest.raises(KernelFormatError, match=rf"e_entry {entry:#x} lies outside every PT_LOAD"):
        load_kernel(simple_kernel(entry=entry))


def test_pvh_entry_outside_every_segment_is_rejected() -> None:
    with pytest.raises(KernelFormatError, match=r"PVH entry .*0x500000 lies outside every PT_LOAD"):
        load_kernel(simple_kernel(pvh_entry=0x500000))


def test_entry_in_bss_is_inside_the_segment() -> None:
    kernel = ElfKernel(simple_kernel(entry=0x103800))  # file part ends at 0x103000, bss at 0x104000
    assert kernel.entry_point == 0x103800


def test_filesz_larger_than_memsz_is_rejected() -> None:
    image = build_elf(ElfSpec(segments=[Segment(data=b"x" * 0x100, paddr=0x100000, memsz=0x80)],
                              entry=0x100000))
    with pytest.raises(KernelFormatError, match="p_filesz 0x100 is larger than p_memsz 0x80"):
        load_kernel(image)


def test_segment_data_outside_the_file_is_rejected() -> None:
    image = build_elf(ElfSpec(segments=[Segment(data=b"x" * 0x100, paddr=0x100000, filesz=0x10000,
                                                 memsz=0x10000)], entry=0x100000))
    with pytest.raises(ElfFormatError, match=r"segment 0 .* lies outside the file"):
        load_kernel(image)


def test_no_loadable_segment_is_rejected() -> None:
    image = build_elf(ElfSpec(segments=[Segment(type=PT_NOTE, data=pvh_note(0x1000), paddr=0)],
                              entry=0x1000))
    with pytest.raises(KernelFormatError, match="no PT_LOAD segment"):
        load_kernel(image)


def test_shared_object_is_rejected() -> None:
    image = build_elf(ElfSpec(segments=[Segment(data=b"x" * 16, paddr=0x100000)], entry=0x100000,
                              e_type=3))
    with pytest.raises(UnsupportedKernelError, match=r"e_type=3; only an executable \(ET_EXEC"):
        load_kernel(image)


def test_truncation_anywhere_raises_only_vmboot_errors() -> None:
    """Every prefix of a valid kernel (cut inside the ELF header, the program headers, the
    segment bytes, the notes) is refused with a VmbootError; the whole file loads."""
    image = simple_kernel(size=0x200, bss=0x100, pvh_entry=0x100010,
                          extra_notes=note(b"GNU", 3, b"\xAB" * 20))
    kernel = load_kernel(image)
    assert isinstance(kernel, ElfKernel)
    assert kernel.pvh_entry == 0x100010
    for cut in range(len(image)):
        with pytest.raises(VmbootError):
            load_kernel(image[:cut])


def test_short_elf_prefix_says_truncated() -> None:
    with pytest.raises(ElfFormatError, match="truncated ELF header: 10 bytes, need 64"):
        load_kernel(simple_kernel()[:10])


# -- placement and refusals ---------------------------------------------------------------------


def test_segment_beyond_ram_is_refused_and_nothing_is_written() -> None:
    image = simple_kernel(entry=MEM - 0x1000, paddr=MEM - 0x1000, size=0x800, bss=0x1000)
    kernel = ElfKernel(image)
    with fresh_vm() as vm:
        with pytest.raises(LayoutError, match=r"kernel segment 0 \(PT_LOAD\) .* does not fit in guest RAM"):
            kernel.prepare(vm, BootOptions(cmdline="x", initrd=b"abc"))
        assert vm.read(0, MEM) == bytes(MEM)


@pytest.mark.parametrize("entry", ["pvh", "elf64"])
def test_segment_over_boot_data_is_refused_and_nothing_is_written(entry: str) -> None:
    # A segment over the zero page (elf64) or over hvm_start_info (pvh).
    at = 0x90000 if entry == "elf64" else 0x6000
    image = simple_kernel(entry=at, paddr=at, size=0x100, bss=0, pvh_entry=at)
    with fresh_vm() as vm:
        with pytest.raises(LayoutError, match="overlaps"):
            ElfKernel(image).prepare(vm, BootOptions(entry=entry))  # type: ignore[arg-type]
        assert vm.read(0, MEM) == bytes(MEM)


def test_cmdline_limit_is_command_line_size() -> None:
    kernel = ElfKernel(simple_kernel())
    with fresh_vm() as vm:
        kernel.plan(vm, BootOptions(cmdline="a" * 2047))
        with pytest.raises(CmdlineError, match=r"2048 bytes is longer than .* 2047"):
            kernel.plan(vm, BootOptions(cmdline="a" * 2048))


def test_unknown_entry_and_load_addr_are_refused() -> None:
    kernel = ElfKernel(simple_kernel(pvh_entry=0x100000))
    with fresh_vm() as vm:
        with pytest.raises(UnsupportedKernelError, match="'bzimage64' is not an entry of an ELF vmlinux"):
            kernel.plan(vm, BootOptions(entry="bzimage64"))
        with pytest.raises(BootConfigError, match="entry: 'real' is not one of"):
            kernel.plan(vm, BootOptions(entry="real"))  # type: ignore[arg-type]
        with pytest.raises(BootConfigError, match="loaded at its segments' p_paddr"):
            kernel.plan(vm, BootOptions(load_addr=0x200000))
        with pytest.raises(BootConfigError, match="start_info_gpa: 0x6004 is not 8-byte aligned"):
            kernel.plan(vm, BootOptions(start_info_gpa=0x6004))


# -- what is written ----------------------------------------------------------------------------


def test_elf64_prepare_writes_segments_bss_and_zero_page() -> None:
    image = simple_kernel(entry=0x100040, size=0x3000, bss=0x1800, pvh_entry=0x100000)
    kernel = ElfKernel(image)
    initrd = bytes(range(251)) * 40
    with fresh_vm(fill=0xEE) as vm:
        plan = kernel.prepare(vm, BootOptions(cmdline="console=ttyS0 x=1", initrd=initrd,
                                              entry="elf64"))
        assert type(plan) is BootPlan and plan.entry_mode == "elf64"
        assert plan.entry_gpa == 0x100040 and plan.load_addr == 0x100000
        assert plan.kernel_end == 0x100000 + 0x3000 + 0x1800
        assert vm.read(0x100000, 0x3000) == bytes((i * 7 + 3) & 0xFF for i in range(0x3000))
        assert vm.read(0x103000, 0x1800) == bytes(0x1800)  # bss zeroed over the 0xEE fill
        assert vm.read(0x104800, 1) == b"\xEE"  # and not one byte further
        zp = vm.read(plan.zero_page_gpa, bp.BOOT_PARAMS_SIZE)

        def u16(off: int) -> int:
            return int(struct.unpack_from("<H", zp, off)[0])

        def u32(off: int) -> int:
            return int(struct.unpack_from("<I", zp, off)[0])

        assert u16(0x1FE) == 0xAA55
        assert zp[0x202:0x206] == b"HdrS"
        assert u16(0x206) == 0x020C
        assert zp[0x210] == 0xFF
        assert u32(0x230) == 0x1000000  # kernel_alignment, as Firecracker
        assert u32(0x228) == plan.cmdline_gpa and u32(0x0C8) == 0
        assert u32(0x218) == plan.initrd_gpa and u32(0x21C) == len(initrd)
        e820 = default_e820_map(0, MEM)
        assert zp[0x1E8] == len(e820)
        for i, e in enumerate(e820):
            assert struct.unpack_from("<QQI", zp, 0x2D0 + 20 * i) == (e.addr, e.size, e.type)
        assert vm.read(plan.cmdline_gpa, 18) == b"console=ttyS0 x=1\0"
        assert plan.initrd_gpa is not None
        assert vm.read(plan.initrd_gpa, len(initrd)) == initrd
        vcpu = vm.create_vcpu(0)
        plan.configure_vcpu(vcpu)
        regs = vcpu.get_registers([Register.RIP, Register.RSI, Register.EFER, Register.CR0])
        assert regs[Register.RIP] == 0x100040 and regs[Register.RSI] == plan.zero_page_gpa
        assert regs[Register.EFER] & cr.EFER_LMA and regs[Register.CR0] & cr.CR0_PG
        assert vcpu.get_segment(SegmentRegister.CS).selector == bp.BOOT_CS


def test_pvh_prepare_writes_start_info_modlist_memmap() -> None:
    image = simple_kernel(entry=0x100000, pvh_entry=0x100200, size=0x2000, bss=0x1000)
    initrd = b"initrd!" * 1000
    e820 = default_e820_map(0, MEM)
    with fresh_vm() as vm:
        plan = ElfKernel(image).prepare(vm, BootOptions(cmdline=b"pvh cmdline", initrd=initrd))
        assert isinstance(plan, PvhBootPlan) and plan.entry_mode == "pvh"
        assert plan.entry_gpa == 0x100200
        info = HvmStartInfo.unpack(vm.read(plan.start_info_gpa, HvmStartInfo.SIZE))
        assert info == plan.start_info
        assert plan.start_info_gpa == 0x6000
        assert info.magic == XEN_HVM_START_MAGIC_VALUE == 0x336EC578
        assert info.version == 1 and info.flags == 0 and info.rsdp_paddr == 0
        assert info.nr_modules == 1 and info.modlist_paddr == 0x6040
        assert info.memmap_paddr == 0x7000 and info.memmap_entries == len(e820)
        assert vm.read(info.cmdline_paddr, 12) == b"pvh cmdline\0"
        mod = HvmModlistEntry.unpack(vm.read(info.modlist_paddr, HvmModlistEntry.SIZE))
        assert mod == HvmModlistEntry(plan.initrd_gpa or -1, len(initrd), 0, 0)
        assert vm.read(mod.paddr, mod.size) == initrd
        assert mod.paddr % 0x1000 == 0 and mod.paddr + mod.size <= MEM
        memmap = [HvmMemmapEntry.unpack(vm.read(info.memmap_paddr + 24 * i, 24))
                  for i in range(info.memmap_entries)]
        assert memmap == [HvmMemmapEntry(e.addr, e.size, int(e.type), 0) for e in e820]
        # the vCPU: 32-bit protected mode, paging off, EBX = start info
        vcpu = vm.create_vcpu(0)
        plan.configure_vcpu(vcpu)
        regs = vcpu.get_registers([Register.CR0, Register.CR4, Register.EFER, Register.RBX,
                                   Register.RIP, Register.RFLAGS, Register.CR3])
        assert regs == {Register.CR0: cr.CR0_PE | cr.CR0_ET, Register.CR4: 0, Register.EFER: 0,
                        Register.RBX: 0x6000, Register.RIP: 0x100200, Register.RFLAGS: 0x2,
                        Register.CR3: 0}
        cs = vcpu.get_segment(SegmentRegister.CS)
        assert (cs.selector, cs.db, cs.l, cs.base, cs.limit) == (0x08, True, False, 0, 0xFFFFFFFF)
        for sreg in (SegmentRegister.DS, SegmentRegister.ES, SegmentRegister.SS):
            seg = vcpu.get_segment(sreg)
            assert (seg.selector, seg.db, seg.base, seg.limit) == (0x18, True, 0, 0xFFFFFFFF)
        assert vm.read(plan.gdt_gpa, len(boot_gdt())) == boot_gdt()
        assert vm.read(0x20000, 0x1000) == bytes(0x1000)  # no page tables for PVH


def test_pvh_without_initrd_has_no_modules() -> None:
    with fresh_vm() as vm:
        plan = ElfKernel(simple_kernel(pvh_entry=0x100000)).prepare(vm, BootOptions())
        assert isinstance(plan, PvhBootPlan)
        info = HvmStartInfo.unpack(vm.read(0x6000, HvmStartInfo.SIZE))
        assert (info.nr_modules, info.modlist_paddr) == (0, 0)
        assert vm.read(info.cmdline_paddr, 1) == b"\0"


def test_pvh_start_info_elsewhere() -> None:
    with fresh_vm() as vm:
        plan = ElfKernel(simple_kernel(pvh_entry=0x100000)).prepare(
            vm, BootOptions(start_info_gpa=0x50000, initrd=b"m" * 10))
        assert isinstance(plan, PvhBootPlan)
        assert (plan.start_info_gpa, plan.modlist_gpa, plan.memmap_gpa) == (0x50000, 0x50040, 0x51000)
        assert struct.unpack("<I", vm.read(0x50000, 4))[0] == XEN_HVM_START_MAGIC_VALUE


def test_start_info_structures_pack_to_their_c_sizes() -> None:
    assert len(HvmStartInfo().pack()) == 56
    assert len(HvmModlistEntry(1, 2).pack()) == 32
    assert len(HvmMemmapEntry(1, 2, 3).pack()) == 24
    info = HvmStartInfo(nr_modules=2, modlist_paddr=0x1234, cmdline_paddr=0x5678,
                        memmap_paddr=0x9ABC, memmap_entries=7)
    assert HvmStartInfo.unpack(info.pack()) == info
    assert struct.unpack_from("<II", info.pack(), 0) == (0x336EC578, 1)
    with pytest.raises(BootConfigError, match=r"hvm_start_info.nr_modules: 4294967296 is not"):
        HvmStartInfo(nr_modules=1 << 32).pack()


# -- describe ---------------------------------------------------------------------------------------


def test_describe_elf_kernel_is_json_and_finds_the_version_in_loaded_bytes() -> None:
    banner = b"Linux version 9.8.7-test (me@here) #1\n\0"
    body = b"\0" * 0x100 + banner + b"\0" * 0x100
    image = build_elf(ElfSpec(segments=[
        Segment(data=body, paddr=0x200000, memsz=0x1000),
        Segment(type=PT_NOTE, data=pvh_note(0x200010, 4), paddr=0, flags=4, align=4),
    ], entry=0x200000))
    kernel = ElfKernel(image)
    info = json.loads(json.dumps(describe_elf_kernel(kernel)))
    assert info["kernel_version"] == "Linux version 9.8.7-test (me@here) #1"
    assert info["e_entry"] == 0x200000 and info["pvh_entry"] == 0x200010
    assert info["default_entry"] == "pvh"
    assert info["entries"]["pvh"]["usable"] and info["entries"]["elf64"]["usable"]
    load = info["segments"][0]
    assert (load["type"], load["paddr"], load["filesz"], load["memsz"], load["flags"]) == (
        "LOAD", 0x200000, len(body), 0x1000, "R E")
    assert info["segments"][1]["type"] == "NOTE"
    assert info["notes"] == [{"name": "Xen", "type": 18, "desc_size": 4, "source": "segment 1"}]
    text = "\n".join(elf_kernel_summary(kernel))
    assert "Linux version 9.8.7-test" in text and "0x200010" in text


def test_version_outside_loaded_segments_is_not_reported() -> None:
    image = simple_kernel() + b"Linux version 1.2.3 (in no segment)\0"
    assert ElfKernel(image).kernel_version is None



@pytest.mark.parametrize("kwargs", [
    {"cmdline_gpa": -1, "cmdline_len": 1},
    {"cmdline_gpa": 0x91000, "cmdline_len": 1, "initrd_gpa": -4096, "initrd_size": 4096},
    {"cmdline_gpa": 0x91000, "cmdline_len": 1, "e820": "negative"},
], ids=["cmdline-neg", "initrd-neg", "e820-neg"])
def test_elf_zero_page_refuses_out_of_range_values(kwargs: dict[str, object]) -> None:
    """The ELF zero page goes through the same checked helpers as the bzImage's."""
    from vmboot.linux import E820Entry

    kernel = load_kernel(simple_kernel())
    assert isinstance(kernel, ElfKernel)
    if kwargs.get("e820") == "negative":
        kwargs = {**kwargs, "e820": [E820Entry(-1, 0x1000)]}
    with pytest.raises(VmbootError):
        kernel.build_zero_page(**kwargs)  # type: ignore[arg-type]
