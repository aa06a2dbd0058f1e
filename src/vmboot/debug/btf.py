"""A reader for BTF, the kernel's compact type information (the ``.BTF`` section of a vmlinux).

Plain data types mirroring the format (``include/uapi/linux/btf.h``), as Go's debug/elf:

* a 24-byte header: ``magic`` (0xEB9F) u16, ``version`` u8, ``flags`` u8, ``hdr_len`` u32,
  then ``type_off``, ``type_len``, ``str_off``, ``str_len`` (u32 each, from the header's end);
* the type section: one :class:`BtfType` after another, numbered from 1 (type 0 is
  ``void``); each is ``name_off`` u32, ``info`` u32 (vlen bits 0-15, kind bits 24-28,
  kind_flag bit 31), ``size_or_type`` u32, then kind-specific data;
* the string section: NUL-terminated names.

Struct and union members are ``name_off``, ``type``, ``offset`` (u32 each); with kind_flag
set the offset holds the bitfield size in bits 24-31 and the bit offset in bits 0-23.

A kernel has about 100,000 types; :class:`Btf` indexes them in one pass (offset and name
of each) and decodes a type only when asked.

Typical use::

    btf = Btf.from_kernel_image(Path("bzImage").read_bytes())
    btf.offsetof("task_struct", "thread.sp"), btf.sizeof("list_head")
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vmboot.elf import SHT_NOBITS, ElfFile
from vmboot.errors import DebugError, VmbootError

BTF_MAGIC = 0xEB9F
BTF_SECTION = ".BTF"
HEADER = struct.Struct("<HBBIIIII")
TYPE_HEADER = struct.Struct("<III")
MEMBER = struct.Struct("<III")
ARRAY = struct.Struct("<III")
MAX_RESOLVE_DEPTH = 32
"""Typedef/qualifier chains longer than this are treated as a loop."""


class BtfFormatError(DebugError):
    """The BTF data is malformed: the message names the field, the value and the limit."""


class BtfLookupError(DebugError):
    """A type or member asked for is not in the BTF."""


class BtfKind(enum.IntEnum):
    UNKNOWN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


KIND_EXTRA: dict[BtfKind, tuple[int, int]] = {
    BtfKind.INT: (4, 0), BtfKind.ARRAY: (12, 0), BtfKind.STRUCT: (0, 12), BtfKind.UNION: (0, 12),
    BtfKind.ENUM: (0, 8), BtfKind.FUNC_PROTO: (0, 8), BtfKind.VAR: (4, 0),
    BtfKind.DATASEC: (0, 12), BtfKind.DECL_TAG: (4, 0), BtfKind.ENUM64: (0, 12),
}
"""Bytes after the 12-byte type header: (fixed, per vlen entry); other kinds have none."""
SIZED_KINDS = frozenset({BtfKind.INT, BtfKind.STRUCT, BtfKind.UNION, BtfKind.ENUM,
                         BtfKind.DATASEC, BtfKind.FLOAT, BtfKind.ENUM64})
"""Kinds whose third word is a size; for the others it is a type id."""
ALIAS_KINDS = frozenset({BtfKind.TYPEDEF, BtfKind.VOLATILE, BtfKind.CONST, BtfKind.RESTRICT,
                         BtfKind.TYPE_TAG})
"""Kinds that stand for another type (same layout)."""
POINTER_SIZE = 8


@dataclass(frozen=True, slots=True)
class BtfHeader:
    magic: int
    version: int
    flags: int
    hdr_len: int
    type_off: int
    type_len: int
    str_off: int
    str_len: int


@dataclass(frozen=True, slots=True)
class BtfMember:
    """A struct/union member: ``bit_offset`` from the start, ``bitfield_size`` (0 if none)."""

    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int = 0

    @property
    def offset(self) -> int:
        """Byte offset (of the containing byte for a bitfield)."""
        return self.bit_offset // 8


@dataclass(frozen=True, slots=True)
class BtfArray:
    elem_type: int
    index_type: int
    nelems: int


@dataclass(frozen=True, slots=True)
class BtfType:
    """One type: ``size`` for sized kinds, ``type_id`` for the others (pointers, typedefs, ...)."""

    id: int
    kind: BtfKind
    name: str
    size: int = 0
    type_id: int = 0
    members: tuple[BtfMember, ...] = ()
    array: BtfArray | None = None
    vlen: int = 0
    kind_flag: bool = False


class TypeGraph:
    """Queries on a kernel's types, whatever they were read from (BTF, or DWARF in
    :mod:`vmboot.debug.dwarf_types`): :meth:`find`, :meth:`sizeof`, :meth:`offsetof`.

    A subclass provides :meth:`type_by_id` and :meth:`ids_named` (ids in the order
    :meth:`find` should try them)."""

    name: str

    def type_by_id(self, type_id: int) -> BtfType:
        raise NotImplementedError

    def ids_named(self, name: str) -> Sequence[int]:
        raise NotImplementedError

    def find(self, name: str, kinds: tuple[BtfKind, ...] = (BtfKind.STRUCT, BtfKind.UNION,
                                                              BtfKind.TYPEDEF)) -> BtfType:
        """The first type called ``name`` of one of ``kinds`` (a complete struct first)."""
        for type_id in self.ids_named(name):
            t = self.type_by_id(type_id)
            if t.kind in kinds:
                return t
        raise BtfLookupError(f"{self.name}: no type {name!r} of kind "
                             f"{'/'.join(k.name for k in kinds)}")

    def has(self, name: str, kinds: tuple[BtfKind, ...] = (BtfKind.STRUCT, BtfKind.UNION,
                                                             BtfKind.TYPEDEF)) -> bool:
        try:
            self.find(name, kinds)
        except BtfLookupError:
            return False
        return True

    def resolve(self, t: BtfType) -> BtfType:
        """``t`` with typedefs and qualifiers (const, volatile, ...) looked through."""
        for _ in range(MAX_RESOLVE_DEPTH):
            if t.kind not in ALIAS_KINDS:
                return t
            t = self.type_by_id(t.type_id)
        raise BtfFormatError(f"{self.name}: type {t.id} ({t.name!r}): typedef/qualifier chain "
                             f"longer than {MAX_RESOLVE_DEPTH}")

    def sizeof(self, t: BtfType | str) -> int:
        """The size in bytes of a type (or of the struct/union/typedef called so)."""
        t = self.resolve(self.find(t) if isinstance(t, str) else t)
        count = 1
        for _ in range(MAX_RESOLVE_DEPTH):
            if t.kind is not BtfKind.ARRAY or t.array is None:
                break
            count *= t.array.nelems
            t = self.resolve(self.type_by_id(t.array.elem_type))
        else:
            raise BtfFormatError(f"{self.name}: type {t.id}: arrays nested deeper than "
                                 f"{MAX_RESOLVE_DEPTH}")
        if t.kind is BtfKind.PTR:
            return count * POINTER_SIZE
        if t.kind in SIZED_KINDS:
            return count * t.size
        raise BtfLookupError(f"{self.name}: type {t.id} ({t.kind.name} {t.name!r}) has no size")

    def member(self, t: BtfType | str, name: str) -> tuple[int, BtfMember]:
        """``(byte offset, member)`` of a member by name, looking into anonymous structs and
        unions as C does."""
        t = self.resolve(self.find(t) if isinstance(t, str) else t)
        found = self._member_bits(t, name, 0)
        if found is None:
            raise BtfLookupError(f"{self.name}: {t.kind.name.lower()} {t.name!r} has no member "
                                 f"{name!r}")
        bits, m = found
        return bits // 8, m

    def _member_bits(self, t: BtfType, name: str, depth: int) -> tuple[int, BtfMember] | None:
        if depth > MAX_RESOLVE_DEPTH or t.kind not in (BtfKind.STRUCT, BtfKind.UNION):
            return None
        for m in t.members:
            if m.name == name:
                return m.bit_offset, m
        for m in t.members:
            if not m.name:
                inner = self.resolve(self.type_by_id(m.type_id))
                found = self._member_bits(inner, name, depth + 1)
                if found is not None:
                    return m.bit_offset + found[0], found[1]
        return None

    def offsetof(self, struct_name: str, path: str) -> int:
        """The byte offset of a dotted member path, e.g. ``offsetof("task_struct", "thread.sp")``."""
        t = self.resolve(self.find(struct_name))
        total = 0
        for part in path.split("."):
            off, m = self.member(t, part)
            total += off
            t = self.resolve(self.type_by_id(m.type_id))
        return total

    def member_type(self, struct_name: str, path: str) -> BtfType:
        """The (resolved) type of a dotted member path."""
        t = self.resolve(self.find(struct_name))
        for part in path.split("."):
            _, m = self.member(t, part)
            t = self.resolve(self.type_by_id(m.type_id))
        return t


class Btf(TypeGraph):
    """Parsed BTF: :meth:`type_by_id`, :meth:`find`, :meth:`sizeof`, :meth:`offsetof`."""

    def __init__(self, data: bytes, name: str = "<BTF>") -> None:
        self.name = name
        if len(data) < HEADER.size:
            raise BtfFormatError(f"{name}: BTF is {len(data)} bytes, shorter than its "
                                 f"{HEADER.size}-byte header")
        h = BtfHeader(*HEADER.unpack_from(data))
        if h.magic != BTF_MAGIC:
            raise BtfFormatError(f"{name}: BTF magic is {h.magic:#x}, not {BTF_MAGIC:#x} "
                                 f"(big-endian BTF is not supported)")
        if h.version != 1:
            raise BtfFormatError(f"{name}: BTF version {h.version}; only version 1 is known")
        if h.hdr_len < HEADER.size or h.hdr_len > len(data):
            raise BtfFormatError(f"{name}: BTF hdr_len {h.hdr_len} is not between "
                                 f"{HEADER.size} and the data size {len(data)}")
        for what, off, length in (("type", h.type_off, h.type_len), ("str", h.str_off, h.str_len)):
            if h.hdr_len + off + length > len(data):
                raise BtfFormatError(f"{name}: BTF {what}_off {off} + {what}_len {length} runs "
                                     f"past the {len(data) - h.hdr_len} bytes after the header")
        self.header = h
        base = h.hdr_len
        self._types = data[base + h.type_off: base + h.type_off + h.type_len]
        self._strings = data[base + h.str_off: base + h.str_off + h.str_len]
        self._offsets: list[int] = [0]  # type 0: void
        self._by_name: dict[str, list[int]] = {}
        self._decoded: dict[int, BtfType] = {}
        self._pending_names: list[tuple[int, int]] = []
        self._index()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_elf(cls, elf: ElfFile) -> Btf:
        """The ``.BTF`` section of an ELF file (a vmlinux)."""
        sec = elf.section(BTF_SECTION)
        if sec is None:
            raise BtfLookupError(f"{elf.name}: no {BTF_SECTION} section (kernel built without "
                                 f"CONFIG_DEBUG_INFO_BTF)")
        if sec.type == SHT_NOBITS:
            raise BtfLookupError(f"{elf.name}: its {BTF_SECTION} section has no contents "
                                 f"(SHT_NOBITS: a debug-only file; the BTF is in the vmlinux "
                                 f"or kernel image it was split from)")
        return cls(bytes(elf.section_data(sec)), f"{elf.name} ({BTF_SECTION})")

    @classmethod
    def from_kernel_image(cls, image: bytes, name: str = "<kernel>") -> Btf:
        """The BTF of a bzImage (decompressed on the host) or of a vmlinux."""
        from vmboot.linux.loader.vmlinux import uncompressed_kernel

        try:
            data = uncompressed_kernel(image, name)
            elf = ElfFile(data, name)
        except VmbootError as exc:
            raise BtfLookupError(f"{name}: cannot get the kernel's ELF image for its BTF: "
                                 f"{exc}") from exc
        return cls.from_elf(elf)

    def _string(self, off: int) -> str:
        if off >= len(self._strings):
            raise BtfFormatError(f"{self.name}: name_off {off} is past the "
                                 f"{len(self._strings)}-byte string section")
        end = self._strings.find(b"\0", off)
        if end < 0:
            end = len(self._strings)
        return self._strings[off:end].decode("utf-8", "replace")

    def _index(self) -> None:
        data = self._types
        pos = 0
        unpack = TYPE_HEADER.unpack_from
        extra = {int(k): v for k, v in KIND_EXTRA.items()}
        named = {int(BtfKind.STRUCT), int(BtfKind.UNION), int(BtfKind.TYPEDEF),
                 int(BtfKind.ENUM), int(BtfKind.VAR), int(BtfKind.FUNC), int(BtfKind.INT),
                 int(BtfKind.ENUM64), int(BtfKind.FWD), int(BtfKind.DATASEC), int(BtfKind.FLOAT)}
        pending: list[tuple[int, int]] = []
        end = len(data)
        max_kind = int(max(BtfKind))
        while pos < end:
            if pos + TYPE_HEADER.size > end:
                raise BtfFormatError(f"{self.name}: type {len(self._offsets)} header at type "
                                     f"section offset {pos} runs past its end ({end})")
            name_off, info, _ = unpack(data, pos)
            kind = (info >> 24) & 0x1F
            if kind == 0 or kind > max_kind:
                raise BtfFormatError(f"{self.name}: type {len(self._offsets)} has kind {kind}; "
                                     f"known kinds are 1..{max_kind}")
            fixed, per = extra.get(kind, (0, 0))
            length = TYPE_HEADER.size + fixed + per * (info & 0xFFFF)
            if pos + length > end:
                raise BtfFormatError(f"{self.name}: type {len(self._offsets)} ({BtfKind(kind).name}"
                                     f", {length} bytes) runs past the type section ({end})")
            if name_off and kind in named:
                pending.append((name_off, len(self._offsets)))
            self._offsets.append(pos)
            pos += length
        self._pending_names = pending

    def ids_named(self, name: str) -> Sequence[int]:
        return self._name_index().get(name, ())

    def _name_index(self) -> dict[str, list[int]]:
        """Type ids by name (struct, union, typedef, ...), built on the first lookup by name."""
        if self._pending_names:
            strings = self._strings
            nuls = np.flatnonzero(np.frombuffer(strings, dtype=np.uint8) == 0)
            offs = np.fromiter((o for o, _ in self._pending_names), dtype=np.int64,
                               count=len(self._pending_names))
            if offs.size and int(offs.max()) >= len(strings):
                bad = int(offs.max())
                raise BtfFormatError(f"{self.name}: name_off {bad} is past the "
                                     f"{len(strings)}-byte string section")
            at = np.searchsorted(nuls, offs)
            ends = np.where(at < nuls.size, nuls[np.minimum(at, max(nuls.size - 1, 0))],
                            len(strings)) if nuls.size else np.full(offs.size, len(strings))
            by_name = self._by_name
            for (start, type_id), stop in zip(self._pending_names, ends.tolist(), strict=True):
                name = strings[start:stop].decode("utf-8", "replace")
                by_name.setdefault(name, []).append(type_id)
            self._pending_names = []
        return self._by_name

    # -- types --------------------------------------------------------------------------------
    def __len__(self) -> int:
        """The number of types, counting ``void`` (type 0)."""
        return len(self._offsets)

    def type_by_id(self, type_id: int) -> BtfType:
        """The type numbered ``type_id`` (0 is ``void``)."""
        hit = self._decoded.get(type_id)
        if hit is not None:
            return hit
        if not 0 <= type_id < len(self._offsets):
            raise BtfFormatError(f"{self.name}: type id {type_id} is not between 0 and "
                                 f"{len(self._offsets) - 1}")
        if type_id == 0:
            t = BtfType(0, BtfKind.UNKNOWN, "void")
        else:
            t = self._decode(type_id, self._offsets[type_id])
        self._decoded[type_id] = t
        return t

    def _decode(self, type_id: int, pos: int) -> BtfType:
        data = self._types
        name_off, info, size_or_type = TYPE_HEADER.unpack_from(data, pos)
        kind = BtfKind((info >> 24) & 0x1F)
        vlen = info & 0xFFFF
        kind_flag = bool(info >> 31)
        name = self._string(name_off) if name_off else ""
        body = pos + TYPE_HEADER.size
        if kind in (BtfKind.STRUCT, BtfKind.UNION):
            members = []
            for i in range(vlen):
                m_name, m_type, m_off = MEMBER.unpack_from(data, body + i * MEMBER.size)
                bits = (m_off >> 24) if kind_flag else 0
                bit_off = (m_off & 0xFFFFFF) if kind_flag else m_off
                members.append(BtfMember(self._string(m_name) if m_name else "", m_type,
                                         bit_off, bits))
            return BtfType(type_id, kind, name, size_or_type, 0, tuple(members), None, vlen,
                           kind_flag)
        if kind is BtfKind.ARRAY:
            arr = BtfArray(*ARRAY.unpack_from(data, body))
            return BtfType(type_id, kind, name, 0, arr.elem_type, (), arr, vlen, kind_flag)
        if kind in SIZED_KINDS:
            return BtfType(type_id, kind, name, size_or_type, 0, (), None, vlen, kind_flag)
        return BtfType(type_id, kind, name, 0, size_or_type, (), None, vlen, kind_flag)
