"""kallsyms tables inside kernel bytes -> Kallsyms -> function SymbolTable, and lookups."""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

import contextlib

from fuzz.harness import Target, atheris_main
from fuzz.seeds import kallsyms_offsets, kallsyms_seeds
from fuzz.symtab_checks import exercise_table
from vmboot.debug.kallsyms import decode_kallsyms, kallsyms_from_image
from vmboot.errors import VmbootError


def _offsets() -> list[int]:
    offs: set[int] = set()
    for s in kallsyms_seeds():
        offs.update(kallsyms_offsets(s))
    return sorted(offs)


def one_input(data: bytes) -> None:
    with contextlib.suppress(VmbootError):
        kallsyms_from_image(b"\x7fELF" + data[4:] if len(data) > 4 else data, "<fuzz>")
    syms = decode_kallsyms(data, "<fuzz>")
    n = len(syms)
    assert n == len(syms.types)
    for i in {0, n // 2, n - 1}:
        syms.name(i)
    try:
        table = syms.function_table("<fuzz>")
    except VmbootError:
        return
    exercise_table(table, data)


TARGET = Target("kallsyms", one_input, lambda: list(kallsyms_seeds()), _offsets, max_len=1 << 16,
                description="decode_kallsyms / kallsyms_from_image and lookups")

if __name__ == "__main__":
    atheris_main(TARGET)
