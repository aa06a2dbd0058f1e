"""Real symbol sources: the tiny test kernel's vmlinux / System.map / bzImage kallsyms agree,
and so do the Debian cloud kernel's kallsyms and its -dbg vmlinux; the Debian ORC tables parse."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_KERNELS, missing, shared_kernel_file
from debian_kernel import debian_kernel, debian_system_map, debian_vmlinux_dbg, skip_reason
from vmboot.debug import clear_symbol_cache, load_kernel_symbols, load_symbols, load_vmlinux_symbols
from vmboot.debug.kallsyms import decode_kallsyms
from vmboot.debug.orc import OrcFormat, OrcTable
from vmboot.elf import STT_FUNC, ElfFile
from vmboot.linux.loader.vmlinux import uncompressed_kernel

TINY_VMLINUX = SHARED_KERNELS / "tiny-vmlinux"
TINY_MAP = SHARED_KERNELS / "tiny-System.map"
TINY_BZIMAGE = SHARED_KERNELS / "tiny-bzImage"
TINY_BZIMAGE_LZ4 = SHARED_KERNELS / "tiny-bzImage-lz4"
SAMPLE_STEP = 20
MIN_SAMPLE = 1000

needs_tiny = pytest.mark.usefixtures("tiny_kernel_files")


@pytest.fixture
def tiny_kernel_files() -> None:
    for path in (TINY_VMLINUX, TINY_MAP, TINY_BZIMAGE, TINY_BZIMAGE_LZ4):
        shared_kernel_file(path.name)


def read_map(path: Path) -> tuple[dict[int, set[str]], set[tuple[int, str]]]:
    """An independent System.map reader: names at each address, and the (address, name) of t/T/w/W."""
    names: dict[int, set[str]] = defaultdict(set)
    funcs = set()
    for line in path.read_text().splitlines():
        addr, kind, name = line.split()[:3]
        names[int(addr, 16)].add(name)
        if kind in "tTwW":
            funcs.add((int(addr, 16), name))
    return names, funcs


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    clear_symbol_cache()


@needs_tiny
def test_tiny_vmlinux_and_system_map_agree_for_every_function() -> None:
    names, funcs = read_map(TINY_MAP)
    vmlinux = load_vmlinux_symbols(TINY_VMLINUX)
    items = vmlinux.items()
    assert len(items) > 10_000
    assert [(hex(a), n) for a, n, _ in items if n not in names[a]] == []
    smap = load_symbols(system_map=TINY_MAP)
    starts = np.array([a for a, _, _ in items], dtype=np.uint64)
    # Each vmlinux function start is also a function start in the System.map table.
    assert np.array_equal(smap.addresses[smap.lookup_indices(starts)], starts)
    assert {(a, n) for a, n, _ in items} <= funcs


@needs_tiny
@pytest.mark.parametrize("image", [TINY_BZIMAGE, TINY_BZIMAGE_LZ4], ids=["stored-lz4", "real-lz4"])
def test_tiny_bzimage_kallsyms_match_system_map(image: Path) -> None:
    names, funcs = read_map(TINY_MAP)
    ks = decode_kallsyms(uncompressed_kernel(image.read_bytes(), str(image)))
    pairs = {(int(ks.addresses[i]), ks.name(i)) for i in range(len(ks))}
    assert len(pairs) > 15_000
    assert [p for p in pairs if p[1] not in names[p[0]]] == []
    assert funcs - pairs == set()  # every function of the map is in kallsyms
    assert ks.tables.absolute_percpu is False
    table = load_kernel_symbols(image)
    addr = next(a for a, n in funcs if n == "cpu_startup_entry")
    assert table.lookup(addr + 3).name == "cpu_startup_entry"


@needs_tiny
def test_symbolize_cli_text_and_json() -> None:
    _, funcs = read_map(TINY_MAP)
    addr = next(a for a, n in funcs if n == "do_idle")
    cmd = [sys.executable, "-m", "vmboot.cli.main", "symbolize", "--kernel", str(TINY_BZIMAGE)]
    out = subprocess.run([*cmd, f"{addr + 5:x}", f"[<{addr + 6:016x}>]", "0x10"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].startswith(f"{addr + 5:016x} do_idle+0x5/0x")
    assert out[1].startswith(f"{addr + 6:016x} do_idle+0x6/0x")
    assert out[2] == "0000000000000010 ??"
    res = subprocess.run([*cmd, "--json", f"0x{addr:x}"], capture_output=True, text=True, check=True)
    [entry] = json.loads(res.stdout)
    assert entry["address"] == f"{addr:#018x}" and entry["symbol"] == "do_idle" and entry["offset"] == 0
    log = f"[  1.0] Call Trace:\n[  1.0]  [<{addr + 9:016x}>] do_idle\n"
    res = subprocess.run([*cmd[:-2], "--system-map", str(TINY_MAP)], input=log, capture_output=True,
                         text=True, check=True)
    assert res.stdout.startswith(f"{addr + 9:016x} do_idle+0x9/")
    bad = subprocess.run([*cmd, "xyz"], capture_output=True, text=True)
    assert bad.returncode == 1 and "address 'xyz' is not hexadecimal" in bad.stderr


# -- Debian cloud kernel ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def debian_image() -> bytes:
    path = debian_kernel()
    if path is None:
        missing("the Debian cloud kernel", skip_reason())
    return uncompressed_kernel(path.read_bytes(), str(path))


@pytest.fixture(scope="module")
def debian_dbg() -> ElfFile:
    path = debian_vmlinux_dbg()
    if path is None:
        missing("the Debian cloud kernel", skip_reason())
    return ElfFile.open(path)


@pytest.mark.network
def test_debian_kallsyms_agree_with_dbg_symtab(debian_image: bytes, debian_dbg: ElfFile) -> None:
    ks = decode_kallsyms(debian_image)
    assert ks.tables.absolute_percpu is True  # SMP x86_64
    syms, strtab = debian_dbg.symbol_table()
    blob = bytes(strtab)
    names: dict[int, set[str]] = defaultdict(set)
    for value, off in zip(syms["st_value"].tolist(), syms["st_name"].tolist(), strict=True):
        names[value].add(blob[off : blob.index(b"\0", off)].decode())
    sample = range(0, len(ks), SAMPLE_STEP)
    assert len(sample) >= MIN_SAMPLE
    wrong = [(hex(int(ks.addresses[i])), ks.name(i)) for i in sample
             if ks.name(i) not in names[int(ks.addresses[i])]]
    assert wrong == []


@pytest.mark.network
def test_debian_placeholder_system_map_falls_back_to_kallsyms(debian_image: bytes) -> None:
    smap, kernel = debian_system_map(), debian_kernel()
    if smap is None or kernel is None:
        missing("the Debian cloud kernel's System.map", skip_reason() or "not in the package")
    assert b"The real System.map is in" in smap.read_bytes()
    table = load_symbols(system_map=smap, kernel=kernel)
    assert "kallsyms" in table.source
    start = table.address_of("schedule")
    assert start is not None and table.lookup(start + 1).name == "schedule"


@pytest.mark.network
def test_debian_orc_tables_say_call_frame_at_function_starts(debian_image: bytes,
                                                             debian_dbg: ElfFile) -> None:
    orc = OrcTable.from_elf(debian_dbg)
    assert orc is not None and orc.format is OrcFormat.V1 and len(orc) > 100_000
    from_image = OrcTable.from_elf(ElfFile(debian_image))
    assert from_image is not None and np.array_equal(from_image.ips, orc.ips)
    syms, strtab = debian_dbg.symbol_table()
    blob = bytes(strtab)
    text = debian_dbg.section(".text")
    assert text is not None
    is_func = ((syms["st_info"] & 0xF) == STT_FUNC) & (syms["st_size"] > 0)
    in_text = (syms["st_value"] >= text.addr) & (syms["st_value"] < text.addr + text.size)
    chosen = syms[is_func & in_text][::SAMPLE_STEP]
    checked, not_call = 0, []
    for sym in chosen:
        name = blob[sym["st_name"] : blob.index(b"\0", sym["st_name"])].decode()
        if ".cold" in name:  # split-off cold paths start mid-frame
            continue
        checked += 1
        entry = orc.find(int(sym["st_value"]))
        if entry is None or not entry.is_call_frame:
            not_call.append((name, entry))
    assert checked >= MIN_SAMPLE
    assert not_call == []
