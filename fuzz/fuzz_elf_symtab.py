"""vmlinux .symtab -> SymbolTable (vmboot.debug), and every lookup on the result."""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

from fuzz.fuzz_elf import _seed_offsets
from fuzz.harness import Target, atheris_main
from fuzz.seeds import elf_seeds
from fuzz.symtab_checks import exercise_table
from vmboot.debug.symbol_sources import table_from_elf
from vmboot.elf import ElfFile


def one_input(data: bytes) -> None:
    elf = ElfFile(data, "<fuzz>")
    try:
        table = table_from_elf(elf)
    finally:
        elf.close()
    exercise_table(table, data)


TARGET = Target("elf_symtab", one_input, lambda: list(elf_seeds()), _seed_offsets, max_len=1 << 15,
                description="table_from_elf and SymbolTable lookups")

if __name__ == "__main__":
    atheris_main(TARGET)
