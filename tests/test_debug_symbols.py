"""Symbol tables from synthetic vmlinux ELF files and System.maps: selection, sizes, lookups,
fallback order, memoisation and every error."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

from debug_support import KERNEL_TEXT, ElfBuilder, Sym, system_map
from vmboot.debug import clear_symbol_cache, load_symbols, load_system_map, load_vmlinux_symbols
from vmboot.debug.symbol_sources import parse_system_map
from vmboot.errors import ElfFormatError, SymbolFileError, SymbolSourceError

T = KERNEL_TEXT
STT_NOTYPE, STT_OBJECT, STT_FUNC = 0, 1, 2
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    clear_symbol_cache()


def sample_elf() -> bytes:
    return ElfBuilder(symbols=[
        Sym("start_kernel", T + 0x100, 0x40),
        Sym("asm_entry", T + 0x200, 0x10, type=STT_NOTYPE),       # NOTYPE with a size: kept
        Sym("label_no_size", T + 0x250, 0, type=STT_NOTYPE),      # NOTYPE without: skipped
        Sym("jiffies", T + 0x300, 8, type=STT_OBJECT),            # data: skipped
        Sym("undefined_ref", T + 0x400, 0x10, shndx=0),           # SHN_UNDEF: skipped
        Sym("zero_valued", 0, 0x10),                              # value 0: skipped
        Sym("no_size_func", T + 0x500, 0),                        # FUNC, size inferred
        Sym("last_func", T + 0x600, 0x20, bind=STB_LOCAL),
    ]).build()


def test_vmlinux_selection_and_sizes(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(sample_elf())
    table = load_vmlinux_symbols(path)
    assert table.items() == [
        (T + 0x100, "start_kernel", 0x40),
        (T + 0x200, "asm_entry", 0x10),
        (T + 0x500, "no_size_func", 0x100),  # up to last_func
        (T + 0x600, "last_func", 0x20),
    ]


def test_lookup_inside_between_and_outside_symbols(tmp_path: Path) -> None:
    (tmp_path / "vmlinux").write_bytes(sample_elf())
    table = load_vmlinux_symbols(tmp_path / "vmlinux")
    m = table.lookup(T + 0x13F)
    assert (m.name, m.start, m.offset, m.size, str(m)) == (
        "start_kernel", T + 0x100, 0x3F, 0x40, "start_kernel+0x3f/0x40")
    assert table.lookup(T + 0x140).name == "??"      # just past start_kernel's size
    assert table.lookup(T + 0xFF).name == "??"       # before the first symbol
    assert table.lookup(T + 0x620).name == "??"      # past the last one
    assert str(table.lookup(T + 0x620)) == "??"
    assert table.lookup(T + 0x5FF).name == "no_size_func"


def test_batch_lookup_agrees_with_single_lookups(tmp_path: Path) -> None:
    (tmp_path / "vmlinux").write_bytes(sample_elf())
    table = load_vmlinux_symbols(tmp_path / "vmlinux")
    probes = list(range(T, T + 0x700, 7))
    idx = table.lookup_indices(np.array(probes, dtype=np.uint64))
    singles = [table.lookup(a) for a in probes]
    assert [table.name_at(int(i)) if i >= 0 else "??" for i in idx] == [m.name for m in singles]
    assert table.lookup_many(probes) == singles


def test_aliases_prefer_strong_then_no_underscore() -> None:
    data = system_map([(T, "W", "weak_alias"), (T, "T", "__under"), (T, "T", "plain"),
                       (T + 0x10, "t", "next")])
    table = parse_system_map(data)
    assert table.items() == [(T, "plain", 0x10), (T + 0x10, "next", 0)]
    assert table.lookup(T + 0x10).name == "next"       # a size-0 last symbol matches its start
    assert table.lookup(T + 0x11).name == "??"


def test_system_map_types_and_inferred_sizes() -> None:
    data = system_map([(T, "T", "_text"), (T + 0x20, "t", "local_fn"), (T + 0x30, "D", "data"),
                       (T + 0x40, "w", "weak_fn"), (T + 0x80, "W", "weak2"), (T + 0x90, "r", "ro"),
                       (T + 0xA0, "T", "_etext")])
    table = parse_system_map(data, "map")
    assert table.items() == [(T, "_text", 0x20), (T + 0x20, "local_fn", 0x20),
                             (T + 0x40, "weak_fn", 0x40), (T + 0x80, "weak2", 0x20)]
    assert table.source == "map (System.map)"


def test_system_map_malformed_line_names_file_and_line() -> None:
    with pytest.raises(SymbolFileError, match=r"map: line 2: b'zzzz T broken'"):
        parse_system_map(b"ffffffff81000000 T _text\nzzzz T broken\n", "map")


def test_system_map_without_functions() -> None:
    with pytest.raises(SymbolSourceError, match=r"no function symbols"):
        parse_system_map(system_map([(T, "D", "data")]), "map")


def test_debian_placeholder_system_map_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "System.map"
    path.write_bytes(b"ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n")
    with pytest.raises(SymbolSourceError, match=r"placeholder System.map.*kallsyms"):
        load_system_map(path)


def test_vmlinux_preferred_over_system_map(tmp_path: Path) -> None:
    (tmp_path / "vmlinux").write_bytes(sample_elf())
    (tmp_path / "map").write_bytes(system_map([(T, "T", "from_map")]))
    table = load_symbols(tmp_path / "vmlinux", tmp_path / "map")
    assert table.lookup(T + 0x100).name == "start_kernel"


@pytest.mark.parametrize("bad_vmlinux", ["missing", "garbage", "no_symtab"])
def test_system_map_is_the_fallback(tmp_path: Path, bad_vmlinux: str) -> None:
    vmlinux = tmp_path / "vmlinux"
    if bad_vmlinux == "garbage":
        vmlinux.write_bytes(b"not an elf file at all")
    elif bad_vmlinux == "no_symtab":
        vmlinux.write_bytes(ElfBuilder(with_symtab=False).build())
    (tmp_path / "map").write_bytes(system_map([(T, "T", "from_map")]))
    assert load_symbols(vmlinux, tmp_path / "map").lookup(T).name == "from_map"


def test_both_sources_missing(tmp_path: Path) -> None:
    with pytest.raises(SymbolSourceError, match=r"vmlinux .*nope1: not found; System.map .*nope2: not found"):
        load_symbols(tmp_path / "nope1", tmp_path / "nope2")
    with pytest.raises(SymbolSourceError, match=r"no symbol source"):
        load_symbols()


def test_neither_source_yields_a_function(tmp_path: Path) -> None:
    (tmp_path / "vmlinux").write_bytes(ElfBuilder(symbols=[Sym("d", T, 8, type=STT_OBJECT)]).build())
    (tmp_path / "map").write_bytes(system_map([(T, "D", "d")]))
    with pytest.raises(SymbolSourceError, match=r"no function symbols.*no function symbols"):
        load_symbols(tmp_path / "vmlinux", tmp_path / "map")


def test_elf_errors_are_elf_format_errors(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(ElfBuilder(with_symtab=False).build())
    with pytest.raises(ElfFormatError, match=r"no .symtab section"):
        load_vmlinux_symbols(path)


def test_file_objects_are_accepted_and_memoised_by_identity() -> None:
    f = io.BytesIO(sample_elf())
    a = load_symbols(vmlinux=f)
    assert load_symbols(vmlinux=f) is a
    g = io.BytesIO(system_map([(T, "T", "x")]))
    b = load_symbols(system_map=g)
    assert b.lookup(T).name == "x"
    assert load_symbols(system_map=io.BytesIO(system_map([(T, "T", "y")]))).lookup(T).name == "y"


def test_paths_are_memoised_by_mtime_and_size(tmp_path: Path) -> None:
    path = tmp_path / "map"
    path.write_bytes(system_map([(T, "T", "one")]))
    first = load_system_map(path)
    assert load_system_map(path) is first
    path.write_bytes(system_map([(T, "T", "second")]))
    os.utime(path, ns=(1, 1))
    second = load_system_map(path)
    assert second is not first and second.lookup(T).name == "second"
    clear_symbol_cache()
    assert load_system_map(path) is not second


def test_slide_moves_every_address(tmp_path: Path) -> None:
    table = parse_system_map(system_map([(T, "T", "a"), (T + 0x10, "T", "b")]))
    slid = table.slid(0x2200000)
    assert slid.lookup(T + 0x2200010).name == "b"
    assert str(slid.lookup(T + 0x2200005)) == "a+0x5/0x10"
    assert slid.lookup(T + 0x5).name == "??"
    assert table.slid(0) is table


def test_bytes_sources_are_accepted_and_memoised_by_identity() -> None:
    elf = sample_elf()
    table = load_symbols(vmlinux=elf)
    assert table.lookup(T + 0x100).name == "start_kernel"
    assert load_symbols(vmlinux=elf) is table
    smap = system_map([(T, "T", "from_bytes")])
    assert load_symbols(vmlinux=b"junk", system_map=smap).lookup(T).name == "from_bytes"
