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

A kernel has about 100,000 types; :class:`Btf` indexes them lazily: a lookup by name walks
the type headers only as far as the first type of that name (the string's offset found in
the string section first), a lookup by id as far as that id, and a type is decoded only when
asked. ``task_struct`` and the members the task walk reads sit in the first few hundred
types of a kernel's BTF, so finding them costs a fraction of reading all of it.

Typical use::

    btf = Btf.from_kernel_image(Path("bzImage").read_bytes())
    btf.offsetof("task_struct", "thread.sp"), btf.sizeof("list_head")
"""

from __future__ import annotations

import enum
import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

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
WALK_FIXED_WORDS = [-1] + [(TYPE_HEADER.size + KIND_EXTRA.get(BtfKind(k), (0, 0))[0]) // 4
                           for k in range(1, int(max(BtfKind)) + 1)] + [-1] * (31 - int(max(BtfKind)))
"""32-bit words of a type of each kind (index 0..31) without its vlen entries; -1: not a kind."""
WALK_PER_WORDS = [0] + [KIND_EXTRA.get(BtfKind(k), (0, 0))[1] // 4
                        for k in range(1, int(max(BtfKind)) + 1)] + [0] * (31 - int(max(BtfKind)))
NAMED_KINDS = frozenset({BtfKind.STRUCT, BtfKind.UNION, BtfKind.TYPEDEF, BtfKind.ENUM, BtfKind.VAR,
                         BtfKind.FUNC, BtfKind.INT, BtfKind.ENUM64, BtfKind.FWD, BtfKind.DATASEC,
                         BtfKind.FLOAT})
"""Kinds :meth:`Btf.find` looks up by name."""
WALK_NAMED = [k in NAMED_KINDS for k in range(32)]
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


def _words(data: bytes, start: int, count: int) -> Sequence[int]:
    """``count`` little-endian u32 at ``data[start:]``, without a copy on a little-endian host."""
    if sys.byteorder == "little":
        return memoryview(data)[start:start + 4 * count].cast("I")
    words = array("I", data[start:start + 4 * count])
    words.byteswap()
    return words


class TypeGraph:
    """Queries on a kernel's types, whatever they were read from (BTF, or DWARF in
    :mod:`vmboot.debug.dwarf_types`): :meth:`find`, :meth:`sizeof`, :meth:`offsetof`.

    A subclass provides :meth:`type_by_id` and :meth:`ids_named` (ids in the order
    :meth:`find` should try them), or its own ``_first_named``."""

    name: str

    def type_by_id(self, type_id: int) -> BtfType:
        raise NotImplementedError

    def ids_named(self, name: str) -> Sequence[int]:
        raise NotImplementedError

    def find(self, name: str, kinds: tuple[BtfKind, ...] = (BtfKind.STRUCT, BtfKind.UNION,
                                                              BtfKind.TYPEDEF)) -> BtfType:
        """The first type called ``name`` of one of ``kinds`` (a complete struct first)."""
        found = self._first_named(name, kinds)
        if found is not None:
            return found
        raise BtfLookupError(f"{self.name}: no type {name!r} of kind "
                             f"{'/'.join(k.name for k in kinds)}")

    def _first_named(self, name: str, kinds: tuple[BtfKind, ...]) -> BtfType | None:
        for type_id in self.ids_named(name):
            t = self.type_by_id(type_id)
            if t.kind in kinds:
                return t
        return None

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
        # Offsets into ``data`` itself: copying a kernel's 4 MB of BTF would cost more than
        # finding task_struct in it.
        self._data = bytes(data)
        self._type_start = base + h.type_off
        self._type_len = h.type_len
        self._str_start = base + h.str_off
        self._str_len = h.str_len
        self._words = _words(self._data, self._type_start, h.type_len // 4)
        self._offsets: list[int] = [0]
        """Word offset in the type section of each type walked so far (type 0: void)."""
        self._next = 0
        """Word index of the first type not walked yet."""
        self._named: dict[int, list[int]] = {}
        """Ids of the named kinds walked so far, by ``name_off``."""
        self._found: dict[tuple[str, tuple[BtfKind, ...]], BtfType | None] = {}
        self._decoded: dict[int, BtfType] = {}

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
        if off >= self._str_len:
            raise BtfFormatError(f"{self.name}: name_off {off} is past the "
                                 f"{self._str_len}-byte string section")
        start = self._str_start + off
        stop = self._str_start + self._str_len
        end = self._data.find(b"\0", start, stop)
        return self._data[start:stop if end < 0 else end].decode("utf-8", "replace")

    def _walk(self, until_id: int = -1, name_offs: frozenset[int] = frozenset(),
              kinds: frozenset[int] = frozenset()) -> int | None:
        """Index more types: up to ``until_id``, or (``until_id`` -1) up to the first of one
        of ``kinds`` named at one of ``name_offs``, whose id is returned; else to the end.

        Each type's size follows from its kind and ``vlen``, so the types are found one
        after another; nothing else of them is read until :meth:`type_by_id` asks."""
        words, offsets, named = self._words, self._offsets, self._named
        append = offsets.append
        fixed, per, is_named = WALK_FIXED_WORDS, WALK_PER_WORDS, WALK_NAMED
        w, end = self._next, len(words)
        type_id = len(offsets)
        limit = until_id if until_id >= 0 else 1 << 62
        try:
            while w < end and type_id <= limit:
                info = words[w + 1] if w + 3 <= end else -1
                kind = (info >> 24) & 0x1F
                length = fixed[kind] + per[kind] * (info & 0xFFFF)
                if length <= 0 or w + length > end:
                    self._bad_type(type_id, w, info)
                append(w)
                name_off = words[w]
                w += length
                if name_off and is_named[kind]:
                    ids = named.get(name_off)
                    if ids is None:
                        named[name_off] = [type_id]
                    else:
                        ids.append(type_id)
                    if name_off in name_offs and kind in kinds:
                        return type_id
                type_id += 1
            if w == end and self._type_len % 4:
                self._bad_type(type_id, w, -1)
            return None
        finally:
            self._next = w

    def _bad_type(self, type_id: int, w: int, info: int) -> NoReturn:
        """Raise the error for the type at word ``w`` (``info`` -1: its header is cut off)."""
        if info < 0:
            raise BtfFormatError(f"{self.name}: type {type_id} header at type section offset "
                                 f"{4 * w} runs past its end ({self._type_len})")
        kind = (info >> 24) & 0x1F
        if WALK_FIXED_WORDS[kind] < 0:
            raise BtfFormatError(f"{self.name}: type {type_id} has kind {kind}; known kinds "
                                 f"are 1..{int(max(BtfKind))}")
        length = WALK_FIXED_WORDS[kind] + WALK_PER_WORDS[kind] * (info & 0xFFFF)
        raise BtfFormatError(f"{self.name}: type {type_id} ({BtfKind(kind).name}, {4 * length} "
                             f"bytes) runs past the type section ({self._type_len})")

    def _kind_of(self, type_id: int) -> int:
        return (self._words[self._offsets[type_id] + 1] >> 24) & 0x1F

    def _name_offsets(self, name: str) -> frozenset[int]:
        """Every string section offset where the string ``name`` is (a string that ends in
        ``name`` holds it too)."""
        needle = name.encode() + b"\0"
        out = set()
        start, stop = self._str_start, self._str_start + self._str_len
        pos = self._data.find(needle, start, stop)
        while pos >= 0:
            out.add(pos - start)
            pos = self._data.find(needle, pos + 1, stop)
        return frozenset(out)

    def _first_named(self, name: str, kinds: tuple[BtfKind, ...]) -> BtfType | None:
        key = (name, kinds)
        if key in self._found:
            return self._found[key]
        offs = self._name_offsets(name) if name else frozenset()
        wanted = frozenset(int(k) for k in kinds)
        walked = [i for off in offs for i in self._named.get(off, ())
                  if self._kind_of(i) in wanted]
        type_id = min(walked) if walked else (self._walk(-1, offs, wanted) if offs else None)
        found = None if type_id is None else self.type_by_id(type_id)
        self._found[key] = found
        return found

    def ids_named(self, name: str) -> Sequence[int]:
        """Ids of the struct, union, typedef, ... types called ``name`` (indexes them all)."""
        self._walk()
        return sorted(i for off in self._name_offsets(name) for i in self._named.get(off, ()))

    # -- types --------------------------------------------------------------------------------
    def __len__(self) -> int:
        """The number of types, counting ``void`` (type 0); indexes them all."""
        self._walk()
        return len(self._offsets)

    def type_by_id(self, type_id: int) -> BtfType:
        """The type numbered ``type_id`` (0 is ``void``)."""
        hit = self._decoded.get(type_id)
        if hit is not None:
            return hit
        if type_id >= len(self._offsets) and type_id > 0:
            self._walk(type_id)
        if not 0 <= type_id < len(self._offsets):
            raise BtfFormatError(f"{self.name}: type id {type_id} is not between 0 and "
                                 f"{len(self._offsets) - 1}")
        if type_id == 0:
            t = BtfType(0, BtfKind.UNKNOWN, "void")
        else:
            t = self._decode(type_id, 4 * self._offsets[type_id])
        self._decoded[type_id] = t
        return t

    def _decode(self, type_id: int, pos: int) -> BtfType:
        data = self._data
        pos += self._type_start
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
