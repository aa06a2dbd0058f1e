"""debug.dwarf / debug.dwarf_types: structure layouts from DWARF for kernels without BTF.

Synthetic units (the BTF sample's task_struct in DWARF) against the BTF reader, malformed
units, tiny-smp's DWARF against its own BTF, and ``Machine.tasks()`` on a tiny-smp guest
whose BTF is hidden, with the debug vmlinux given."""

from __future__ import annotations

import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import fuzz_support  # noqa: F401  (puts the repository root on sys.path for ``fuzz``)

# isort: split
from fuzz.seeds import BTF_SAMPLE, DWARF_SAMPLE, DwarfSpec, build_btf, build_dwarf

from conftest import requires_kvm, shared_kernel_file
from vmboot.debug.btf import Btf, BtfFormatError, BtfKind, BtfLookupError, TypeGraph
from vmboot.debug.dwarf import DwarfFormatError, DwarfSections, unit_headers
from vmboot.debug.dwarf_types import DwarfLookupError, DwarfTypes
from vmboot.debug.symbol_sources import clear_symbol_cache
from vmboot.debug.tasks import GuestTask, TaskLayout, list_tasks, load_types
from vmboot.elf import ElfFile
from vmboot.vmm.machine import Machine

SAMPLE_PATHS = ["tasks", "tasks.next", "tasks.prev", "__state", "state", "pid", "comm",
                "thread", "thread.sp", "thread.es"]


def sample_types(units: list[list[DwarfSpec]] | None = None) -> DwarfTypes:
    info, abbrev, strings = build_dwarf(DWARF_SAMPLE if units is None else units)
    return DwarfTypes.from_sections(info, DwarfSections(b"", abbrev, strings, name="sample"))


def test_sample_layout_matches_the_same_types_in_btf() -> None:
    dwarf = sample_types()
    btf = Btf(build_btf(BTF_SAMPLE), "sample")
    assert "unit at .debug_info offset 0x1b" in dwarf.name  # the first unit only declares it
    assert dwarf.sizeof("task_struct") == btf.sizeof("task_struct") == 80
    for path in SAMPLE_PATHS:
        assert dwarf.offsetof("task_struct", path) == btf.offsetof("task_struct", path), path
        assert (dwarf.sizeof(dwarf.member_type("task_struct", path))
                == btf.sizeof(btf.member_type("task_struct", path))), path
    _, flags = dwarf.member("task_struct", "flags")
    _, btf_flags = btf.member("task_struct", "flags")
    assert (flags.bit_offset, flags.bitfield_size) == (btf_flags.bit_offset,
                                                       btf_flags.bitfield_size) == (224, 3)
    assert dwarf.find("task_struct").kind_flag  # it has bitfields, as BTF marks it
    assert dwarf.find("pid_t").kind is BtfKind.TYPEDEF
    assert dwarf.resolve(dwarf.member_type("task_struct", "pid")).name == "int"
    assert dwarf.member_type("task_struct", "tasks.next").kind is BtfKind.PTR


def test_dwarf2_bitfields_multi_dimensional_arrays_and_expression_locations() -> None:
    dwarf = sample_types()
    _, old = dwarf.member("task_struct", "old_bits")
    # DW_AT_bit_offset 24 from the top of a 4-byte unit at byte 28: bits 227..231.
    assert (old.bit_offset, old.bitfield_size, old.offset) == (28 * 8 + 32 - 24 - 5, 5, 28)
    grid = dwarf.member_type("task_struct", "grid")
    assert grid.kind is BtfKind.ARRAY and grid.array is not None and grid.array.nelems == 2
    inner = dwarf.type_by_id(grid.array.elem_type)
    assert inner.array is not None and inner.array.nelems == 4
    assert dwarf.sizeof(grid) == 8
    assert dwarf.offsetof("thread_struct", "sp") == 8  # DW_OP_plus_uconst 8


def test_lookups_fail_as_for_btf() -> None:
    dwarf = sample_types()
    with pytest.raises(BtfLookupError, match=r"struct 'task_struct' has no member 'nope'"):
        dwarf.offsetof("task_struct", "nope")
    with pytest.raises(BtfLookupError, match=r"no type 'mm_struct'"):
        dwarf.find("mm_struct")
    assert not dwarf.has("inactive_task_frame")


def test_a_unit_that_only_declares_the_struct_is_not_enough() -> None:
    with pytest.raises(DwarfLookupError, match=r"no DWARF unit defines struct task_struct"):
        sample_types(DWARF_SAMPLE[:1])


def _sections() -> tuple[bytes, bytes, bytes]:
    return build_dwarf(DWARF_SAMPLE)


@pytest.mark.parametrize(("patch", "message"), [
    (lambda i: struct.pack("<I", len(i) + 1) + i[4:], r"unit_length \d+ runs past the end"),
    (lambda i: i[:4] + b"\x09\x00" + i[6:], r"version 9; only DWARF 2-5"),
    (lambda i: i[:10] + b"\x03" + i[11:], r"address_size 3; expected 4 or 8"),
    (lambda i: i[:4] + struct.pack("<H", 4) + b"\xff\xff\x00\x00" + i[10:],
     r"abbreviation table at .debug_abbrev offset 0xffff: past the end"),
])
def test_malformed_units_name_the_field(patch: object, message: str) -> None:
    info, abbrev, strings = _sections()
    assert callable(patch)
    with pytest.raises(DwarfFormatError, match=message):
        DwarfTypes.from_sections(patch(info), DwarfSections(b"", abbrev, strings))


def test_an_unknown_abbreviation_code_is_a_format_error() -> None:
    info, abbrev, strings = build_dwarf(DWARF_SAMPLE[1:])
    bad = info[:11] + b"\x7f" + info[12:]  # the compile unit entry's code
    with pytest.raises(DwarfFormatError, match=r"abbreviation code 127, not in the table"):
        DwarfTypes.from_sections(bad, DwarfSections(b"", abbrev, strings))


def test_unit_headers_of_64_bit_dwarf() -> None:
    body = struct.pack("<HQB", 4, 0, 8) + b"\x00"
    info = struct.pack("<IQ", 0xFFFFFFFF, len(body)) + body
    (unit,) = unit_headers(info)
    assert (unit.offset_size, unit.version, unit.dies, unit.end) == (8, 4, 23, len(info))


# -- tiny-smp: DWARF against BTF ----------------------------------------------------------------
def layout_rows(types: TypeGraph, struct_name: str) -> list[tuple[str, int, int, str, int]]:
    """Every member (two levels into nested structs and unions): path, bit offset,
    bitfield size, kind and size."""
    rows: list[tuple[str, int, int, str, int]] = []

    def walk(t_id: int, prefix: str, depth: int, base: int) -> None:
        t = types.resolve(types.type_by_id(t_id))
        if t.kind not in (BtfKind.STRUCT, BtfKind.UNION) or depth > 2:
            return
        for m in t.members:
            mt = types.resolve(types.type_by_id(m.type_id))
            size = -1 if mt.kind in (BtfKind.FWD, BtfKind.FUNC_PROTO) else types.sizeof(mt)
            path = f"{prefix}.{m.name or '<anon>'}"
            rows.append((path, base + m.bit_offset, m.bitfield_size, mt.kind.name, size))
            walk(m.type_id, path, depth + 1, base + m.bit_offset)

    walk(types.find(struct_name).id, struct_name, 0, 0)
    return rows


@pytest.mark.slow
def test_tiny_smp_dwarf_layouts_equal_its_btf(tiny_smp_vmlinux_debug: Path) -> None:
    with ElfFile.open(shared_kernel_file("tiny-smp-vmlinux")) as elf:
        btf = Btf.from_elf(elf)
    with ElfFile.open(tiny_smp_vmlinux_debug) as elf:
        with pytest.raises(BtfLookupError, match=r"SHT_NOBITS: a debug-only file"):
            Btf.from_elf(elf)
        dwarf = DwarfTypes.from_elf(elf, also=("inactive_task_frame",))
    assert TaskLayout.from_btf(dwarf) == TaskLayout.from_btf(btf)
    for name in ("task_struct", "thread_struct", "list_head", "pid", "thread_info",
                 "inactive_task_frame"):
        rows = layout_rows(dwarf, name)
        assert rows == layout_rows(btf, name), name
        assert len(rows) > 1, name
    assert len(layout_rows(dwarf, "task_struct")) > 300


# -- tiny-smp guest with its BTF hidden ---------------------------------------------------------
HOLD_CMDLINE = "console=ttyS0 reboot=k panic=-1 vmboot.hold=1"
BOOT_LIMIT_S = 400


@pytest.fixture(scope="module")
def btf_hidden_guest(tiny_smp_vmlinux_debug: Path,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    """tiny-smp booted from a copy of its vmlinux whose ``.BTF`` is renamed away (nothing
    of it can be found), with the debug vmlinux given for symbols and layouts."""
    vmlinux = shared_kernel_file("tiny-smp-vmlinux")
    hidden = tmp_path_factory.mktemp("nobtf") / "vmlinux"
    subprocess.run(["objcopy", "--rename-section", ".BTF=.hidden_btf", str(vmlinux),
                    str(hidden)], check=True, timeout=120)
    clear_symbol_cache()
    with Machine(hidden, initrd=shared_kernel_file("tiny-initramfs-min.cpio"),
                 cmdline=HOLD_CMDLINE, vmlinux=tiny_smp_vmlinux_debug) as m:
        end = time.monotonic() + BOOT_LIMIT_S
        while b"VMBOOT-INIT-OK" not in bytes(m.console.data):
            assert time.monotonic() < end, bytes(m.console.data[-1500:])
            m.run(timeout=2.0)
        yield m


@pytest.mark.slow
@requires_kvm
def test_tasks_of_a_guest_without_btf_come_from_dwarf(btf_hidden_guest: Machine,
                                                      tiny_smp_vmlinux_debug: Path) -> None:
    m = btf_hidden_guest
    kernel = m.load_kernel().data
    with pytest.raises(BtfLookupError):
        Btf.from_kernel_image(kernel)
    assert isinstance(load_types(str(tiny_smp_vmlinux_debug), kernel), DwarfTypes)
    from_dwarf = m.tasks()
    with_btf = list_tasks(m.vcpus, kernel=shared_kernel_file("tiny-smp-vmlinux").read_bytes(),
                          slide=m.kaslr_slide())

    def identity(tasks: list[GuestTask]) -> list[tuple[int, int, str, str, int]]:
        return [(t.pid, t.tgid, t.comm, t.state, t.cpu) for t in tasks]

    assert identity(from_dwarf) == identity(with_btf)
    assert len(from_dwarf) >= 10 and from_dwarf[0].comm == "swapper/0"
    assert [t.comm for t in from_dwarf if t.pid == 2] == ["kthreadd"]
    # ORC comes from the booted image (the debug file's tables are placeholders).
    sleeping = [t for t in from_dwarf if t.running_on is None]
    for t in sleeping:
        assert t.error is None and [f.symbol for f in t.frames][:2] == ["__schedule",
                                                                        "schedule"], t.render()


def test_a_long_chain_of_old_style_bitfields_is_a_format_error_not_a_recursion() -> None:
    """Each struct's DWARF 2 bitfield needs the size of the next struct: 300 of them."""
    def bitfield(label: str, of: str) -> DwarfSpec:
        return (label, 0x0D, [(0x03, 0x08, "m"), (0x49, 0x13, of), (0x0D, 0x0B, 1),
                              (0x0C, 0x0B, 0), (0x38, 0x05, 0)], [])

    chain: list[DwarfSpec] = [(f"s{i}", 0x13, [(0x03, 0x08, f"s{i}")],
                               [bitfield(f"m{i}", f"@s{i + 1}" if i < 299 else "@int")])
                              for i in range(300)]
    chain += [("int", 0x24, [(0x0B, 0x0B, 4), (0x03, 0x08, "int")], []),
              ("task", 0x13, [(0x03, 0x08, "task_struct"), (0x0B, 0x0B, 8)],
               [bitfield("x", "@s0")])]
    types = sample_types([chain])
    with pytest.raises(BtfFormatError, match=r"nested deeper than 32 types"):
        types.find("task_struct")
