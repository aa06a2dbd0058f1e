"""Real kernels: header values against independent readings, and prepare() read back field by field."""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import pytest

from bzimage_builder import u32, u64
from conftest import missing, require_tool, shared_kernel_file
from vmboot.hv import DescriptorTable, MemoryVM, Register, SegmentRegister
from vmboot.linux import BootOptions, BootPlan, BzImage, E820Entry, load_kernel
from vmboot.linux import bootparam as bp
from vmboot.x86.gdt import decode_descriptor
from vmboot.x86.paging import PTE_PRESENT, PTE_PS, PTE_WRITABLE

MiB = 1 << 20


def _file_output(path: Path) -> str:
    require_tool("file", "file")
    return subprocess.run(["file", "-b", str(path)], capture_output=True, text=True,
                          check=True).stdout


def _kernels() -> list[Path]:
    out = [shared_kernel_file("tiny-bzImage"), shared_kernel_file("tiny-bzImage-lz4")]
    return out


def _debian_kernel() -> Path:
    from debian_kernel import debian_kernel, skip_reason

    path = debian_kernel()
    if path is None:
        missing("the Debian cloud kernel", skip_reason())
    return path


@pytest.fixture(params=["tiny-bzImage", "tiny-bzImage-lz4", "debian"])
def real_kernel(request: pytest.FixtureRequest) -> Path:
    if request.param == "debian":
        return _debian_kernel()
    return shared_kernel_file(request.param)


def test_header_matches_independent_reading(real_kernel: Path) -> None:
    """Compare with `file` (libmagic reads the same bytes its own way) and raw struct reads."""
    raw = real_kernel.read_bytes()
    k = load_kernel(real_kernel)
    assert isinstance(k, BzImage)
    h = k.setup_header
    desc = _file_output(real_kernel)
    assert "Linux kernel x86 boot executable" in desc
    m = re.search(r"version (.+?)(?:, RO-rootFS|, RW-rootFS|, swap_dev|$)", desc)
    assert m is not None, desc
    assert k.kernel_version is not None
    assert m.group(1).strip() == k.kernel_version.strip()
    # raw little-endian reads at the documented offsets (boot.rst table)
    assert raw[0x1F1] == h.setup_sects
    assert struct.unpack_from("<H", raw, 0x1FE)[0] == 0xAA55 == h.boot_flag
    assert raw[0x202:0x206] == b"HdrS"
    assert struct.unpack_from("<H", raw, 0x206)[0] == h.version
    assert u32(raw, 0x22C) == h.initrd_addr_max
    assert u32(raw, 0x230) == h.kernel_alignment
    assert u32(raw, 0x238) == h.cmdline_size
    assert u64(raw, 0x258) == h.pref_address
    assert u32(raw, 0x260) == h.init_size
    # the version string sits at kernel_version + 0x200
    ptr = struct.unpack_from("<H", raw, 0x20E)[0] + 0x200
    assert raw[ptr:].split(b"\0", 1)[0].decode() == k.kernel_version
    # payload: the protected-mode part starts after (setup_sects + 1) sectors
    assert bytes(k.payload()[:64]) == raw[(h.setup_sects + 1) * 512 :][:64]
    assert k.check_64bit_entry().ok
    assert k.compression in {"gzip", "xz", "lz4", "zstd", "lzma", "bzip2", "lzo"}


def test_tiny_kernel_known_facts() -> None:
    """Facts from ../shared/kernels/README.md about the tiny kernel."""
    k = load_kernel(shared_kernel_file("tiny-bzImage"))
    assert isinstance(k, BzImage)
    h = k.setup_header
    assert h.version_string == "2.15"
    assert h.pref_address == 0x1000000
    assert k.default_load_address() == 0x1000000
    assert k.entry_point(k.default_load_address()) == 0x1000200
    assert h.relocatable
    assert k.compression == "lz4"
    assert k.kernel_version is not None and k.kernel_version.startswith("6.1.192 ")
    assert abs(h.init_size - 5.7 * MiB) < 0.1 * MiB


def _read_zero_page(vm: MemoryVM, gpa: int) -> bytes:
    return vm.read(gpa, bp.BOOT_PARAMS_SIZE)


def test_prepare_and_read_back_every_field(real_kernel: Path) -> None:
    k = load_kernel(real_kernel)
    assert isinstance(k, BzImage)
    initrd = bytes(range(256)) * 40 + b"END!"
    cmdline = "console=ttyS0 reboot=k panic=-1 vmboot.test=1"
    with MemoryVM(256 * MiB) as vm:
        plan = k.prepare(vm, BootOptions(cmdline=cmdline, initrd=initrd))
        assert isinstance(plan, BootPlan)
        zp = _read_zero_page(vm, plan.zero_page_gpa)
        h = k.setup_header
        # the setup header copied in verbatim, except the fields a loader writes
        written = {bp.HDR_TYPE_OF_LOADER, *range(bp.HDR_RAMDISK_IMAGE, bp.HDR_RAMDISK_IMAGE + 8),
                   *range(bp.HDR_CMD_LINE_PTR, bp.HDR_CMD_LINE_PTR + 4)}
        for off in range(bp.SETUP_HEADER_OFFSET, h.header_end):
            if off not in written:
                assert zp[off] == k.data[off], f"zero page byte {off:#x} differs from the image"
        assert zp[bp.HDR_TYPE_OF_LOADER] == 0xFF
        assert u32(zp, bp.HDR_CMD_LINE_PTR) == plan.cmdline_gpa
        assert u32(zp, bp.BP_EXT_CMD_LINE_PTR) == 0
        assert vm.read(plan.cmdline_gpa, len(cmdline) + 1) == cmdline.encode() + b"\0"
        assert u32(zp, bp.HDR_RAMDISK_IMAGE) == plan.initrd_gpa
        assert u32(zp, bp.HDR_RAMDISK_SIZE) == len(initrd)
        assert u32(zp, bp.BP_EXT_RAMDISK_IMAGE) == 0 and u32(zp, bp.BP_EXT_RAMDISK_SIZE) == 0
        assert plan.initrd_gpa is not None
        assert vm.read(plan.initrd_gpa, len(initrd)) == initrd
        # initrd: page aligned, below initrd_addr_max and RAM end, clear of the kernel
        assert plan.initrd_gpa % 4096 == 0
        assert plan.initrd_gpa + len(initrd) - 1 <= h.initrd_addr_max
        assert plan.initrd_gpa >= plan.kernel_end or plan.initrd_gpa + len(initrd) <= plan.load_addr
        # E820 as written
        n = zp[bp.BP_E820_ENTRIES]
        table = [E820Entry.unpack(zp[bp.BP_E820_TABLE + 20 * i : bp.BP_E820_TABLE + 20 * (i + 1)])
                 for i in range(n)]
        assert tuple(table) == plan.e820
        assert sum(e.size for e in table if e.type == 1) == 256 * MiB - (0x100000 - 0x9FC00)
        # everything else zero: below the header, and after the E820 table
        assert zp[: bp.BP_EXT_RAMDISK_IMAGE] == bytes(bp.BP_EXT_RAMDISK_IMAGE)
        assert zp[bp.BP_EXT_CMD_LINE_PTR + 4 : bp.BP_E820_ENTRIES] == bytes(
            bp.BP_E820_ENTRIES - bp.BP_EXT_CMD_LINE_PTR - 4)
        assert zp[h.header_end : bp.BP_E820_TABLE] == bytes(bp.BP_E820_TABLE - h.header_end)
        assert zp[bp.BP_E820_TABLE + 20 * n :] == bytes(bp.BOOT_PARAMS_SIZE - bp.BP_E820_TABLE - 20 * n)
        # the kernel payload at the load address, and the init_size tail zeroed
        payload = k.payload()
        assert vm.read(plan.load_addr, len(payload)) == bytes(payload)
        assert plan.load_addr % h.kernel_alignment == 0
        assert plan.entry_gpa == plan.load_addr + 0x200
        tail = plan.kernel_end - plan.load_addr - len(payload)
        if tail:
            assert vm.read(plan.load_addr + len(payload), tail) == bytes(tail)


def test_configure_vcpu_sets_the_64bit_contract() -> None:
    k = load_kernel(shared_kernel_file("tiny-bzImage"))
    with MemoryVM(128 * MiB) as vm:
        plan = k.prepare(vm, BootOptions(cmdline="x", address_space_gib=2))
        assert isinstance(plan, BootPlan)
        vcpu = vm.create_vcpu(0)
        plan.configure_vcpu(vcpu)
        regs = vcpu.get_registers(list(Register))
        assert regs[Register.RIP] == plan.entry_gpa
        assert regs[Register.RSI] == plan.zero_page_gpa
        assert regs[Register.RSP] == plan.stack_top_gpa == 128 * MiB - 4096
        assert regs[Register.RFLAGS] & (1 << 9) == 0
        assert regs[Register.CR0] & 0x80000001 == 0x80000001
        assert regs[Register.CR4] & (1 << 5)
        assert regs[Register.EFER] & 0x500 == 0x500
        assert regs[Register.CR3] == plan.paging_base
        for r in (Register.RAX, Register.RBX, Register.RDI, Register.RBP, Register.R15):
            assert regs[r] == 0
        cs = vcpu.get_segment(SegmentRegister.CS)
        assert cs.selector == 0x10 and cs.l and not cs.db and cs.present and cs.type & 0x8
        for seg in (SegmentRegister.DS, SegmentRegister.ES, SegmentRegister.SS):
            ds = vcpu.get_segment(seg)
            assert ds.selector == 0x18 and ds.present and ds.type & 0x2 and not ds.type & 0x8
        # the GDT in guest memory holds the same descriptors the registers were loaded with
        gdtr: DescriptorTable = vcpu.get_gdt()
        gdt = vm.read(gdtr.base, gdtr.limit + 1)
        assert decode_descriptor(u64(gdt, 0x10), 0x10) == cs
        assert decode_descriptor(u64(gdt, 0x18), 0x18) == vcpu.get_segment(SegmentRegister.DS)
        # page tables: PML4[0] -> PDPT, PDPT[i] -> PD_i, every PD entry maps itself with 2 MiB
        pml4 = vm.read(plan.paging_base, 4096)
        pdpt_gpa = u64(pml4, 0) & ~0xFFF
        assert u64(pml4, 0) & (PTE_PRESENT | PTE_WRITABLE) == PTE_PRESENT | PTE_WRITABLE
        assert u64(pml4, 8) == 0
        pdpt = vm.read(pdpt_gpa, 4096)
        for gib in range(2):
            pd = vm.read(u64(pdpt, 8 * gib) & ~0xFFF, 4096)
            for j in range(512):
                e = u64(pd, 8 * j)
                assert e & PTE_PS and e & PTE_PRESENT
                assert e & ~0xFFF & ~PTE_PS == (gib << 30) + (j << 21)
        assert u64(pdpt, 16) == 0  # nothing beyond address_space_gib
