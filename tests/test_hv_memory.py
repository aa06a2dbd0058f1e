"""The memory-only VM: bounds-checked RAM, the MMIO hole, registers and segments."""

from __future__ import annotations

import pytest

from vmboot.errors import BootConfigError, GuestMemoryError, HypervisorError
from vmboot.hv import MemoryVM, Register, Segment, SegmentRegister
from vmboot.hv.memory_map import MMIO_GAP_END, MMIO_GAP_START, ram_regions
from vmboot.linux import E820Entry, default_e820_map
from vmboot.x86.gdt import decode_descriptor, encode_descriptor, flat_code64, flat_data

MiB = 1 << 20
GiB = 1 << 30


@pytest.mark.parametrize(("gpa", "n"), [
    (0, 0), (2 * MiB - 1, 1), (0, 2 * MiB),
])
def test_edges_inside(gpa: int, n: int) -> None:
    with MemoryVM(2 * MiB) as vm:
        vm.write(gpa, b"\x5a" * n)
        assert vm.read(gpa, n) == b"\x5a" * n


@pytest.mark.parametrize(("gpa", "n"), [
    (2 * MiB, 1), (2 * MiB - 1, 2), ((1 << 64) - 1, 1), (-1, 1), (0, 2 * MiB + 1), (5, -1),
])
def test_edges_outside_raise_and_write_nothing(gpa: int, n: int) -> None:
    with MemoryVM(2 * MiB) as vm:
        with pytest.raises(GuestMemoryError, match=r"not inside guest RAM|negative"):
            vm.write(gpa, b"\x5a" * max(n, 0)) if n >= 0 else vm.read(gpa, n)
        assert vm.read(0, 2 * MiB) == bytes(2 * MiB)


def test_hole_below_4g() -> None:
    regions = ram_regions(4 * GiB)
    assert [(r.gpa, r.end) for r in regions] == [(0, MMIO_GAP_START), (MMIO_GAP_END, MMIO_GAP_END + GiB)]
    with MemoryVM(4 * GiB) as vm:
        vm.write(MMIO_GAP_END, b"high")
        assert vm.read(MMIO_GAP_END, 4) == b"high"
        with pytest.raises(GuestMemoryError, match=r"\[0xc0000000, 0xc0000004\)"):
            vm.read(MMIO_GAP_START, 4)
        with pytest.raises(GuestMemoryError):  # an access straddling the hole's start
            vm.read(MMIO_GAP_START - 2, 4)


def test_bad_sizes() -> None:
    for size in (0, 1 * MiB, 2 * MiB + 1, -4096):
        with pytest.raises(BootConfigError, match="memory size"):
            MemoryVM(size)


def test_use_after_close() -> None:
    vm = MemoryVM(2 * MiB)
    vm.close()
    vm.close()  # idempotent
    with pytest.raises(GuestMemoryError, match="closed"):
        vm.read(0, 1)


def test_registers_and_segments() -> None:
    with MemoryVM(2 * MiB) as vm:
        cpu = vm.create_vcpu(0)
        assert cpu.vm is vm and cpu.index == 0
        with pytest.raises(HypervisorError, match="already exists"):
            vm.create_vcpu(0)
        cpu.set_registers({Register.RAX: 1, Register.R15: (1 << 64) - 1})
        assert cpu.get_registers([Register.RAX, Register.R15]) == {
            Register.RAX: 1, Register.R15: (1 << 64) - 1}
        with pytest.raises(HypervisorError, match="RAX"):
            cpu.set_registers({Register.RAX: 1 << 64})
        seg = Segment(selector=0x10, present=True, l=True)
        cpu.set_segment(SegmentRegister.CS, seg)
        assert cpu.get_segment(SegmentRegister.CS) == seg
        cpu.set_msrs({0xC0000080: 0x500})
        assert cpu.get_msrs([0xC0000080, 0x10]) == {0xC0000080: 0x500, 0x10: 0}


def test_descriptor_round_trip() -> None:
    for seg in (flat_code64(0x10), flat_data(0x18)):
        assert decode_descriptor(encode_descriptor(seg), seg.selector) == seg
    # the values Linux's own boot GDT uses (arch/x86/boot/compressed/head_64.S)
    assert encode_descriptor(flat_code64(0x10)) == 0x00AF9B000000FFFF
    assert encode_descriptor(flat_data(0x18)) == 0x00CF93000000FFFF


def test_default_e820_map() -> None:
    small = default_e820_map(0, 256 * MiB)
    assert small == [E820Entry(0, 0x9FC00, 1), E820Entry(0x9FC00, 0x60400, 2),
                     E820Entry(0x100000, 255 * MiB, 1)]
    big = default_e820_map(0, 5 * GiB)
    assert big[-2] == E820Entry(0x100000, 3 * GiB - MiB, 1)
    assert big[-1] == E820Entry(4 * GiB, 2 * GiB, 1)
    assert sum(e.size for e in big if e.type == 1) == 5 * GiB - (MiB - 0x9FC00)


@pytest.mark.parametrize(("start", "length"), [
    (0, 4096), (123, (1 << 20) + 77), (4096, 8 << 20), (5, 3), (4095, 300 << 10), (0, 16 << 20),
])
def test_zero_clears_exactly_the_range(start: int, length: int) -> None:
    """Large zeroes drop whole pages with madvise; the partial pages at both ends are written."""
    size = 16 * MiB
    with MemoryVM(size) as vm:
        vm.write(0, b"\xff" * size)
        vm.zero(start, length)
        data = vm.read(0, size)
        assert data[:start] == b"\xff" * start
        assert data[start : start + length] == bytes(length)
        assert data[start + length :] == b"\xff" * (size - start - length)


def test_unknown_addresses_are_remembered_up_to_a_cap() -> None:
    """A guest touching every unmapped MMIO address must not grow host memory without bound."""
    from vmboot.devices.bus import MAX_LOGGED_UNKNOWN, MmioBus

    bus = MmioBus()
    for i in range(MAX_LOGGED_UNKNOWN + 1000):
        assert bus.read(0xC000_0000 + 8 * i, 8) == (1 << 64) - 1
    bus.write(0xC000_0000, 4, 1)  # already remembered: neither added nor counted
    assert len(bus.unknown_seen) == MAX_LOGGED_UNKNOWN
    assert bus.unknown_unlogged == 1000
