"""The x86_64 registers as gdb sees them: the target description and the ``g`` packet.

gdb's amd64 support requires the ``org.gnu.gdb.i386.core`` feature with the general
registers, the six segment selectors and the x87 state, in that order; the stub adds the
segment bases (``org.gnu.gdb.i386.segments``) and the control registers and EFER (a feature of
vmboot's own). Registers the stub cannot read (the x87 state: guest FPU state is not part of
the vCPU interface) are sent as ``x`` digits, which gdb shows as ``<unavailable>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vmboot.hv.base import VirtualCPU
from vmboot.hv.registers import Register, SegmentRegister

SYS_FEATURE = "org.vmboot.x86_64.sys"


@dataclass(frozen=True, slots=True)
class GdbRegister:
    """One register of the description: its gdb name, width, gdb type, and where it comes from."""

    name: str
    bits: int
    type: str
    feature: str
    source: Register | SegmentRegister | str | None
    """A general or control register, a segment (its selector), ``"fs_base"``/``"gs_base"``
    (a segment's base), or None (not readable: sent as unavailable)."""


def _core() -> list[GdbRegister]:
    core = "org.gnu.gdb.i386.core"
    regs = [GdbRegister(r.value, 64, "int64", core, r) for r in (
        Register.RAX, Register.RBX, Register.RCX, Register.RDX, Register.RSI, Register.RDI)]
    regs.append(GdbRegister("rbp", 64, "data_ptr", core, Register.RBP))
    regs.append(GdbRegister("rsp", 64, "data_ptr", core, Register.RSP))
    regs += [GdbRegister(r.value, 64, "int64", core, r) for r in (
        Register.R8, Register.R9, Register.R10, Register.R11,
        Register.R12, Register.R13, Register.R14, Register.R15)]
    regs.append(GdbRegister("rip", 64, "code_ptr", core, Register.RIP))
    regs.append(GdbRegister("eflags", 32, "i386_eflags", core, Register.RFLAGS))
    regs += [GdbRegister(s.value, 32, "int32", core, s) for s in (
        SegmentRegister.CS, SegmentRegister.SS, SegmentRegister.DS,
        SegmentRegister.ES, SegmentRegister.FS, SegmentRegister.GS)]
    regs += [GdbRegister(f"st{i}", 80, "i387_ext", core, None) for i in range(8)]
    regs += [GdbRegister(name, 32, "int", core, None) for name in (
        "fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")]
    return regs


def _segments() -> list[GdbRegister]:
    feature = "org.gnu.gdb.i386.segments"
    return [GdbRegister("fs_base", 64, "int", feature, "fs_base"),
            GdbRegister("gs_base", 64, "int", feature, "gs_base")]


def _system() -> list[GdbRegister]:
    return [GdbRegister(r.value, 64, "int64", SYS_FEATURE, r) for r in (
        Register.CR0, Register.CR2, Register.CR3, Register.CR4, Register.CR8, Register.EFER)]


REGISTERS: tuple[GdbRegister, ...] = tuple(_core() + _segments() + _system())
"""Every register in gdb's numbering (its position is its number)."""

_BY_FEATURE: dict[str, list[tuple[int, GdbRegister]]] = {}
for _number, _reg in enumerate(REGISTERS):
    _BY_FEATURE.setdefault(_reg.feature, []).append((_number, _reg))


def target_xml() -> bytes:
    """The target description gdb reads through ``qXfer:features:read:target.xml``."""
    parts = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">',
             "<target>", "<architecture>i386:x86-64</architecture>"]
    for feature, regs in _BY_FEATURE.items():
        parts.append(f'<feature name="{feature}">')
        if feature == "org.gnu.gdb.i386.core":
            parts.append(_EFLAGS_TYPE)
        for number, reg in regs:
            group = ' group="system"' if feature == SYS_FEATURE else ""
            parts.append(f'<reg name="{reg.name}" bitsize="{reg.bits}" type="{reg.type}" '
                         f'regnum="{number}"{group}/>')
        parts.append("</feature>")
    parts.append("</target>")
    return "\n".join(parts).encode()


_EFLAGS_TYPE = "".join([
    '<flags id="i386_eflags" size="4">',
    *(f'<field name="{name}" start="{bit}" end="{bit}"/>' for bit, name in (
        (0, "CF"), (1, ""), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"),
        (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"), (19, "VIF"),
        (20, "VIP"), (21, "ID"))),
    "</flags>",
])


def _hex_le(value: int, bits: int) -> str:
    return (value & ((1 << bits) - 1)).to_bytes(bits // 8, "little").hex()


def read_values(vcpu: VirtualCPU) -> dict[int, int | None]:
    """Every register's value by gdb number (None where it is not readable)."""
    scalar = [r.source for r in REGISTERS if isinstance(r.source, Register)]
    values: Mapping[Register, int] = vcpu.get_registers([s for s in scalar if isinstance(s, Register)])
    out: dict[int, int | None] = {}
    segments: dict[SegmentRegister, tuple[int, int]] = {}
    for number, reg in enumerate(REGISTERS):
        src = reg.source
        if isinstance(src, Register):
            out[number] = values[src]
        elif isinstance(src, SegmentRegister):
            seg = vcpu.get_segment(src)
            segments[src] = (seg.selector, seg.base)
            out[number] = seg.selector
        elif src in ("fs_base", "gs_base"):
            which = SegmentRegister.FS if src == "fs_base" else SegmentRegister.GS
            if which not in segments:
                seg = vcpu.get_segment(which)
                segments[which] = (seg.selector, seg.base)
            out[number] = segments[which][1]
        else:
            out[number] = None
    return out


def encode_register(number: int, value: int | None) -> str:
    reg = REGISTERS[number]
    if value is None:
        return "xx" * (reg.bits // 8)
    return _hex_le(value, reg.bits)


def encode_all(values: Mapping[int, int | None]) -> bytes:
    """The ``g`` reply: every register, target byte order, in gdb's numbering."""
    return "".join(encode_register(n, values[n]) for n in range(len(REGISTERS))).encode()


def decode_register(number: int, hex_digits: bytes) -> int | None:
    """A register's value from a ``P``/``G`` field (None for an ``x`` field or a bad length)."""
    reg = REGISTERS[number]
    if len(hex_digits) != reg.bits // 4 or b"x" in hex_digits:
        return None
    return int.from_bytes(bytes.fromhex(hex_digits.decode("ascii")), "little")


def write_value(vcpu: VirtualCPU, number: int, value: int) -> bool:
    """Write one register; False where the stub does not write it (segments, x87 state)."""
    src = REGISTERS[number].source
    if isinstance(src, Register):
        vcpu.set_register(src, value)
        return True
    return False
