"""ELF reader: header, segments, sections, notes, .symtab, ORC sections, load_kernel on ELF."""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

import contextlib

from fuzz.harness import Target, atheris_main
from fuzz.seeds import elf_offsets, elf_seeds
from vmboot.debug.orc import OrcTable
from vmboot.elf import ElfFile, describe_elf_ident
from vmboot.errors import VmbootError
from vmboot.linux.loader.detect import describe_file, load_kernel


def _seed_offsets() -> list[int]:
    offs: set[int] = set()
    for s in elf_seeds():
        offs.update(elf_offsets(s))
    return sorted(offs)


def one_input(data: bytes) -> None:
    describe_elf_ident(data[:64])
    describe_file(data)
    with contextlib.suppress(VmbootError):
        load_kernel(data)
    elf = ElfFile(data, "<fuzz>")
    for seg in elf.segments:
        with contextlib.suppress(VmbootError):
            assert len(elf.segment_data(seg)) == seg.filesz
    for sec in elf.sections:
        with contextlib.suppress(VmbootError):
            elf.section_data(sec)
        elf.section(sec.name)
    for note in elf.notes():
        _ = note.name, note.type, note.desc
    try:
        syms, _strtab = elf.symbol_table()
        assert syms.size * 24 == len(elf.section_data(".symtab"))
    except VmbootError:
        pass
    table = OrcTable.from_elf(elf)
    if table is not None and len(table):
        for ip in (0, int(table.ips[0]), int(table.ips[-1]), (1 << 64) - 1):
            table.find(ip)
    elf.close()


TARGET = Target("elf", one_input, lambda: list(elf_seeds()), _seed_offsets, max_len=1 << 15,
                description="ElfFile: segments, sections, notes, symbol_table, ORC sections")

if __name__ == "__main__":
    atheris_main(TARGET)
