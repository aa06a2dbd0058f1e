"""Kernel structure layouts from a debug vmlinux's DWARF, for a kernel built without BTF.

A debug vmlinux's ``.debug_info`` holds hundreds of units (one per compiled file) and is
read the way :mod:`vmboot.debug.dwarf` allows: every unit header, then only the first unit
that defines the wanted structure (``task_struct`` by default) completely. A C unit holds
every type its definitions use, so that one unit has ``thread_struct``, ``list_head``,
``pid`` and the rest. Units are picked without decoding them: one whose bytes hold neither
the ``.debug_str`` offset of the name nor the name itself cannot define the structure.

Each entry becomes the :class:`~vmboot.debug.btf.BtfType` BTF would have for it, so the
queries of :class:`~vmboot.debug.btf.TypeGraph` (``offsetof``, ``sizeof``, ...) work the
same whichever the layouts came from. A type's id is its entry's offset in the unit (0 is
``void``); a multi-dimensional array's inner dimensions take their subrange entries' ids.

Typical use::

    with ElfFile.open("vmlinux.debug") as elf:
        types = DwarfTypes.from_elf(elf)
    types.offsetof("task_struct", "thread.sp")
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from vmboot.debug.btf import (
    MAX_RESOLVE_DEPTH,
    BtfArray,
    BtfFormatError,
    BtfKind,
    BtfLookupError,
    BtfMember,
    BtfType,
    TypeGraph,
)
from vmboot.debug.dwarf import (
    DW_ATE_FLOAT,
    DW_OP_CONSTU,
    DW_OP_PLUS_UCONST,
    At,
    Die,
    DwarfFormatError,
    DwarfSections,
    Tag,
    UnitHeader,
    parse_unit_header,
    read_unit,
    uleb128,
    unit_headers,
)
from vmboot.elf import ElfFile

ANCHOR_STRUCT = "task_struct"
"""The structure whose defining unit is read (the task walk's types are all in it)."""
MAX_UNITS_DECODED = 64
"""Decode at most this many candidate units looking for a complete definition."""
DEBUG_INFO = ".debug_info"

ALIAS_TAGS = {Tag.TYPEDEF: BtfKind.TYPEDEF, Tag.CONST_TYPE: BtfKind.CONST,
              Tag.VOLATILE_TYPE: BtfKind.VOLATILE, Tag.RESTRICT_TYPE: BtfKind.RESTRICT,
              Tag.ATOMIC_TYPE: BtfKind.VOLATILE}
"""Entries that stand for another type; ``_Atomic`` has no BTF kind and reads as volatile."""
NAMED_TAGS = frozenset({Tag.STRUCTURE_TYPE, Tag.UNION_TYPE, Tag.TYPEDEF, Tag.ENUMERATION_TYPE,
                        Tag.BASE_TYPE})
"""Entries :meth:`DwarfTypes.find` can find by name."""
DEFAULT_ENUM_SIZE = 4


class DwarfLookupError(BtfLookupError):
    """The DWARF has no unit that defines the structure asked for."""


def _int(die: Die, attr: int, default: int = 0) -> int:
    value = die.attributes.get(attr, default)
    return value if isinstance(value, int) else default


def _name(die: Die) -> str:
    value = die.attributes.get(At.NAME, "")
    return value if isinstance(value, str) else ""


class DwarfTypes(TypeGraph):
    """The types of one DWARF unit, as :class:`~vmboot.debug.btf.BtfType` objects."""

    def __init__(self, dies: dict[int, Die], name: str = "<DWARF>") -> None:
        self.name = name
        self._dies = dies
        self._decoded: dict[int, BtfType] = {0: BtfType(0, BtfKind.UNKNOWN, "void")}
        self._by_name: dict[str, list[int]] = {}
        self._converting: set[int] = set()
        for offset, die in dies.items():
            if die.tag in NAMED_TAGS and At.NAME in die.attributes:
                self._by_name.setdefault(_name(die), []).append(offset)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_elf(cls, elf: ElfFile, anchor: str = ANCHOR_STRUCT,
                 also: Sequence[str] = ()) -> DwarfTypes:
        """The types of the first unit of ``elf``'s ``.debug_info`` defining ``anchor``, and
        of the first defining each structure of ``also`` that unit lacks (none if no unit
        does: :meth:`find` then fails for it)."""
        info = elf.section(DEBUG_INFO)
        if info is None or not elf.section_data(info):
            raise DwarfLookupError(f"{elf.name}: no {DEBUG_INFO} section (not a debug vmlinux: "
                                   f"pass the one built with CONFIG_DEBUG_INFO, e.g. from the "
                                   f"-dbg package)")

        def data(section: str) -> bytes:
            sec = elf.section(section)
            return b"" if sec is None else bytes(elf.section_data(sec))

        sections = DwarfSections(b"", data(".debug_abbrev"), data(".debug_str"),
                                 data(".debug_line_str"), data(".debug_str_offsets"), elf.name)
        return cls.from_sections(elf.section_data(info), sections, anchor, also)

    @classmethod
    def from_sections(cls, info: bytes | memoryview, sections: DwarfSections,
                      anchor: str = ANCHOR_STRUCT, also: Sequence[str] = ()) -> DwarfTypes:
        """As :meth:`from_elf`, from ``.debug_info`` and the other sections' bytes
        (``sections.info`` is not used: each unit read is copied out of ``info``)."""
        units = _UnitSearch(info, sections)
        dies, unit = units.first_defining(anchor, units.in_order(anchor))
        if dies is None:
            raise DwarfLookupError(f"{sections.name}: no DWARF unit defines struct {anchor} "
                                   f"completely (decoded at most {MAX_UNITS_DECODED} candidate "
                                   f"units)")
        name = f"{sections.name} (DWARF unit at {DEBUG_INFO} offset {unit:#x})"
        for struct_name in also:
            if not _defines(dies, struct_name):
                more, _ = units.first_defining(struct_name, units.in_order(struct_name))
                dies.update(more or {})
        return cls(dies, name)

    # -- types --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._dies)

    def type_ids(self) -> list[int]:
        """The id of every entry read, in ``.debug_info`` order (not all are types)."""
        return list(self._dies)

    def ids_named(self, name: str) -> Sequence[int]:
        return self._by_name.get(name, ())

    def type_by_id(self, type_id: int) -> BtfType:
        hit = self._decoded.get(type_id)
        if hit is not None:
            return hit
        die = self._dies.get(type_id)
        if die is None:
            raise BtfFormatError(f"{self.name}: type reference {type_id:#x} is not an entry "
                                 f"of the unit")
        if type_id in self._converting:
            raise BtfFormatError(f"{self.name}: type {type_id:#x} ({_name(die)!r}) needs its "
                                 f"own size to be laid out (a member of its own type)")
        if len(self._converting) >= MAX_RESOLVE_DEPTH:
            raise BtfFormatError(f"{self.name}: type {type_id:#x} ({_name(die)!r}): bitfield "
                                 f"storage sizes nested deeper than {MAX_RESOLVE_DEPTH} types")
        self._converting.add(type_id)
        try:
            t = self._convert(die)
        finally:
            self._converting.discard(type_id)
        self._decoded[type_id] = t
        return t

    def _convert(self, die: Die) -> BtfType:
        tag, name, at = die.tag, _name(die), die.offset
        declared = At.DECLARATION in die.attributes
        if tag in (Tag.STRUCTURE_TYPE, Tag.UNION_TYPE):
            if declared:
                return BtfType(at, BtfKind.FWD, name, kind_flag=tag == Tag.UNION_TYPE)
            members = tuple(self._member(self._dies[c]) for c in die.children
                            if c in self._dies and self._dies[c].tag == Tag.MEMBER)
            kind = BtfKind.STRUCT if tag == Tag.STRUCTURE_TYPE else BtfKind.UNION
            return BtfType(at, kind, name, _int(die, At.BYTE_SIZE), 0, members, None,
                           len(members), any(m.bitfield_size for m in members))
        if tag == Tag.BASE_TYPE:
            kind = BtfKind.FLOAT if _int(die, At.ENCODING) == DW_ATE_FLOAT else BtfKind.INT
            return BtfType(at, kind, name, _int(die, At.BYTE_SIZE))
        if tag == Tag.POINTER_TYPE:
            return BtfType(at, BtfKind.PTR, name, 0, _int(die, At.TYPE))
        if tag in ALIAS_TAGS:
            return BtfType(at, ALIAS_TAGS[tag], name, 0, _int(die, At.TYPE))
        if tag == Tag.ENUMERATION_TYPE:
            if declared:
                return BtfType(at, BtfKind.FWD, name)
            values = sum(1 for c in die.children if self._dies[c].tag == Tag.ENUMERATOR)
            return BtfType(at, BtfKind.ENUM, name, _int(die, At.BYTE_SIZE, DEFAULT_ENUM_SIZE),
                           vlen=values)
        if tag == Tag.ARRAY_TYPE:
            return self._array(die)
        if tag == Tag.SUBROUTINE_TYPE:
            return BtfType(at, BtfKind.FUNC_PROTO, name, 0, _int(die, At.TYPE))
        return BtfType(at, BtfKind.UNKNOWN, name)

    def _member(self, die: Die) -> BtfMember:
        bits = _int(die, At.BIT_SIZE)
        if At.DATA_BIT_OFFSET in die.attributes:
            bit_offset = _int(die, At.DATA_BIT_OFFSET)
        else:
            bit_offset = 8 * self._location(die)
            if bits and At.BIT_OFFSET in die.attributes:
                # DWARF 2/3 bitfields count from the storage unit's most significant bit.
                storage = _int(die, At.BYTE_SIZE) or self.sizeof(self.type_by_id(_int(die, At.TYPE)))
                bit_offset += 8 * storage - _int(die, At.BIT_OFFSET) - bits
        return BtfMember(_name(die), _int(die, At.TYPE), bit_offset, bits)

    def _location(self, die: Die) -> int:
        """``DW_AT_data_member_location``: a constant, or ``DW_OP_plus_uconst``/``constu`` N."""
        value = die.attributes.get(At.DATA_MEMBER_LOCATION, 0)
        if isinstance(value, int):
            return value
        if isinstance(value, bytes) and value and value[0] in (DW_OP_PLUS_UCONST, DW_OP_CONSTU):
            try:
                return uleb128(value, 1)[0]
            except IndexError:
                pass
        raise DwarfFormatError(f"{self.name}: member {_name(die)!r} at entry {die.offset:#x}: "
                               f"data_member_location {value!r} is not a constant offset")

    def _array(self, die: Die) -> BtfType:
        dims = [self._dies[c] for c in die.children if self._dies[c].tag == Tag.SUBRANGE_TYPE]
        elem = _int(die, At.TYPE)
        if not dims:  # a flexible array without a subrange
            return BtfType(die.offset, BtfKind.ARRAY, "", 0, elem, (), BtfArray(elem, 0, 0))
        # Innermost dimension first: each outer array's element is the next inner one.
        ids = [die.offset] + [d.offset for d in dims[1:]]
        inner = elem
        for dim_id, dim in reversed(list(zip(ids, dims, strict=True))):
            if At.COUNT in dim.attributes:
                count = _int(dim, At.COUNT)
            elif At.UPPER_BOUND in dim.attributes:
                count = _int(dim, At.UPPER_BOUND) + 1
            else:
                count = 0
            t = BtfType(dim_id, BtfKind.ARRAY, "", 0, inner, (),
                        BtfArray(inner, _int(dim, At.TYPE), count))
            self._decoded[dim_id] = t
            inner = dim_id
        return self._decoded[die.offset]


def _defines(dies: dict[int, Die], struct_name: str) -> bool:
    return any(d.tag == Tag.STRUCTURE_TYPE and _name(d) == struct_name
               and At.DECLARATION not in d.attributes for d in dies.values())


class _UnitSearch:
    """Finds the units of ``.debug_info`` that may define a structure, and decodes them."""

    def __init__(self, info: bytes | memoryview, sections: DwarfSections) -> None:
        self.info = info
        self.sections = sections

    def _patterns(self, struct_name: str) -> list[bytes]:
        """What a unit naming ``struct_name`` holds: the name inline, or (as the low four
        bytes of a 4- or 8-byte offset) where it is in ``.debug_str``."""
        needle = struct_name.encode()
        offsets = _string_offsets(self.sections.strings, needle)
        return [needle + b"\0"] + [off.to_bytes(4, "little") for off in offsets]

    def in_order(self, struct_name: str) -> Iterator[UnitHeader]:
        """The units naming ``struct_name``, in order, each searched as it comes: cheap when
        an early one defines it, as one of the kernel's first units does ``task_struct``; a
        structure no unit defines costs a search of the whole section."""
        patterns = self._patterns(struct_name)
        for unit in unit_headers(self.info, self.sections.name):
            chunk = bytes(self.info[unit.offset:unit.end])
            if any(p in chunk for p in patterns):
                yield unit

    def first_defining(self, struct_name: str, candidates: Iterator[UnitHeader]
                       ) -> tuple[dict[int, Die] | None, int]:
        """The entries of the first of ``candidates`` defining ``struct_name`` completely,
        and its offset (at most :data:`MAX_UNITS_DECODED` are decoded)."""
        s = self.sections
        for decoded, unit in enumerate(candidates):
            if decoded == MAX_UNITS_DECODED:
                break
            chunk = bytes(self.info[unit.offset:unit.end])
            one = DwarfSections(chunk, s.abbrev, s.strings, s.line_strings, s.str_offsets,
                                s.name, unit.offset)
            dies = read_unit(one, parse_unit_header(chunk, 0, s.name, unit.offset))
            if _defines(dies, struct_name):
                return dies, unit.offset
        return None, 0


def _string_offsets(strings: bytes, needle: bytes) -> list[int]:
    """Every offset in ``.debug_str`` where the string ``needle`` starts (linkers share a
    string's tail with longer ones, so ``task_struct`` may also sit inside
    ``put_task_struct``)."""
    out = []
    pos = strings.find(needle + b"\0")
    while pos >= 0:
        out.append(pos)
        pos = strings.find(needle + b"\0", pos + 1)
    return out
