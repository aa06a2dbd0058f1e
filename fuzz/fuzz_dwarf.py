"""DWARF sections -> DwarfTypes (unit headers, abbreviations, entries), then every type
decoded and every struct's members, sizes and offsets, as for BTF."""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

import struct

from fuzz.harness import Target, atheris_main
from fuzz.seeds import dwarf_seeds
from vmboot.debug.btf import BtfKind
from vmboot.debug.dwarf import DwarfSections, read_unit, unit_headers
from vmboot.debug.dwarf_types import DwarfTypes
from vmboot.errors import VmbootError

MAX_TYPES = 256
LENGTHS = struct.Struct("<II")


def _offsets() -> list[int]:
    offs = set(range(0, LENGTHS.size))
    for seed in dwarf_seeds():
        offs.update(range(LENGTHS.size, min(len(seed), 400)))
    return sorted(offs)


def one_input(data: bytes) -> None:
    if len(data) < LENGTHS.size:
        return
    info_len, abbrev_len = LENGTHS.unpack_from(data)
    info = data[LENGTHS.size:LENGTHS.size + info_len]
    abbrev = data[LENGTHS.size + info_len:LENGTHS.size + info_len + abbrev_len]
    strings = data[LENGTHS.size + info_len + abbrev_len:]
    sections = DwarfSections(info, abbrev, strings, name="<fuzz>")
    try:
        for unit in unit_headers(info, "<fuzz>"):
            read_unit(sections, unit)
    except VmbootError:
        pass
    try:
        types = DwarfTypes.from_sections(info, sections)
    except VmbootError:
        return
    for type_id in types.type_ids()[:MAX_TYPES]:
        try:
            t = types.type_by_id(type_id)
            types.resolve(t)
            if t.kind in (BtfKind.STRUCT, BtfKind.UNION) and t.name:
                types.find(t.name)
                for m in t.members:
                    if m.name:
                        types.member(t, m.name)
                        types.offsetof(t.name, m.name)
            types.sizeof(t)
        except VmbootError:
            continue


TARGET = Target("dwarf", one_input, lambda: list(dwarf_seeds()), _offsets, max_len=1 << 14,
                description="DWARF unit headers, abbreviations and entries; DwarfTypes queries")

if __name__ == "__main__":
    atheris_main(TARGET)
