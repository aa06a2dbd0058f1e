"""Minimal reproducers of the bugs the fuzzers (fuzz/) found: hostile input must raise a
VmbootError, never anything else.

Bugs in modules owned by others are marked ``xfail(strict=True)`` with the reason; when a
fix lands the test XPASSes, which fails under strict: then remove the marker here and
the matching entry in fuzz/known_bugs.py.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

import fuzz_support  # noqa: F401  (puts the repository root on sys.path for ``fuzz``)

# isort: split
from fuzz.seeds import TEXT, build_elf, synthetic_bzimage

from vmboot.debug.orc import OrcTable, UnwindState, kernel_version, orc_step
from vmboot.debug.page_walk import GuestAddressSpace
from vmboot.debug.symtab import SymbolTable
from vmboot.elf import ElfFile
from vmboot.errors import (
    BootConfigError,
    ElfFormatError,
    InitramfsError,
    StackWalkError,
    UsageError,
    VmbootError,
)
from vmboot.hv import MemoryVM
from vmboot.initramfs import read_cpio
from vmboot.linux import BootOptions, BzImage, E820Entry
from vmboot.units import parse_size


# -- vmboot.units -------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["1" * 5000, "1." + "0" * 5000, "1" * 4301 + "M"])
def test_parse_size_huge_digit_string_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


@pytest.mark.parametrize("text", ["\u0661\u0662M", "\uff11\uff12M", "1\u00b2"])
def test_parse_size_takes_ascii_digits_only(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


# -- vmboot.linux ------------------------------------------------------------------------------
@pytest.mark.parametrize("cmdline", ["console=ttyS0 \udcff", "a\ud800"])
def test_cmdline_with_lone_surrogate_is_a_cmdline_error(cmdline: str) -> None:
    kernel = BzImage(synthetic_bzimage())
    with MemoryVM(32 << 20) as vm:
        with pytest.raises(BootConfigError):
            kernel.prepare(vm, BootOptions(cmdline=cmdline))
        assert vm.read(0x90000, 4096) == bytes(4096), "a refused prepare() wrote the zero page"


@pytest.mark.parametrize("kwargs", [
    {"cmdline_gpa": -1},
    {"cmdline_gpa": 0x91000, "initrd_gpa": -4096, "initrd_size": 4096},
    {"cmdline_gpa": 0x91000, "setup_data_gpa": -1},
    {"cmdline_gpa": 0x91000, "setup_data_gpa": 1 << 64},
    {"cmdline_gpa": 0x91000, "kernel_alignment": 1 << 32},
    {"cmdline_gpa": 0x91000, "e820": [E820Entry(-1, 0x1000)]},
], ids=["cmdline-neg", "initrd-neg", "setup-data-neg", "setup-data-2**64", "alignment-2**32",
        "e820-neg"])
def test_build_zero_page_refuses_out_of_range_values(kwargs: dict[str, object]) -> None:
    kernel = BzImage(synthetic_bzimage())
    try:
        kernel.build_zero_page(**kwargs)  # type: ignore[arg-type]
    except VmbootError:
        return
    pytest.fail(f"build_zero_page({kwargs}) accepted an out-of-range value")


# -- vmboot.debug.orc ---------------------------------------------------------------------------
def _orc_elf(ip_bytes: bytes, entry_bytes: bytes, rodata: bytes = b"Linux version 6.1.0\0") -> bytes:
    return build_elf([
        (".text", 1, b"\xcc" * 64, TEXT, 0, 0, 0),
        (".rodata", 1, rodata, TEXT + 0x1000, 0, 0, 0),
        (".orc_unwind_ip", 1, ip_bytes, TEXT + 0x2000, 0, 0, 0),
        (".orc_unwind", 1, entry_bytes, TEXT + 0x3000, 0, 0, 0),
    ])


@pytest.mark.parametrize("ips, entries", [(bytes(6), bytes(6)), (bytes(4), bytes(7))],
                         ids=["ip-size-6", "entry-size-7"])
def test_orc_sections_of_odd_size_are_an_elf_format_error(ips: bytes, entries: bytes) -> None:
    elf = ElfFile(_orc_elf(ips, entries))
    with pytest.raises(ElfFormatError):
        OrcTable.from_elf(elf)


def test_orc_version_banner_with_huge_number() -> None:
    banner = b"Linux version " + b"9" * 5000 + b".1\0"
    elf = ElfFile(_orc_elf(bytes(4), struct.pack("<hhH", 8, 0, 5), banner))
    try:
        kernel_version(banner)
        OrcTable.from_elf(elf)
    except VmbootError:
        pass


@pytest.mark.parametrize("ip, signal", [(0x10, True), (0, False)])
def test_orc_step_below_the_slide_is_a_stack_walk_error(ip: int, signal: bool) -> None:
    table = OrcTable.from_sections(struct.pack("<i", 0), TEXT, struct.pack("<hhH", 8, 0, 5), None, "<t>")
    with MemoryVM(2 << 20) as vm:
        space = GuestAddressSpace(vm, cr3=0, cr4=0, cr0=0)
        with pytest.raises(StackWalkError):
            orc_step(table, space, UnwindState(ip, 0x1000, 0, None, signal), slide=0x1000000)


# -- vmboot.debug.symtab ------------------------------------------------------------------------
@pytest.mark.parametrize("slide", [(1 << 64) - 1, 1 << 63, -(1 << 63) - 1])
def test_symbol_table_slide_outside_int64(slide: int) -> None:
    table = SymbolTable.from_names([TEXT, TEXT + 0x100], [b"a", b"b"], "<t>")
    try:
        moved = table.slid(slide)
    except VmbootError:
        return
    assert moved.lookup((TEXT + slide) % (1 << 64)).name == "a"


@pytest.mark.parametrize("past_the_end", [1 << 64, (1 << 64) + 0x1000, -1])
def test_batch_lookup_of_addresses_outside_64_bits_is_unknown(past_the_end: int) -> None:
    """atheris (elf_symtab, system_map): a symbol at 0xffffffffffffffff plus one gave
    OverflowError from lookup_many/lookup_indices."""
    top = (1 << 64) - 1
    table = SymbolTable.from_names([TEXT, top], [b"a", b"w"], "<t>")
    matches = table.lookup_many([TEXT, past_the_end, top])
    assert [m.name for m in matches] == ["a", "??", "w"]
    assert table.lookup_indices([past_the_end]).tolist() == [-1]


def test_symbolize_cli_huge_slide(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vmboot.cli.main import main

    smap = tmp_path / "System.map"
    smap.write_bytes(b"ffffffff81000000 T _text\nffffffff81000100 t do_thing\n")
    status = main(["symbolize", "--system-map", str(smap), "--slide", "ffffffffffffffff",
                   "ffffffff81000000"])
    assert status in (0, 1)


# -- vmboot.initramfs ---------------------------------------------------------------------------
@pytest.mark.parametrize("data", [
    b"\x1f\x8b\x08\x00" + bytes(6) + b"\xff" * 40,
    gzip.compress(b"070701" + b"0" * 200)[:10] + b"\x07" * 40,
    b"\x28\xb5\x2f\xfd" + b"\xff" * 40,
], ids=["gzip-bad-block", "gzip-bad-block-type", "zstd-bad-frame"])
def test_corrupt_compressed_initramfs_is_an_initramfs_error(data: bytes) -> None:
    with pytest.raises(InitramfsError):
        read_cpio(data)


# -- vmboot.debug.kallsyms ----------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["6.1", "6.4"])
def test_kallsyms_with_one_marker_and_padding(layout: str) -> None:
    from fuzz.seeds import build_kallsyms, kallsyms_symbols

    from vmboot.debug.kallsyms import decode_kallsyms

    symbols = kallsyms_symbols(100)
    syms = decode_kallsyms(build_kallsyms(symbols, layout), "<t>")
    assert [syms.name(i) for i in range(len(syms))] == [name for _, _, name in symbols]
