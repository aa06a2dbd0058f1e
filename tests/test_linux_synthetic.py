"""Synthetic bzImages for protocols 2.06..2.15, every refusal, and nothing half-written."""

from __future__ import annotations

import numpy as np
import pytest

from bzimage_builder import BzImageSpec, build_bzimage, u32
from vmboot.errors import (
    BootConfigError,
    CmdlineError,
    KernelFormatError,
    KernelImageError,
    LayoutError,
    UnsupportedKernelError,
    VmbootError,
)
from vmboot.hv import MemoryVM
from vmboot.linux import BootOptions, BootPlan, BzImage, E820Entry, load_bzimage, load_kernel
from vmboot.linux import bootparam as bp
from vmboot.linux.options import EntryChoice

MiB = 1 << 20
GiB = 1 << 30
VERSIONS = list(range(0x0206, 0x0210))


def _digest(vm: MemoryVM) -> int:
    """Non-zero bytes in guest RAM (a fresh MemoryVM is all zero, so 0 means untouched)."""
    return int(np.count_nonzero(np.frombuffer(vm.memory.mapping, dtype=np.uint64)))


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"2.{v & 0xFF:02d}")
def test_parse_every_protocol_version(version: int) -> None:
    img = build_bzimage(BzImageSpec(version=version))
    k = load_bzimage(img)
    h = k.setup_header
    assert h.version == version
    assert k.kernel_version == "6.99.0-synthetic (test@vmboot) #1"
    assert h.is_defined("cmdline_size")
    assert h.effective_cmdline_size == 2047
    assert h.is_defined("xloadflags") == (version >= 0x020C)
    assert h.is_defined("pref_address") == (version >= 0x020A)
    if version >= 0x020A:
        assert k.default_load_address() == 0x1000000
        assert k.init_size == 0x400000
    else:
        assert k.default_load_address() == bp.HIGH_LOAD_ADDRESS  # LOADED_HIGH, no pref_address
        assert k.init_size == len(k.payload())
    if version >= 0x0208:
        assert k.compression == "lz4"
    else:
        assert k.compression == "unknown"
    assert h.header_end == bp.SETUP_HEADER_JUMP_END + (img[0x201])


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"2.{v & 0xFF:02d}")
def test_prepare_per_protocol_version(version: int) -> None:
    k = load_bzimage(build_bzimage(BzImageSpec(version=version)))
    with MemoryVM(64 * MiB) as vm:
        before = _digest(vm)
        if version < bp.MIN_64BIT_PROTOCOL:
            with pytest.raises(UnsupportedKernelError, match=r"older than 2\.12"):
                k.prepare(vm, BootOptions(cmdline="a"))
            assert _digest(vm) == before
            return
        plan = k.prepare(vm, BootOptions(cmdline="a b c", initrd=b"\x01" * 5000))
        assert isinstance(plan, BootPlan)
        zp = vm.read(plan.zero_page_gpa, 4096)
        assert u32(zp, bp.HDR_CMD_LINE_PTR) == plan.cmdline_gpa == plan.zero_page_gpa + 0x1000
        assert zp[0x202:0x206] == b"HdrS"
        assert u32(zp, 0x218) == plan.initrd_gpa and u32(zp, 0x21C) == 5000
        assert vm.read(plan.entry_gpa, 4) == b"\xf4\xeb\xfd\x90"


def test_zimage_low_load_default() -> None:
    k = load_bzimage(build_bzimage(BzImageSpec(version=0x0206, loadflags=0)))
    assert k.default_load_address() == bp.LOW_LOAD_ADDRESS


def test_setup_sects_zero_means_four() -> None:
    k = load_bzimage(build_bzimage(BzImageSpec(setup_sects=0)))
    assert k.setup_header.setup_size == 5 * 512
    assert bytes(k.payload()[0x200:0x204]) == b"\xf4\xeb\xfd\x90"


# -- refusals: each leaves guest memory untouched ------------------------------------------------


def _refuse(k: BzImage, opts: BootOptions, exc: type[VmbootError], match: str,
            memory: int = 64 * MiB) -> None:
    with MemoryVM(memory) as vm:
        before = _digest(vm)
        with pytest.raises(exc, match=match):
            k.prepare(vm, opts)
        assert _digest(vm) == before, "a refused prepare() wrote to guest memory"


def test_refuses_cmdline_longer_than_cmdline_size() -> None:
    k = load_bzimage(build_bzimage(BzImageSpec(cmdline_size=16)))
    with MemoryVM(64 * MiB) as vm:
        k.prepare(vm, BootOptions(cmdline="x" * 16))  # exactly the limit: fine (NUL excluded)
    _refuse(k, BootOptions(cmdline="x" * 17), CmdlineError, r"17 bytes .* cmdline_size 16")


def test_refuses_cmdline_with_nul() -> None:
    _refuse(load_bzimage(build_bzimage()), BootOptions(cmdline="a\0b"), CmdlineError, "NUL")


def test_refuses_initrd_that_does_not_fit() -> None:
    k = load_bzimage(build_bzimage())
    _refuse(k, BootOptions(initrd=bytes(60 * MiB)), LayoutError, "initrd: no free")


def test_refuses_kernel_that_does_not_fit() -> None:
    k = load_bzimage(build_bzimage(BzImageSpec(init_size=64 * MiB)))
    _refuse(k, BootOptions(), LayoutError, r"kernel \[0x1000000, 0x5000000\).* does not fit")


def test_refuses_protocol_too_old() -> None:
    k = load_bzimage(build_bzimage(BzImageSpec(version=0x020B)))
    _refuse(k, BootOptions(), UnsupportedKernelError, r"protocol 2\.11 is older than 2\.12")


def test_refuses_kernel_without_xlf_kernel_64() -> None:
    k = load_bzimage(build_bzimage(BzImageSpec(xloadflags=bp.XLF_CAN_BE_LOADED_ABOVE_4G)))
    _refuse(k, BootOptions(), UnsupportedKernelError, "XLF_KERNEL_64")


def test_refuses_explicit_load_address_for_non_relocatable_kernel() -> None:
    k = load_bzimage(build_bzimage(BzImageSpec(relocatable=0)))
    _refuse(k, BootOptions(load_addr=0x2000000), BootConfigError,
            r"not relocatable.*only be loaded at 0x1000000")
    with MemoryVM(64 * MiB) as vm:
        assert k.prepare(vm, BootOptions(load_addr=0x1000000)).load_addr == 0x1000000


def test_refuses_misaligned_load_address() -> None:
    k = load_bzimage(build_bzimage())
    _refuse(k, BootOptions(load_addr=0x1100000), BootConfigError,
            r"0x1100000 is not a multiple .* 0x200000.*0x1000000 and 0x1200000")


@pytest.mark.parametrize(
    ("opts", "pattern"),
    [
        (BootOptions(zero_page_gpa=0x1000000), r"kernel .* overlaps zero page|zero page .* overlaps"),
        (BootOptions(cmdline_gpa=0x20100), r"overlaps"),
        (BootOptions(paging_base=0x90000), r"page tables .* overlaps|overlaps page tables"),
        (BootOptions(paging_base=0x0), r"overlaps"),  # the GDT at 0x500
        (BootOptions(stack_top_gpa=0x1004000), r"overlaps"),
        (BootOptions(initrd=b"x" * 100, initrd_gpa=0x1200000), r"initrd .* overlaps|overlaps initrd"),
        (BootOptions(initrd=b"x" * 100, initrd_gpa=0x90800), r"overlaps"),
    ],
    ids=["zero-page/kernel", "cmdline/page-tables", "page-tables/zero-page", "page-tables/gdt",
         "stack/kernel", "initrd/kernel", "initrd/zero-page"],
)
def test_refuses_overlapping_regions(opts: BootOptions, pattern: str) -> None:
    _refuse(load_bzimage(build_bzimage()), opts, LayoutError, pattern)


def test_refuses_regions_outside_ram_and_identity_map() -> None:
    k = load_bzimage(build_bzimage())
    _refuse(k, BootOptions(zero_page_gpa=0x8000000), LayoutError, "does not fit in guest RAM")
    with MemoryVM(2 * GiB) as vm:
        before = _digest(vm)
        with pytest.raises(LayoutError, match=r"must be identity-mapped .* first 1 GiB"):
            k.prepare(vm, BootOptions(load_addr=0x4000_0000, address_space_gib=1))
        assert _digest(vm) == before


def test_refuses_initrd_past_initrd_addr_max() -> None:
    k = load_bzimage(build_bzimage(BzImageSpec(initrd_addr_max=0x3FFFFFF,
                                                xloadflags=bp.XLF_KERNEL_64)))
    _refuse(k, BootOptions(initrd=b"x" * 8192, initrd_gpa=0x3FFF000), LayoutError,
            "initrd_addr_max 0x3ffffff")
    with MemoryVM(256 * MiB) as vm:  # automatic placement respects it
        plan = k.prepare(vm, BootOptions(initrd=b"x" * 8192))
        assert plan.initrd_gpa == 0x4000000 - 8192


def test_refuses_initrd_gpa_without_initrd() -> None:
    _refuse(load_bzimage(build_bzimage()), BootOptions(initrd_gpa=0x2000000), BootConfigError,
            "without an initrd")


def test_refuses_bad_scalars() -> None:
    k = load_bzimage(build_bzimage())
    _refuse(k, BootOptions(address_space_gib=0), BootConfigError, r"outside 1\.\.512")
    _refuse(k, BootOptions(address_space_gib=513), BootConfigError, r"outside 1\.\.512")
    _refuse(k, BootOptions(zero_page_gpa=0x90010), BootConfigError, "not 4 KiB aligned")
    _refuse(k, BootOptions(stack_top_gpa=0x3000008), BootConfigError, "16-byte aligned")
    _refuse(k, BootOptions(load_addr=-4096), BootConfigError, "not a guest-physical address")


def test_refuses_bad_e820() -> None:
    k = load_bzimage(build_bzimage())
    overlapping = [E820Entry(0, 0x9F000), E820Entry(0x9E000, 0x1000, 2)]
    _refuse(k, BootOptions(e820=overlapping), BootConfigError, "entries overlap")


# -- placement rules --------------------------------------------------------------------------


def test_default_layout_matches_the_seed() -> None:
    k = load_bzimage(build_bzimage())
    with MemoryVM(64 * MiB) as vm:
        plan = k.prepare(vm, BootOptions(cmdline="hello", initrd=b"i" * 10000))
    assert isinstance(plan, BootPlan)
    assert plan.zero_page_gpa == 0x90000
    assert plan.cmdline_gpa == 0x91000
    assert plan.paging_base == 0x20000
    assert plan.address_space_gib == 4
    assert plan.stack_top_gpa == 64 * MiB - 4096
    assert plan.load_addr == 0x1000000
    # initrd: highest page-aligned spot below RAM end, clear of every region (the stack's reserve)
    assert plan.initrd_gpa is not None and plan.initrd_gpa % 4096 == 0
    assert plan.initrd_gpa + 10000 <= 64 * MiB
    for r in plan.regions:
        if r.name != "initrd":
            assert not (r.start < plan.initrd_gpa + 10000 and plan.initrd_gpa < r.end), r


def test_relocatable_default_is_aligned_up() -> None:
    k = load_bzimage(build_bzimage(BzImageSpec(pref_address=0x1100000)))
    with MemoryVM(64 * MiB) as vm:
        assert k.prepare(vm).load_addr == 0x1200000


def test_lesser_alignment_is_reported_in_kernel_alignment() -> None:
    """boot.rst: a loader using less than kernel_alignment (but >= min_alignment) updates it."""
    k = load_bzimage(build_bzimage(BzImageSpec(kernel_alignment=0x1000000, min_alignment=21)))
    with MemoryVM(128 * MiB) as vm:
        plan = k.prepare(vm, BootOptions(load_addr=0x1200000))
        assert isinstance(plan, BootPlan)
        zp = vm.read(plan.zero_page_gpa, 4096)
    assert u32(zp, 0x230) == 0x200000


def test_ext_fields_above_4g() -> None:
    k = load_bzimage(build_bzimage())
    with MemoryVM(5 * GiB) as vm:  # RAM continues at 4 GiB: [4 GiB, 6 GiB)
        plan = k.prepare(vm, BootOptions(initrd=b"r" * 4096, initrd_gpa=0x1_4000_0000,
                                         cmdline="c"))
        assert isinstance(plan, BootPlan)
        zp = vm.read(plan.zero_page_gpa, 4096)
        assert u32(zp, 0x218) == 0x4000_0000 and u32(zp, bp.BP_EXT_RAMDISK_IMAGE) == 1
        assert vm.read(0x1_4000_0000, 4096) == b"r" * 4096
    no_high = load_bzimage(build_bzimage(BzImageSpec(xloadflags=bp.XLF_KERNEL_64)))
    with MemoryVM(5 * GiB) as vm, pytest.raises(LayoutError, match="initrd_addr_max"):
        no_high.prepare(vm, BootOptions(initrd=b"r" * 4096, initrd_gpa=0x1_4000_0000))


def test_more_than_128_e820_entries_use_setup_data() -> None:
    k = load_bzimage(build_bzimage())
    entries = [E820Entry(0, 0x9FC00), E820Entry(0x9FC00, 0x60400, 2)]
    entries += [E820Entry(0x100000 + i * 0x10000, 0x8000, 1 if i % 2 else 2) for i in range(200)]
    entries.append(E820Entry(0x1000000, 48 * MiB))
    with MemoryVM(64 * MiB) as vm:
        plan = k.prepare(vm, BootOptions(e820=entries, cmdline="e820"))
        assert isinstance(plan, BootPlan)
        zp = vm.read(plan.zero_page_gpa, 4096)
        assert zp[bp.BP_E820_ENTRIES] == 128
        assert plan.setup_data_gpa is not None
        assert int.from_bytes(zp[bp.HDR_SETUP_DATA : bp.HDR_SETUP_DATA + 8], "little") == \
            plan.setup_data_gpa
        hdr = vm.read(plan.setup_data_gpa, 16)
        nxt, typ, length = int.from_bytes(hdr[:8], "little"), u32(hdr, 8), u32(hdr, 12)
        assert (nxt, typ, length) == (0, bp.SETUP_E820_EXT, (len(entries) - 128) * 20)
        body = vm.read(plan.setup_data_gpa + 16, length)
        assert [E820Entry.unpack(body[i : i + 20]) for i in range(0, length, 20)] == entries[128:]
    with pytest.raises(BootConfigError, match="at most 128"):
        k.build_zero_page(0x91000, e820=entries)


# -- malformed images -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda b: b[:0x203], "too short"),
        (lambda b: b[:0x202] + b"HdrX" + b[0x206:], "expected b'HdrS'"),
        (lambda b: b[:0x1FE] + b"\x00\x00" + b[0x200:], "boot_flag"),
        (lambda b: b[:0x206] + b"\x00\x01" + b[0x208:], "predates 2.00"),
        (lambda b: b[: (4 + 1) * 512], "truncated"),
        (lambda b: b[: (4 + 1) * 512 + 0x100], "syssize"),
        (lambda b: b[:0x201] + b"\x7f" + b[0x202:], "setup header end"),
    ],
    ids=["short", "magic", "boot_flag", "old", "no-payload", "syssize", "header-end"],
)
def test_malformed_images(mutate: object, pattern: str) -> None:
    img = build_bzimage()
    bad = mutate(img)  # type: ignore[operator]
    with pytest.raises(KernelImageError, match=pattern):
        load_bzimage(bad)


def test_inconsistent_payload_fields() -> None:
    img = build_bzimage(BzImageSpec(overrides={"payload_length": 0x10_0000}))
    with pytest.raises(KernelFormatError, match=r"payload_offset .* runs past"):
        load_bzimage(img)


def test_load_kernel_names_what_a_wrong_file_looks_like(tmp_path: object) -> None:
    cases = {
        b"\x1f\x8b\x08\x00" + bytes(100): "gzip-compressed",
        b"\x7fELF\x01\x01\x01" + bytes(11) + b"\x03\x00" + bytes(60): "ELF 32-bit little-endian i386",
        b"\x7fELF\x02\x02\x01" + bytes(11) + b"\x00\x3e" + bytes(60): "big-endian",
        b"MZ" + bytes(1000): "PE/COFF",
        b"070701" + bytes(200): "cpio archive",
        b"hello world\n" * 20: "a text file",
        b"": "an empty file",
        bytes(range(256)) * 4: "unrecognised data",
    }
    for data, text in cases.items():
        with pytest.raises(KernelFormatError, match=text):
            load_kernel(data)


@pytest.mark.parametrize("entry", ["pvh", "elf64"])
def test_refuses_elf_entries_for_a_bzimage(entry: EntryChoice) -> None:
    _refuse(load_bzimage(build_bzimage()), BootOptions(entry=entry), UnsupportedKernelError,
            rf"entry '{entry}' cannot be used with a bzImage")
