"""The Intel MultiProcessor table (MP specification 1.4): how a PC without ACPI announces its CPUs.

Firmware leaves two structures in low memory for the OS to find:

* the **MP Floating Pointer** (16 bytes, signature ``_MP_``, 16-byte aligned), which the
  kernel looks for in the first KiB of the EBDA, the last KiB of base memory, or the BIOS
  area 0xF0000-0xFFFFF (Linux: ``smp_scan_config`` in arch/x86/kernel/mpparse.c);
* the **MP configuration table** it points to (signature ``PCMP``): a 44-byte header and
  then entries: one *processor* entry per CPU (its local APIC id, the first one flagged as
  the bootstrap processor), one *bus* (ISA), one *I/O APIC*, one *I/O interrupt assignment*
  per I/O APIC pin (the source bus IRQ wired to that pin), and the two *local interrupt
  assignments* a PC has (LINT0 = ExtINT from the 8259 PIC, LINT1 = NMI).

Each structure carries a checksum byte that makes all of its bytes sum to 0 (mod 256).
The layout follows what minimal VMMs (Firecracker's ``mptable.rs``) give a guest: CPU ``i``
has APIC id ``i``, the I/O APIC has id ``cpus + 1`` and its 24 pins receive ISA IRQs 0-23
one to one (IRQs above 15 are the lines the VMM's own devices, e.g. virtio-mmio, use).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from vmboot.errors import BootConfigError, LayoutError

MP_TABLE_GPA = 0x9FC00
"""Where the floating pointer goes: the start of the EBDA (E820-reserved up to 1 MiB), the
second place Linux scans; the configuration table follows it."""
MP_TABLE_AREA_SIZE = 0x400
"""The floating pointer must lie in the first KiB of the EBDA; the table is kept there too."""

MAX_CPUS = 32
"""Processor entries this table has room for in :data:`MP_TABLE_AREA_SIZE`."""

FLOATING_SIGNATURE = b"_MP_"
CONFIG_SIGNATURE = b"PCMP"
SPEC_REVISION = 4
"""MP specification 1.4."""
OEM_ID = b"VMBOOT  "
PRODUCT_ID = b"VIRTUAL CPU "
LOCAL_APIC_ADDRESS = 0xFEE00000
IO_APIC_ADDRESS = 0xFEC00000
IO_APIC_PINS = 24
"""KVM's in-kernel I/O APIC has 24 redirection entries (GSI 0-23)."""
APIC_VERSION = 0x14
"""Integrated local APIC (xAPIC) version, as KVM's LAPIC reports."""
ISA_BUS_ID = 0
ISA_BUS_TYPE = b"ISA   "

FLOATING_POINTER_SIZE = 16
CONFIG_HEADER_SIZE = 44
PROCESSOR_ENTRY_SIZE = 20
SMALL_ENTRY_SIZE = 8
"""Bus, I/O APIC, I/O and local interrupt entries are 8 bytes each."""

# Entry types (MP spec table 4-3)
ENTRY_PROCESSOR = 0
ENTRY_BUS = 1
ENTRY_IO_APIC = 2
ENTRY_IO_INTERRUPT = 3
ENTRY_LOCAL_INTERRUPT = 4

CPU_FLAG_ENABLED = 1 << 0
CPU_FLAG_BSP = 1 << 1
CPU_SIGNATURE = 0x600
"""Family 6, model 0, stepping 0: the kernel only prints it."""
CPU_FEATURES = (1 << 0) | (1 << 9)
"""CPUID.1:EDX bits the entry reports: FPU and APIC."""
IO_APIC_FLAG_ENABLED = 1 << 0

# Interrupt types (MP spec table 4-8)
INT_TYPE_INT = 0
INT_TYPE_NMI = 1
INT_TYPE_EXTINT = 3
INT_FLAGS_CONFORMING = 0
"""Polarity and trigger mode 'conform to the bus' (ISA: active high, edge)."""
ALL_LOCAL_APICS = 0xFF


@dataclass(frozen=True, slots=True)
class MpTable:
    """The bytes to place at ``address``: floating pointer then configuration table."""

    address: int
    data: bytes
    cpus: int
    io_apic_id: int

    @property
    def end(self) -> int:
        return self.address + len(self.data)


class GuestRam(Protocol):
    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None: ...


class BootRegion(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...


def place_mp_table(ram: GuestRam, table: MpTable, occupied: Iterable[BootRegion]) -> None:
    """Write ``table`` into guest RAM after checking it overlaps none of the ``occupied`` regions."""
    for r in occupied:
        if r.start < table.end and table.address < r.end:
            raise LayoutError(
                f"MP table: [{table.address:#x}, {table.end:#x}) overlaps the boot region "
                f"{r.name!r} [{r.start:#x}, {r.end:#x}); keep boot data out of the EBDA "
                f"[{MP_TABLE_GPA:#x}, {MP_TABLE_GPA + MP_TABLE_AREA_SIZE:#x})")
    ram.write(table.address, table.data)


def checksum_byte(data: bytes) -> int:
    """The byte that makes ``data`` plus it sum to 0 mod 256."""
    return -sum(data) & 0xFF


def _with_checksum(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] = 0
    out[at] = checksum_byte(bytes(out))
    return bytes(out)


def validate_cpus(cpus: object) -> int:
    """``cpus`` as an int in 1..:data:`MAX_CPUS`, or a :class:`BootConfigError` saying why not."""
    if not isinstance(cpus, int) or isinstance(cpus, bool) or not 1 <= cpus <= MAX_CPUS:
        raise BootConfigError(
            f"cpus: {cpus!r} is not a number of vCPUs in 1..{MAX_CPUS}; the MP table vmboot "
            f"writes describes at most {MAX_CPUS} processors"
        )
    return cpus


def build_mp_table(cpus: int, address: int = MP_TABLE_GPA) -> MpTable:
    """The MP floating pointer and configuration table for ``cpus`` CPUs, placed at ``address``."""
    validate_cpus(cpus)
    if address % 16:
        raise BootConfigError(f"MP table: address {address:#x} is not 16-byte aligned, as the "
                              "MP specification requires of the floating pointer")
    io_apic_id = cpus + 1
    entries: list[bytes] = []
    for i in range(cpus):
        flags = CPU_FLAG_ENABLED | (CPU_FLAG_BSP if i == 0 else 0)
        entries.append(struct.pack("<BBBBIIII", ENTRY_PROCESSOR, i, APIC_VERSION, flags,
                                   CPU_SIGNATURE, CPU_FEATURES, 0, 0))
    entries.append(struct.pack("<BB6s", ENTRY_BUS, ISA_BUS_ID, ISA_BUS_TYPE))
    entries.append(struct.pack("<BBBBI", ENTRY_IO_APIC, io_apic_id, APIC_VERSION,
                               IO_APIC_FLAG_ENABLED, IO_APIC_ADDRESS))
    for pin in range(IO_APIC_PINS):
        entries.append(struct.pack("<BBHBBBB", ENTRY_IO_INTERRUPT, INT_TYPE_INT, INT_FLAGS_CONFORMING,
                                   ISA_BUS_ID, pin, io_apic_id, pin))
    entries.append(struct.pack("<BBHBBBB", ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT,
                               INT_FLAGS_CONFORMING, ISA_BUS_ID, 0, ALL_LOCAL_APICS, 0))
    entries.append(struct.pack("<BBHBBBB", ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI,
                               INT_FLAGS_CONFORMING, ISA_BUS_ID, 0, ALL_LOCAL_APICS, 1))
    body = b"".join(entries)
    table_address = address + FLOATING_POINTER_SIZE
    header = struct.pack("<4sHBB8s12sIHHIHBB", CONFIG_SIGNATURE, CONFIG_HEADER_SIZE + len(body),
                         SPEC_REVISION, 0, OEM_ID, PRODUCT_ID, 0, 0, len(entries),
                         LOCAL_APIC_ADDRESS, 0, 0, 0)
    table = _with_checksum(header + body, 7)
    floating = _with_checksum(struct.pack("<4sIBBBBBBBB", FLOATING_SIGNATURE, table_address,
                                          FLOATING_POINTER_SIZE // 16, SPEC_REVISION, 0,
                                          0, 0, 0, 0, 0), 10)
    data = floating + table
    if len(data) > MP_TABLE_AREA_SIZE:
        raise BootConfigError(f"MP table: {len(data)} bytes for {cpus} CPUs do not fit in the "
                              f"{MP_TABLE_AREA_SIZE} bytes at {address:#x}")
    return MpTable(address=address, data=data, cpus=cpus, io_apic_id=io_apic_id)
