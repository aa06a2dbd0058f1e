"""ORC unwind tables (``.orc_unwind_ip`` / ``.orc_unwind``) of x86_64 kernels, and an ORC unwinder.

``.orc_unwind_ip`` is an array of s32, each relative to its own address, giving the first
instruction an entry covers; ``.orc_unwind`` holds the 6-byte ``struct orc_entry`` of each:
``s16 sp_offset; s16 bp_offset;`` then a 16-bit bitfield word whose layout changed twice
(arch/x86/include/asm/orc_types.h):

====================  ==========================================================
format                bits of the 16-bit word (bit 0 = least significant)
====================  ==========================================================
v1 (4.14 .. 6.2)      0-3 sp_reg, 4-7 bp_reg, 8-9 type (CALL 0, REGS 1,
                      REGS_PARTIAL 2), 10 end
v2 (6.3)              as v1, 10 signal, 11 end
v3 (6.4 ..)           0-3 sp_reg, 4-7 bp_reg, 8-10 type (UNDEFINED 0,
                      END_OF_STACK 1, CALL 2, REGS 3, REGS_PARTIAL 4), 11 signal
====================  ==========================================================

The format is taken from the kernel version (``Linux version X.Y`` in the image) when
known; otherwise from the entries themselves: CALL is by far the most common type, and it
is 0 in v1/v2 and 2 in v3.
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from vmboot.debug.page_walk import GuestAddressSpace
from vmboot.elf import SHT_NOBITS, ElfFile
from vmboot.errors import ElfFormatError, PageWalkError, StackWalkError

ORC_IP_SECTION = ".orc_unwind_ip"
ORC_SECTION = ".orc_unwind"
ORC_ENTRY_DTYPE = np.dtype([("sp_offset", "<i2"), ("bp_offset", "<i2"), ("flags", "<u2")])
ORC_ENTRY_SIZE = ORC_ENTRY_DTYPE.itemsize  # 6

REG_MASK = 0xF
BP_REG_SHIFT = 4
TYPE_SHIFT = 8

PT_REGS_BP = 4 * 8
PT_REGS_IP = 16 * 8
PT_REGS_CS = 17 * 8
PT_REGS_SP = 19 * 8
"""Offsets in ``struct pt_regs``: r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di orig_ax
ip cs flags sp ss."""
IRET_SP = 3 * 8
IRET_CS = 1 * 8
"""Offsets in the hardware IRET frame (ip cs flags sp ss) that REGS_PARTIAL points at."""
USER_RPL_MASK = 3
ENTRY_CACHE_LIMIT = 1 << 16
"""Decoded entries kept by :meth:`OrcTable.find` (a few MB at most)."""
WORD = 8

_VERSION = re.compile(rb"Linux version (\d+)\.(\d+)")


class OrcReg(enum.IntEnum):
    UNDEFINED = 0
    PREV_SP = 1
    DX = 2
    DI = 3
    BP = 4
    SP = 5
    R10 = 6
    R13 = 7
    BP_INDIRECT = 8
    SP_INDIRECT = 9


class OrcType(enum.Enum):
    """Entry types, independent of the on-disk format."""

    UNDEFINED = "undefined"
    END_OF_STACK = "end_of_stack"
    CALL = "call"
    REGS = "regs"
    REGS_PARTIAL = "regs_partial"


class OrcFormat(enum.IntEnum):
    V1 = 1
    V2 = 2
    V3 = 3


_V1_TYPES = {0: OrcType.CALL, 1: OrcType.REGS, 2: OrcType.REGS_PARTIAL}
_V3_TYPES = {0: OrcType.UNDEFINED, 1: OrcType.END_OF_STACK, 2: OrcType.CALL, 3: OrcType.REGS,
             4: OrcType.REGS_PARTIAL}
_V1_END_BIT = 1 << 10
_V2_SIGNAL_BIT = 1 << 10
_V2_END_BIT = 1 << 11
_V3_SIGNAL_BIT = 1 << 11
_V1_TYPE_MASK = 0x3
_V3_TYPE_MASK = 0x7
_V3_CALL = 2


def orc_format_for_version(major: int, minor: int) -> OrcFormat:
    if (major, minor) >= (6, 4):
        return OrcFormat.V3
    if (major, minor) == (6, 3):
        return OrcFormat.V2
    return OrcFormat.V1


MAX_VERSION_DIGITS = 6
"""A version number longer than this in a ``Linux version`` banner is not a real one."""


def kernel_version(data: bytes | memoryview) -> tuple[int, int] | None:
    """``(major, minor)`` from the first ``Linux version X.Y`` banner in ``data``."""
    m = _VERSION.search(bytes(data) if isinstance(data, memoryview) else data)
    if m is None or len(m.group(1)) > MAX_VERSION_DIGITS or len(m.group(2)) > MAX_VERSION_DIGITS:
        return None
    return (int(m.group(1)), int(m.group(2)))


@dataclass(frozen=True, slots=True)
class OrcEntry:
    """One decoded ORC entry."""

    ip: int
    sp_offset: int
    bp_offset: int
    sp_reg: OrcReg | int
    bp_reg: OrcReg | int
    type: OrcType
    signal: bool
    end: bool

    @property
    def is_call_frame(self) -> bool:
        """The state at a function's first instruction: CFA = SP + 8 (just the return address)."""
        return self.type is OrcType.CALL and self.sp_reg == OrcReg.SP and self.sp_offset == WORD


def _reg(value: int) -> OrcReg | int:
    try:
        return OrcReg(value)
    except ValueError:
        return value


class OrcTable:
    """The ORC table of one kernel: ``ips`` sorted, with the matching raw ``entries``."""

    def __init__(self, ips: np.ndarray[Any, Any], entries: np.ndarray[Any, Any], fmt: OrcFormat,
                 source: str) -> None:
        order = np.argsort(ips, kind="stable")
        self.ips = ips[order]
        self.entries = entries[order]
        self.format = fmt
        self.source = source
        self._entries: dict[int, OrcEntry] = {}

    def __len__(self) -> int:
        return int(self.ips.size)

    @classmethod
    def from_sections(cls, ip_data: bytes | memoryview, ip_section_addr: int,
                      entry_data: bytes | memoryview, fmt: OrcFormat | None = None,
                      source: str = "<orc>") -> OrcTable:
        if len(ip_data) % 4 or len(entry_data) % ORC_ENTRY_SIZE:
            raise ElfFormatError(
                f"{source}: {ORC_IP_SECTION} is {len(ip_data)} bytes and {ORC_SECTION} "
                f"{len(entry_data)}; they must be multiples of 4 and {ORC_ENTRY_SIZE}"
            )
        rel = np.frombuffer(ip_data, dtype="<i4")
        entries = np.frombuffer(entry_data, dtype=ORC_ENTRY_DTYPE)
        if rel.size != entries.size:
            raise ElfFormatError(
                f"{source}: {ORC_IP_SECTION} has {rel.size} entries but {ORC_SECTION} has "
                f"{entries.size} ({len(entry_data)} bytes / {ORC_ENTRY_SIZE}); they must match"
            )
        base = np.uint64(ip_section_addr) + np.arange(rel.size, dtype=np.uint64) * np.uint64(4)
        ips = (base.astype(np.int64) + rel.astype(np.int64)).astype(np.uint64)
        if fmt is None:
            fmt = guess_orc_format(entries["flags"])
        return cls(ips, entries, fmt, source)

    @classmethod
    def from_elf(cls, elf: ElfFile, fmt: OrcFormat | None = None) -> OrcTable | None:
        """The ORC table of a vmlinux (or a decompressed vmlinux.bin); None if it has none."""
        ip_sec = elf.section(ORC_IP_SECTION)
        ent_sec = elf.section(ORC_SECTION)
        if ip_sec is None or ent_sec is None:
            return None
        if SHT_NOBITS in (ip_sec.type, ent_sec.type):  # a debug-only file's placeholders
            return None
        if fmt is None:
            ver = None
            rodata = elf.section(".rodata")
            if rodata is not None:
                ver = kernel_version(elf.section_data(rodata))
            if ver is not None:
                fmt = orc_format_for_version(*ver)
        return cls.from_sections(elf.section_data(ip_sec), ip_sec.addr, elf.section_data(ent_sec),
                                 fmt, elf.name)

    def index_of(self, ip: int) -> int:
        """Index of the entry covering ``ip``; -1 below the table or for an impossible address."""
        if not 0 <= ip < 1 << 64:
            return -1
        return int(np.searchsorted(self.ips, np.uint64(ip), side="right")) - 1

    def entry(self, index: int) -> OrcEntry:
        raw = self.entries[index]
        flags = int(raw["flags"])
        sp_reg = _reg(flags & REG_MASK)
        bp_reg = _reg((flags >> BP_REG_SHIFT) & REG_MASK)
        if self.format is OrcFormat.V3:
            otype = _V3_TYPES.get((flags >> TYPE_SHIFT) & _V3_TYPE_MASK, OrcType.UNDEFINED)
            signal, end = bool(flags & _V3_SIGNAL_BIT), otype is OrcType.END_OF_STACK
        else:
            otype = _V1_TYPES.get((flags >> TYPE_SHIFT) & _V1_TYPE_MASK, OrcType.UNDEFINED)
            if self.format is OrcFormat.V2:
                signal, end = bool(flags & _V2_SIGNAL_BIT), bool(flags & _V2_END_BIT)
            else:
                signal, end = otype is not OrcType.CALL, bool(flags & _V1_END_BIT)
        if end:
            otype = OrcType.END_OF_STACK
        return OrcEntry(int(self.ips[index]), int(raw["sp_offset"]), int(raw["bp_offset"]),
                        sp_reg, bp_reg, otype, signal, end)

    def find(self, ip: int) -> OrcEntry | None:
        """The entry covering ``ip``, or None if ``ip`` is below the first entry."""
        i = self.index_of(ip)
        if i < 0:
            return None
        hit = self._entries.get(i)
        if hit is None:  # stacks share their callers: decode each entry once
            if len(self._entries) >= ENTRY_CACHE_LIMIT:
                self._entries.clear()
            hit = self._entries[i] = self.entry(i)
        return hit


def guess_orc_format(flags: np.ndarray[Any, Any]) -> OrcFormat:
    """v3 if type 2 (its CALL) outnumbers type 0 (CALL of v1/v2); else v1."""
    types = (flags.astype(np.uint16) >> TYPE_SHIFT) & _V1_TYPE_MASK
    counts = np.bincount(types, minlength=4)
    return OrcFormat.V3 if counts[_V3_CALL] > counts[0] else OrcFormat.V1


@dataclass(slots=True)
class UnwindState:
    ip: int
    sp: int
    bp: int
    regs: dict[str, int] | None = None
    """Registers known exactly (frame 0, or after a full pt_regs frame)."""
    signal: bool = True
    """True when ``ip`` is not a return address (frame 0, or after an interrupt frame)."""


_REGS_ORDER = ("r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx",
               "dx", "si", "di")
_REG_NAMES = {OrcReg.DX: "dx", OrcReg.DI: "di", OrcReg.R10: "r10", OrcReg.R13: "r13"}


def orc_step(table: OrcTable, space: GuestAddressSpace, state: UnwindState,
             slide: int = 0) -> UnwindState | None:
    """One ORC step from ``state`` to the caller's state; None at the end of the stack.

    ``state`` holds runtime addresses; the table is looked up at ``ip - slide`` (KASLR).

    Raises :class:`StackWalkError` (without frames; the caller adds them) when the entry
    cannot be followed.
    """
    lookup_ip = (state.ip if state.signal else state.ip - 1) - slide
    orc = table.find(lookup_ip)
    if orc is None:
        raise StackWalkError(f"no ORC entry covers {state.ip:#x}")
    if orc.type is OrcType.END_OF_STACK:
        return None
    if orc.type is OrcType.UNDEFINED or orc.sp_reg == OrcReg.UNDEFINED:
        raise StackWalkError(f"ORC entry at {orc.ip:#x} (for {state.ip:#x}) has an undefined CFA")
    try:
        if orc.sp_reg == OrcReg.SP:
            cfa = state.sp + orc.sp_offset
        elif orc.sp_reg == OrcReg.BP:
            cfa = state.bp + orc.sp_offset
        elif orc.sp_reg == OrcReg.SP_INDIRECT:
            cfa = space.read_u64(state.sp) + orc.sp_offset
        elif orc.sp_reg == OrcReg.BP_INDIRECT:
            cfa = space.read_u64(state.bp + orc.sp_offset)
        elif orc.sp_reg in _REG_NAMES and state.regs is not None:
            cfa = state.regs[_REG_NAMES[OrcReg(orc.sp_reg)]] + orc.sp_offset
        else:
            raise StackWalkError(f"ORC entry at {orc.ip:#x}: CFA base register {orc.sp_reg!r} "
                                 f"is not known at this frame")
        regs: dict[str, int] | None = None
        if orc.type is OrcType.CALL:
            ip = space.read_u64(cfa - WORD)
            sp = cfa
            signal = False
        elif orc.type is OrcType.REGS:
            raw = space.read(cfa, PT_REGS_SP + WORD)
            vals = struct.unpack(f"<{len(raw) // WORD}Q", raw)
            ip, cs, sp = vals[PT_REGS_IP // WORD], vals[PT_REGS_CS // WORD], vals[PT_REGS_SP // WORD]
            regs = dict(zip(_REGS_ORDER, vals, strict=False))
            if cs & USER_RPL_MASK:
                return None
            signal = True
        else:  # REGS_PARTIAL: the IRET frame is at the CFA
            ip = space.read_u64(cfa)
            if space.read_u64(cfa + IRET_CS) & USER_RPL_MASK:
                return None
            sp = space.read_u64(cfa + IRET_SP)
            signal = True
        if regs is not None:
            bp = regs["bp"]
        elif orc.bp_reg == OrcReg.PREV_SP:
            bp = space.read_u64(cfa + orc.bp_offset)
        elif orc.bp_reg == OrcReg.BP:
            bp = space.read_u64(state.bp + orc.bp_offset)
        else:
            bp = state.bp
    except PageWalkError as exc:
        raise StackWalkError(f"ORC step from {state.ip:#x}: {exc}") from exc
    if ip == 0:
        return None
    # SP_INDIRECT is how call_on_irqstack's caller finds the interrupted stack pointer: a
    # switch to another stack, which may lie below this one.
    if orc.type is OrcType.CALL and sp <= state.sp and orc.sp_reg != OrcReg.SP_INDIRECT:
        raise StackWalkError(f"ORC step from {state.ip:#x}: the stack goes the wrong way "
                             f"(SP {state.sp:#x} -> {sp:#x})")
    return UnwindState(ip, sp, bp, regs, signal)

