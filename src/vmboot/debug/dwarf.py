"""A minimal reader of DWARF debugging information entries (``.debug_info``), one unit at a time.

Plain data types mirroring the format (DWARF 2-5, little-endian, 32- and 64-bit DWARF):

* a unit header: ``unit_length`` (u32, or 0xffffffff then u64 for 64-bit DWARF),
  ``version`` u16, then ``debug_abbrev_offset`` and ``address_size`` (versions 2-4), or
  ``unit_type`` u8, ``address_size`` u8, ``debug_abbrev_offset`` (version 5);
* the unit's entries (DIEs): an abbreviation code (ULEB128; 0 ends a list of siblings), then
  one value per attribute in the form its abbreviation declares;
* ``.debug_abbrev``: per code, the tag, whether the entry has children, and its
  ``(attribute, form)`` pairs.

A kernel's ``.debug_info`` is tens of megabytes in thousands of units; :func:`unit_headers`
reads only the headers, and :func:`read_unit` decodes the entries of one unit into
:class:`Die` objects keyed by their ``.debug_info`` offset. Only what a reader of type
layouts needs is decoded: attribute values are integers, strings or bytes (blocks and
expressions), and references are turned into ``.debug_info`` offsets.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from vmboot.errors import DebugError


class DwarfFormatError(DebugError):
    """The DWARF data is malformed: the message names the field, the value and the limit."""


class Tag:
    """``DW_TAG_*`` values the type reader uses."""

    ARRAY_TYPE = 0x01
    ENUMERATION_TYPE = 0x04
    MEMBER = 0x0D
    POINTER_TYPE = 0x0F
    COMPILE_UNIT = 0x11
    STRUCTURE_TYPE = 0x13
    SUBROUTINE_TYPE = 0x15
    TYPEDEF = 0x16
    UNION_TYPE = 0x17
    SUBRANGE_TYPE = 0x21
    BASE_TYPE = 0x24
    CONST_TYPE = 0x26
    ENUMERATOR = 0x28
    VOLATILE_TYPE = 0x35
    RESTRICT_TYPE = 0x37
    ATOMIC_TYPE = 0x47


class At:
    """``DW_AT_*`` values the type reader uses."""

    SIBLING = 0x01
    NAME = 0x03
    BYTE_SIZE = 0x0B
    BIT_OFFSET = 0x0C
    BIT_SIZE = 0x0D
    UPPER_BOUND = 0x2F
    COUNT = 0x37
    DATA_MEMBER_LOCATION = 0x38
    DECLARATION = 0x3C
    ENCODING = 0x3E
    TYPE = 0x49
    DATA_BIT_OFFSET = 0x6B
    STR_OFFSETS_BASE = 0x72


DW_ATE_FLOAT = 0x04
DW_OP_PLUS_UCONST = 0x23
DW_OP_CONSTU = 0x10
UNIT_LENGTH_64 = 0xFFFFFFFF
DWARF_VERSIONS = range(2, 6)
DW_UT_COMPILE = 0x01
DW_UT_SKELETON = 0x04
DW_UT_SPLIT_COMPILE = 0x05
DW_UT_TYPE = 0x02
DW_UT_SPLIT_TYPE = 0x06
MAX_DEPTH = 256
"""Entries nested deeper than this are treated as malformed (a C unit nests a few levels)."""


class Form:
    """``DW_FORM_*`` codes (DWARF 5 section 7.5.6, and GNU extensions)."""

    ADDR = 0x01
    BLOCK2 = 0x03
    BLOCK4 = 0x04
    DATA2 = 0x05
    DATA4 = 0x06
    DATA8 = 0x07
    STRING = 0x08
    BLOCK = 0x09
    BLOCK1 = 0x0A
    DATA1 = 0x0B
    FLAG = 0x0C
    SDATA = 0x0D
    STRP = 0x0E
    UDATA = 0x0F
    REF_ADDR = 0x10
    REF1 = 0x11
    REF2 = 0x12
    REF4 = 0x13
    REF8 = 0x14
    REF_UDATA = 0x15
    INDIRECT = 0x16
    SEC_OFFSET = 0x17
    EXPRLOC = 0x18
    FLAG_PRESENT = 0x19
    STRX = 0x1A
    ADDRX = 0x1B
    REF_SUP4 = 0x1C
    STRP_SUP = 0x1D
    DATA16 = 0x1E
    LINE_STRP = 0x1F
    REF_SIG8 = 0x20
    IMPLICIT_CONST = 0x21
    LOCLISTX = 0x22
    RNGLISTX = 0x23
    REF_SUP8 = 0x24
    STRX1 = 0x25
    STRX2 = 0x26
    STRX3 = 0x27
    STRX4 = 0x28
    ADDRX1 = 0x29
    ADDRX2 = 0x2A
    ADDRX3 = 0x2B
    ADDRX4 = 0x2C
    GNU_ADDR_INDEX = 0x1F01
    GNU_STR_INDEX = 0x1F02
    GNU_REF_ALT = 0x1F20
    GNU_STRP_ALT = 0x1F21


FIXED_SIZE = {Form.DATA1: 1, Form.DATA2: 2, Form.DATA4: 4, Form.DATA8: 8, Form.REF1: 1,
              Form.REF2: 2, Form.REF4: 4, Form.REF8: 8, Form.FLAG: 1, Form.REF_SUP4: 4,
              Form.REF_SIG8: 8, Form.REF_SUP8: 8, Form.STRX1: 1, Form.STRX2: 2, Form.STRX3: 3,
              Form.STRX4: 4, Form.ADDRX1: 1, Form.ADDRX2: 2, Form.ADDRX3: 3, Form.ADDRX4: 4,
              Form.DATA16: 16}
"""Forms whose value is a little-endian integer of a fixed size."""
OFFSET_FORMS = frozenset({Form.STRP, Form.SEC_OFFSET, Form.LINE_STRP, Form.STRP_SUP,
                          Form.GNU_REF_ALT, Form.GNU_STRP_ALT})
"""Forms as wide as the unit's offsets (4 bytes, 8 in 64-bit DWARF)."""
ULEB_FORMS = frozenset({Form.UDATA, Form.STRX, Form.ADDRX, Form.LOCLISTX, Form.RNGLISTX,
                        Form.GNU_ADDR_INDEX, Form.GNU_STR_INDEX})
UNIT_REFS = frozenset({Form.REF1, Form.REF2, Form.REF4, Form.REF8, Form.REF_UDATA})
"""References relative to the start of the unit (turned into ``.debug_info`` offsets)."""
STRX_FORMS = frozenset({Form.STRX, Form.STRX1, Form.STRX2, Form.STRX3, Form.STRX4})

AttrValue = int | str | bytes


@dataclass(frozen=True, slots=True)
class UnitHeader:
    """One unit of ``.debug_info``: ``offset`` of its header, ``dies`` of its first entry,
    ``end`` just past it."""

    offset: int
    end: int
    version: int
    unit_type: int
    abbrev_offset: int
    address_size: int
    offset_size: int
    dies: int


@dataclass(frozen=True, slots=True)
class AbbrevEntry:
    tag: int
    has_children: bool
    attributes: tuple[tuple[int, int, int], ...]
    """``(attribute, form, implicit constant)`` in the order the values follow."""


@dataclass(slots=True)
class Die:
    """One debugging information entry: its ``.debug_info`` offset, tag, attribute values
    and the offsets of its children."""

    offset: int
    tag: int
    attributes: dict[int, AttrValue]
    children: list[int]


@dataclass(frozen=True, slots=True)
class DwarfSections:
    """The sections a unit's entries refer to (``str_offsets`` only for ``DW_FORM_strx``)."""

    info: bytes
    abbrev: bytes
    strings: bytes = b""
    line_strings: bytes = b""
    str_offsets: bytes = b""
    name: str = "<DWARF>"
    info_origin: int = 0
    """The ``.debug_info`` offset of ``info[0]`` (``info`` may hold a single unit): entries
    are keyed, and references given, by ``.debug_info`` offset all the same."""


def uleb128(data: bytes, pos: int) -> tuple[int, int]:
    """``(value, position after it)``; raises IndexError past the end of ``data``."""
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def sleb128(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            if byte & 0x40:
                result -= 1 << shift
            return result, pos


def unit_headers(info: bytes | memoryview, name: str = "<DWARF>") -> Iterator[UnitHeader]:
    """Every unit header of ``.debug_info``, in order (the entries are not read)."""
    pos = 0
    while pos < len(info):
        unit = parse_unit_header(info, pos, name)
        yield unit
        pos = unit.end


def parse_unit_header(info: bytes | memoryview, pos: int, name: str = "<DWARF>",
                      origin: int = 0) -> UnitHeader:
    """The header of the unit at ``pos`` in ``info`` (``origin``: see :class:`DwarfSections`)."""
    where = f"{name}: unit at .debug_info offset {origin + pos:#x}"
    try:
        (length,) = struct.unpack_from("<I", info, pos)
        start, offset_size = pos + 4, 4
        if length == UNIT_LENGTH_64:
            (length,) = struct.unpack_from("<Q", info, pos + 4)
            start, offset_size = pos + 12, 8
        elif length >= 0xFFFFFFF0:
            raise DwarfFormatError(f"{where}: unit_length {length:#x} is a reserved value "
                                   f"(0xfffffff0-0xfffffffe)")
        end = start + length
        if end > len(info):
            raise DwarfFormatError(f"{where}: unit_length {length} runs past the end of "
                                   f".debug_info ({len(info)} bytes)")
        (version,) = struct.unpack_from("<H", info, start)
        if version not in DWARF_VERSIONS:
            raise DwarfFormatError(f"{where}: version {version}; only DWARF "
                                   f"{DWARF_VERSIONS.start}-{DWARF_VERSIONS.stop - 1} is read")
        off_fmt = "<I" if offset_size == 4 else "<Q"
        unit_type = DW_UT_COMPILE
        if version >= 5:
            unit_type, address_size = info[start + 2], info[start + 3]
            (abbrev,) = struct.unpack_from(off_fmt, info, start + 4)
            dies = start + 4 + offset_size
            if unit_type in (DW_UT_SKELETON, DW_UT_SPLIT_COMPILE):
                dies += 8
            elif unit_type in (DW_UT_TYPE, DW_UT_SPLIT_TYPE):
                dies += 8 + offset_size
        else:
            (abbrev,) = struct.unpack_from(off_fmt, info, start + 2)
            address_size = info[start + 2 + offset_size]
            dies = start + 3 + offset_size
    except (struct.error, IndexError) as exc:
        raise DwarfFormatError(f"{where}: header runs past the end of .debug_info "
                               f"({len(info)} bytes)") from exc
    if dies > end:
        raise DwarfFormatError(f"{where}: unit_length {end - start} is shorter than its "
                               f"{dies - start}-byte header")
    if address_size not in (4, 8):
        raise DwarfFormatError(f"{where}: address_size {address_size}; expected 4 or 8")
    return UnitHeader(pos, end, version, unit_type, abbrev, address_size, offset_size, dies)


def parse_abbrevs(sections: DwarfSections, offset: int) -> dict[int, AbbrevEntry]:
    """The abbreviation table at ``offset`` in ``.debug_abbrev``: ``{code: entry}``."""
    data = sections.abbrev
    where = f"{sections.name}: abbreviation table at .debug_abbrev offset {offset:#x}"
    if offset >= len(data):
        raise DwarfFormatError(f"{where}: past the end of .debug_abbrev ({len(data)} bytes)")
    table: dict[int, AbbrevEntry] = {}
    pos = offset
    try:
        while True:
            code, pos = uleb128(data, pos)
            if code == 0:
                return table
            tag, pos = uleb128(data, pos)
            children = data[pos]
            pos += 1
            attrs = []
            while True:
                attr, pos = uleb128(data, pos)
                form, pos = uleb128(data, pos)
                if attr == 0 and form == 0:
                    break
                implicit = 0
                if form == Form.IMPLICIT_CONST:
                    implicit, pos = sleb128(data, pos)
                attrs.append((attr, form, implicit))
            table[code] = AbbrevEntry(tag, bool(children), tuple(attrs))
    except IndexError as exc:
        raise DwarfFormatError(f"{where}: runs past the end of .debug_abbrev "
                               f"({len(data)} bytes) without its terminating 0") from exc


class _UnitDecoder:
    """Reads the entries of one unit (the state shared by :func:`read_unit`'s loop)."""

    def __init__(self, sections: DwarfSections, unit: UnitHeader) -> None:
        self.s = sections
        self.unit = unit
        self.abbrevs = parse_abbrevs(sections, unit.abbrev_offset)
        self.str_offsets_base: int | None = None
        self.unit_base = sections.info_origin + unit.offset
        """The ``.debug_info`` offset of the unit: unit-relative references are added to it."""
        self.where = f"{sections.name}: unit at .debug_info offset {self.unit_base:#x}"

    def string_at(self, table: bytes, what: str, off: int) -> str:
        if off >= len(table):
            raise DwarfFormatError(f"{self.where}: {what} offset {off:#x} is past the end of "
                                   f"{what} ({len(table)} bytes)")
        end = table.find(b"\0", off)
        return table[off:len(table) if end < 0 else end].decode("utf-8", "replace")

    def strx(self, index: int) -> str:
        base = 8 if self.str_offsets_base is None else self.str_offsets_base
        size = self.unit.offset_size
        at = base + index * size
        if at + size > len(self.s.str_offsets):
            raise DwarfFormatError(f"{self.where}: string index {index} (at .debug_str_offsets "
                                   f"{at:#x}) is past its end ({len(self.s.str_offsets)} bytes)")
        off = int.from_bytes(self.s.str_offsets[at:at + size], "little")
        return self.string_at(self.s.strings, ".debug_str", off)

    def value(self, form: int, implicit: int, pos: int, depth: int = 0) -> tuple[AttrValue, int]:
        data = self.s.info
        unit = self.unit
        size = FIXED_SIZE.get(form)
        if size is not None:
            value = int.from_bytes(data[pos:pos + size], "little")
            if form in STRX_FORMS:
                return self.strx(value), pos + size
            if form in UNIT_REFS:
                return self.unit_base + value, pos + size
            return value, pos + size
        if form in OFFSET_FORMS:
            size = unit.offset_size
            value = int.from_bytes(data[pos:pos + size], "little")
            if form == Form.STRP:
                return self.string_at(self.s.strings, ".debug_str", value), pos + size
            if form == Form.LINE_STRP:
                return self.string_at(self.s.line_strings, ".debug_line_str", value), pos + size
            return value, pos + size
        if form in ULEB_FORMS:
            value, pos = uleb128(data, pos)
            if form == Form.STRX:
                return self.strx(value), pos
            return value, pos
        if form == Form.REF_UDATA:
            value, pos = uleb128(data, pos)
            return self.unit_base + value, pos
        if form == Form.STRING:
            end = data.find(b"\0", pos, unit.end)
            if end < 0:
                raise DwarfFormatError(f"{self.where}: string at .debug_info offset "
                                       f"{self.s.info_origin + pos:#x} has no NUL before "
                                       f"the unit's end")
            return data[pos:end].decode("utf-8", "replace"), end + 1
        if form == Form.SDATA:
            return sleb128(data, pos)
        if form == Form.ADDR:
            size = unit.address_size
            return int.from_bytes(data[pos:pos + size], "little"), pos + size
        if form == Form.REF_ADDR:
            size = unit.address_size if unit.version == 2 else unit.offset_size
            return int.from_bytes(data[pos:pos + size], "little"), pos + size
        if form in (Form.FLAG_PRESENT,):
            return 1, pos
        if form == Form.IMPLICIT_CONST:
            return implicit, pos
        if form in (Form.BLOCK1, Form.BLOCK2, Form.BLOCK4, Form.BLOCK, Form.EXPRLOC):
            if form == Form.BLOCK1:
                length, pos = data[pos], pos + 1
            elif form == Form.BLOCK2:
                length, pos = int.from_bytes(data[pos:pos + 2], "little"), pos + 2
            elif form == Form.BLOCK4:
                length, pos = int.from_bytes(data[pos:pos + 4], "little"), pos + 4
            else:
                length, pos = uleb128(data, pos)
            return bytes(data[pos:pos + length]), pos + length
        if form == Form.INDIRECT and depth == 0:
            real, pos = uleb128(data, pos)
            return self.value(real, implicit, pos, depth + 1)
        raise DwarfFormatError(f"{self.where}: attribute form {form:#x} at .debug_info offset "
                               f"{self.s.info_origin + pos:#x} is not a DWARF 2-5 form")

    def read(self) -> dict[int, Die]:
        data = self.s.info
        unit = self.unit
        dies: dict[int, Die] = {}
        parents: list[Die] = []
        pos = unit.dies
        abbrevs = self.abbrevs
        value = self.value
        origin = self.s.info_origin
        while pos < unit.end:
            at = origin + pos
            code, pos = uleb128(data, pos)
            if code == 0:
                if parents:
                    parents.pop()
                continue
            entry = abbrevs.get(code)
            if entry is None:
                raise DwarfFormatError(f"{self.where}: entry at .debug_info offset {at:#x} has "
                                       f"abbreviation code {code}, not in the table at "
                                       f".debug_abbrev offset {unit.abbrev_offset:#x}")
            attrs: dict[int, AttrValue] = {}
            for attr, form, implicit in entry.attributes:
                attrs[attr], pos = value(form, implicit, pos)
            if pos > unit.end:
                raise DwarfFormatError(f"{self.where}: entry at .debug_info offset {at:#x} runs "
                                       f"past the unit's end ({unit.end:#x})")
            die = Die(at, entry.tag, attrs, [])
            dies[at] = die
            if entry.tag == Tag.COMPILE_UNIT:
                base = attrs.get(At.STR_OFFSETS_BASE)
                self.str_offsets_base = base if isinstance(base, int) else None
            if parents:
                parents[-1].children.append(at)
            if entry.has_children:
                if len(parents) >= MAX_DEPTH:
                    raise DwarfFormatError(f"{self.where}: entries nested deeper than "
                                           f"{MAX_DEPTH} at .debug_info offset {at:#x}")
                parents.append(die)
        return dies


def read_unit(sections: DwarfSections, unit: UnitHeader) -> dict[int, Die]:
    """Every entry of ``unit`` (found at ``unit.offset`` in ``sections.info``), keyed by its
    ``.debug_info`` offset (parents list their children's)."""
    try:
        return _UnitDecoder(sections, unit).read()
    except (IndexError, struct.error) as exc:
        raise DwarfFormatError(f"{sections.name}: unit at .debug_info offset "
                               f"{sections.info_origin + unit.offset:#x}: "
                               f"an entry runs past the end of its section ({exc})") from exc
