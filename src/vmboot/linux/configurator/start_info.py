"""The PVH start-of-day structures (Xen ``xen/include/public/arch-x86/hvm/start_info.h``).

A PVH kernel is entered with EBX pointing at a ``struct hvm_start_info``; it names the
command line, a list of modules (``struct hvm_modlist_entry``; Linux takes module 0 as its
initrd) and, from version 1 on, a memory map (``struct hvm_memmap_table_entry``, the
same types as E820). All addresses are guest-physical. Layout (little-endian)::

    hvm_start_info          magic u32, version u32, flags u32, nr_modules u32,
                            modlist_paddr u64, cmdline_paddr u64, rsdp_paddr u64,
                            memmap_paddr u64 (v1), memmap_entries u32 (v1), reserved u32 (v1)
    hvm_modlist_entry       paddr u64, size u64, cmdline_paddr u64, reserved u64
    hvm_memmap_table_entry  addr u64, size u64, type u32, reserved u32
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from vmboot.errors import BootConfigError
from vmboot.linux.configurator.e820 import E820Entry

XEN_HVM_START_MAGIC_VALUE = 0x336EC578
"""``hvm_start_info.magic``: "xEn3" with the 0x80 bit of the "E" set."""
HVM_START_INFO_VERSION_0 = 0
HVM_START_INFO_VERSION_1 = 1
"""Version 1 adds ``memmap_paddr`` and ``memmap_entries``."""
HVM_START_INFO_VERSION = HVM_START_INFO_VERSION_1
"""The version vmboot writes."""

U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1


def _check(struct_name: str, fields: Sequence[tuple[str, int, int]]) -> None:
    for name, value, limit in fields:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
            raise BootConfigError(
                f"{struct_name}.{name}: {value!r} is not an unsigned integer in 0..{limit:#x}"
            )


@dataclass(frozen=True, slots=True)
class HvmStartInfo:
    """``struct hvm_start_info`` (version 1 layout, 56 bytes)."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<IIIIQQQQII")
    SIZE: ClassVar[int] = 56

    magic: int = XEN_HVM_START_MAGIC_VALUE
    version: int = HVM_START_INFO_VERSION
    flags: int = 0
    nr_modules: int = 0
    modlist_paddr: int = 0
    cmdline_paddr: int = 0
    rsdp_paddr: int = 0
    memmap_paddr: int = 0
    memmap_entries: int = 0
    reserved: int = 0

    def pack(self) -> bytes:
        _check("hvm_start_info", [
            ("magic", self.magic, U32_MAX), ("version", self.version, U32_MAX),
            ("flags", self.flags, U32_MAX), ("nr_modules", self.nr_modules, U32_MAX),
            ("modlist_paddr", self.modlist_paddr, U64_MAX),
            ("cmdline_paddr", self.cmdline_paddr, U64_MAX),
            ("rsdp_paddr", self.rsdp_paddr, U64_MAX),
            ("memmap_paddr", self.memmap_paddr, U64_MAX),
            ("memmap_entries", self.memmap_entries, U32_MAX),
            ("reserved", self.reserved, U32_MAX),
        ])
        return self.FORMAT.pack(self.magic, self.version, self.flags, self.nr_modules,
                                self.modlist_paddr, self.cmdline_paddr, self.rsdp_paddr,
                                self.memmap_paddr, self.memmap_entries, self.reserved)

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> HvmStartInfo:
        return cls(*cls.FORMAT.unpack(bytes(raw[: cls.SIZE])))


@dataclass(frozen=True, slots=True)
class HvmModlistEntry:
    """``struct hvm_modlist_entry`` (32 bytes): a module (e.g. the initrd) and its command line."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<QQQQ")
    SIZE: ClassVar[int] = 32

    paddr: int
    size: int
    cmdline_paddr: int = 0
    reserved: int = 0

    def pack(self) -> bytes:
        _check("hvm_modlist_entry", [
            ("paddr", self.paddr, U64_MAX), ("size", self.size, U64_MAX),
            ("cmdline_paddr", self.cmdline_paddr, U64_MAX), ("reserved", self.reserved, U64_MAX),
        ])
        return self.FORMAT.pack(self.paddr, self.size, self.cmdline_paddr, self.reserved)

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> HvmModlistEntry:
        return cls(*cls.FORMAT.unpack(bytes(raw[: cls.SIZE])))


@dataclass(frozen=True, slots=True)
class HvmMemmapEntry:
    """``struct hvm_memmap_table_entry`` (24 bytes); ``type`` uses the E820 type numbers."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<QQII")
    SIZE: ClassVar[int] = 24

    addr: int
    size: int
    type: int
    reserved: int = 0

    @classmethod
    def from_e820(cls, entry: E820Entry) -> HvmMemmapEntry:
        return cls(entry.addr, entry.size, int(entry.type))

    def pack(self) -> bytes:
        _check("hvm_memmap_table_entry", [
            ("addr", self.addr, U64_MAX), ("size", self.size, U64_MAX),
            ("type", self.type, U32_MAX), ("reserved", self.reserved, U32_MAX),
        ])
        return self.FORMAT.pack(self.addr, self.size, self.type, self.reserved)

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> HvmMemmapEntry:
        return cls(*cls.FORMAT.unpack(bytes(raw[: cls.SIZE])))


assert HvmStartInfo.FORMAT.size == HvmStartInfo.SIZE
assert HvmModlistEntry.FORMAT.size == HvmModlistEntry.SIZE
assert HvmMemmapEntry.FORMAT.size == HvmMemmapEntry.SIZE


def pack_modlist(entries: Sequence[HvmModlistEntry]) -> bytes:
    return b"".join(e.pack() for e in entries)


def pack_memmap(entries: Sequence[HvmMemmapEntry]) -> bytes:
    return b"".join(e.pack() for e in entries)
