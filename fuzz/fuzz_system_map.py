"""System.map text -> SymbolTable, and every lookup on the result."""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

from fuzz.harness import Target, atheris_main
from fuzz.seeds import system_map_seeds
from fuzz.symtab_checks import exercise_table
from vmboot.debug.symbol_sources import clear_symbol_cache, load_symbols, parse_system_map
from vmboot.errors import VmbootError


def _offsets() -> list[int]:
    offs: set[int] = set()
    for s in system_map_seeds():
        pos = 0
        for line in s.splitlines(keepends=True)[:64]:
            offs.update((pos, pos + 16, pos + 17, pos + 18, pos + 19, pos + len(line) - 1))
            pos += len(line)
    return sorted(offs)


def one_input(data: bytes) -> None:
    try:
        load_symbols(system_map=data)
    except VmbootError:
        pass
    finally:
        clear_symbol_cache()
    table = parse_system_map(data, "<fuzz>")
    exercise_table(table, data)


TARGET = Target("system_map", one_input, lambda: list(system_map_seeds()), _offsets, max_len=1 << 16,
                description="parse_system_map / load_symbols(system_map=) and lookups")

if __name__ == "__main__":
    atheris_main(TARGET)
