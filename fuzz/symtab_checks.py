"""Exercise a :class:`~vmboot.debug.symtab.SymbolTable` the way vmboot's users do."""

from __future__ import annotations

from vmboot.debug.symtab import SymbolTable

MASK64 = (1 << 64) - 1


def exercise_table(table: SymbolTable, data: bytes) -> None:
    """Every accessor, lookups at edges, and KASLR slides as ``vmboot symbolize --slide``
    accepts them (any 64-bit value, either sign)."""
    n = len(table)
    assert n > 0
    names = table.names()
    table.items()
    first, last = int(table.addresses[0]), int(table.addresses[-1])
    probes = [0, first, max(0, first - 1), first + 1, last, min(last + 1, MASK64), MASK64,
              (first + last) // 2]
    for address in probes:
        match = table.lookup(address)
        str(match)
        if match.known:
            assert match.start <= address and match.offset == address - match.start
    table.lookup_many(probes)
    table.address_of(names[0])
    table.address_of(names[-1] + "x")
    tail = int.from_bytes(data[-8:].ljust(8, b"\0"), "little")
    for slide in (0x1000000, -0x1000000, tail, -tail):
        moved = table.slid(slide)
        moved.lookup(first + slide)
        moved.lookup_many([(first + slide) & MASK64])
