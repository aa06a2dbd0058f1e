"""The MP table vmboot writes, read back from guest memory by a decoder written from the Intel
MultiProcessor Specification 1.4 (chapter 4: "MP Configuration Table"), as a kernel finds it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from bzimage_builder import build_bzimage
from vmboot.errors import BootConfigError, LayoutError
from vmboot.hv import MemoryVM
from vmboot.linux import BootOptions, load_kernel
from vmboot.linux.configurator.e820 import E820Type
from vmboot.linux.configurator.layout import Region
from vmboot.x86.mptable import (
    MAX_CPUS,
    MP_TABLE_AREA_SIZE,
    MP_TABLE_GPA,
    build_mp_table,
    place_mp_table,
    validate_cpus,
)

MiB = 1 << 20

# Where Linux looks for the floating pointer (arch/x86/kernel/mpparse.c, default_find_smp_config):
# the first KiB of memory, the last KiB of 640 KiB of base memory, and the BIOS ROM area.
SCAN_AREAS = ((0x0, 0x400), (639 * 0x400, 0x400), (0xF0000, 0x10000))


def le(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset : offset + size], "little")


@dataclass
class Decoded:
    floating_at: int
    spec_rev: int
    table_at: int
    oem: bytes
    product: bytes
    lapic_address: int
    processors: list[tuple[int, int, bool, bool]] = field(default_factory=list)
    """(APIC id, APIC version, enabled, bootstrap) per processor entry."""
    buses: list[tuple[int, bytes]] = field(default_factory=list)
    io_apics: list[tuple[int, bool, int]] = field(default_factory=list)
    """(id, enabled, address)."""
    io_interrupts: list[tuple[int, int, int, int, int, int]] = field(default_factory=list)
    """(type, flags, source bus, source bus IRQ, destination I/O APIC id, its INTIN pin)."""
    local_interrupts: list[tuple[int, int, int, int]] = field(default_factory=list)
    """(type, source bus IRQ, destination local APIC id, its LINTIN pin)."""


def decode(memory: bytes) -> Decoded:
    """Find and check the MP structures in ``memory`` (guest-physical 0 onwards), spec 1.4."""
    floating = None
    for start, length in SCAN_AREAS:
        for at in range(start, start + length, 16):  # the pointer is paragraph aligned
            if memory[at : at + 4] == b"_MP_":
                floating = at
                break
        if floating is not None:
            break
    assert floating is not None, "no _MP_ floating pointer where a kernel looks"
    length_paragraphs = memory[floating + 8]
    assert length_paragraphs == 1
    assert sum(memory[floating : floating + 16]) % 256 == 0, "floating pointer checksum"
    spec_rev = memory[floating + 9]
    assert memory[floating + 11] == 0, "feature byte 1 must be 0: a configuration table is present"
    table = le(memory, floating + 4, 4)
    assert table != 0
    assert memory[table : table + 4] == b"PCMP"
    base_length = le(memory, table + 4, 2)
    assert memory[table + 6] == spec_rev
    assert sum(memory[table : table + base_length]) % 256 == 0, "configuration table checksum"
    assert le(memory, table + 40, 2) == 0, "no extended table"
    count = le(memory, table + 34, 2)
    out = Decoded(floating, spec_rev, table, bytes(memory[table + 8 : table + 16]),
                  bytes(memory[table + 16 : table + 28]), le(memory, table + 36, 4))
    at = table + 44
    for _ in range(count):
        kind = memory[at]
        if kind == 0:
            flags = memory[at + 3]
            out.processors.append((memory[at + 1], memory[at + 2], bool(flags & 1), bool(flags & 2)))
            at += 20
            continue
        if kind == 1:
            out.buses.append((memory[at + 1], bytes(memory[at + 2 : at + 8])))
        elif kind == 2:
            out.io_apics.append((memory[at + 1], bool(memory[at + 3] & 1), le(memory, at + 4, 4)))
        elif kind == 3:
            out.io_interrupts.append((memory[at + 1], le(memory, at + 2, 2), memory[at + 4],
                                      memory[at + 5], memory[at + 6], memory[at + 7]))
        elif kind == 4:
            out.local_interrupts.append((memory[at + 1], memory[at + 5], memory[at + 6],
                                         memory[at + 7]))
        else:
            raise AssertionError(f"unknown MP entry type {kind} at {at:#x}")
        at += 8
    assert at == table + base_length, "entries do not fill the base table length exactly"
    return out


def decoded_from_guest(cpus: int) -> Decoded:
    with MemoryVM(16 * MiB) as vm:
        place_mp_table(vm, build_mp_table(cpus), ())
        return decode(vm.read(0, 1 * MiB))


@pytest.mark.parametrize("cpus", [1, 2, 4, 8, MAX_CPUS])
def test_processors_one_per_cpu_with_apic_id_equal_to_index(cpus: int) -> None:
    d = decoded_from_guest(cpus)
    assert d.floating_at == MP_TABLE_GPA
    assert d.spec_rev == 4
    assert [p[0] for p in d.processors] == list(range(cpus))
    assert all(p[2] for p in d.processors), "every processor enabled"
    assert [p[3] for p in d.processors] == [True] + [False] * (cpus - 1), "only CPU 0 is the BSP"
    assert all(p[1] & 0xF0 == 0x10 for p in d.processors), "integrated APIC (version 1xh)"
    assert d.lapic_address == 0xFEE00000
    assert d.oem.strip() and d.product.strip()


@pytest.mark.parametrize("cpus", [1, 3, MAX_CPUS])
def test_io_apic_bus_and_interrupt_entries(cpus: int) -> None:
    d = decoded_from_guest(cpus)
    assert d.buses == [(0, b"ISA   ")]
    assert len(d.io_apics) == 1
    apic_id, enabled, address = d.io_apics[0]
    assert enabled and address == 0xFEC00000
    assert apic_id not in {p[0] for p in d.processors}, "I/O APIC id clashes with a CPU's"
    # ISA IRQs 0-15 and the lines above them (virtio-mmio devices) go to the same-numbered pin.
    assert [(irq, pin) for _t, _f, _bus, irq, _dst, pin in d.io_interrupts] == [(i, i) for i in range(24)]
    assert {(t, f, bus, dst) for t, f, bus, _irq, dst, _pin in d.io_interrupts} == {(0, 0, 0, apic_id)}
    # LINT0 = ExtINT (the 8259), LINT1 = NMI, to every local APIC.
    assert sorted(d.local_interrupts) == [(1, 0, 0xFF, 1), (3, 0, 0xFF, 0)]


def test_table_fits_the_ebda_kilobyte_the_kernel_scans() -> None:
    table = build_mp_table(MAX_CPUS)
    assert table.address == MP_TABLE_GPA and table.end <= MP_TABLE_GPA + MP_TABLE_AREA_SIZE


@pytest.mark.parametrize("bad", [0, MAX_CPUS + 1, -1, "2", 2.0, True, None])
def test_cpu_count_refused_naming_value_and_range(bad: object) -> None:
    with pytest.raises(BootConfigError) as e:
        validate_cpus(bad)
    assert repr(bad) in str(e.value) and f"1..{MAX_CPUS}" in str(e.value)


def test_boot_layout_leaves_the_mp_table_area_free_and_reserved() -> None:
    kernel = load_kernel(build_bzimage())
    with MemoryVM(64 * MiB) as vm:
        plan = kernel.prepare(vm, BootOptions(cmdline="console=ttyS0", initrd=b"\x07" * 4096))
        table = build_mp_table(4)
        place_mp_table(vm, table, plan.regions)  # no overlap with any boot region
        assert decode(vm.read(0, 1 * MiB)).processors[3][0] == 3
        reserved = [e for e in plan.e820 if e.type == E820Type.RESERVED]
        assert any(e.addr <= table.address and table.end <= e.addr + e.size for e in reserved), \
            "the MP table must sit in E820-reserved memory"


def test_overlap_with_a_boot_region_is_refused_before_writing() -> None:
    table = build_mp_table(2)
    clash = Region("zero page", MP_TABLE_GPA + 0x100, 0x1000)
    with MemoryVM(16 * MiB) as vm:
        with pytest.raises(LayoutError, match="zero page"):
            place_mp_table(vm, table, [clash])
        assert not any(vm.read(MP_TABLE_GPA, MP_TABLE_AREA_SIZE)), "nothing written"


def test_misaligned_address_refused() -> None:
    with pytest.raises(BootConfigError, match="16-byte"):
        build_mp_table(2, MP_TABLE_GPA + 8)
