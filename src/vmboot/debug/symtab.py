"""A sorted, NumPy-backed table of kernel function symbols, with single and batch lookups.

Names are kept as one blob of NUL-terminated strings plus an offset per symbol, so a
100,000-symbol table costs a few arrays and no per-symbol Python objects; a name is
decoded only when a lookup returns it.

Lookup rule: the symbol *containing* an address is the last symbol whose start is <= the
address, if the address lies before ``start + size``. A symbol of size 0 (the last one of
a table whose sizes were inferred) contains only its own start address. Several symbols at
one address (aliases) are reduced to one: a strong (global/local) symbol wins over a weak
one, then a name without a leading underscore wins, then the first in the source — the
order the kernel's own ``scripts/kallsyms`` uses.

Section-end markers (``_etext``, ``_einittext``, ``__*_text_end``, ...; see
:data:`END_MARKER`) are not functions: a size inferred from the next symbol stops at
them, and they are then dropped, so an address past the end of kernel text is ``??``
rather than ``_etext+0x2db1ae``.
"""

from __future__ import annotations

import bisect
import re
from typing import Any, NamedTuple

import numpy as np

from vmboot.errors import SymbolFileError, SymbolSourceError

UNKNOWN_SYMBOL = "??"
"""The name reported for an address no symbol contains."""

_UNDERSCORE = ord("_")

U64Array = np.ndarray[Any, np.dtype[np.uint64]]
I64Array = np.ndarray[Any, np.dtype[np.int64]]
BoolArray = np.ndarray[Any, np.dtype[np.bool_]]


END_MARKER = re.compile(
    rb"(?<=\0)(?:_etext|_einittext|_end|__end_\w+|__\w+_text_end|__indirect_thunk_end)(?=\0)")
"""Linker symbols that mark the end of a text section, matched in a NUL-separated name blob
(a name at offset 0 is handled separately)."""

ADDRESS_MAX = (1 << 64) - 1
"""The largest guest virtual address."""


class SymbolMatch(NamedTuple):
    """The result of a lookup: ``name`` (``"??"`` if unknown), ``start``, ``offset``, ``size``.

    A named tuple rather than a dataclass: single lookups create one per call, and a tuple
    is several times cheaper to build.
    """

    address: int
    name: str
    start: int
    offset: int
    size: int

    @property
    def known(self) -> bool:
        return self.name != UNKNOWN_SYMBOL

    def __str__(self) -> str:
        if not self.known:
            return UNKNOWN_SYMBOL
        return f"{self.name}+{self.offset:#x}/{self.size:#x}"


def _end_marker_offsets(blob: bytes) -> I64Array:
    """Offsets in ``blob`` of the names that match :data:`END_MARKER`."""
    found = [m.start() for m in END_MARKER.finditer(blob)]
    head = END_MARKER.match(b"\0" + blob, 1)
    if head is not None:
        found.append(0)
    return np.asarray(found, dtype=np.int64)


_new_match = tuple.__new__
"""Builds a :class:`SymbolMatch` from a tuple of its fields without its keyword handling."""


class SymbolTable:
    """Function symbols sorted by address: ``addresses``, ``sizes`` and lazily decoded names."""

    def __init__(self, addresses: U64Array, sizes: U64Array, name_offsets: I64Array,
                 names_blob: bytes, source: str) -> None:
        self.addresses = addresses
        self.sizes = sizes
        self.ends = addresses + sizes
        self._name_offsets = name_offsets
        self._blob = names_blob
        self.source = source
        self._starts_list: list[int] | None = None
        self._ends_list: list[int] = []
        self._name_cache: dict[int, str] = {}
        self._slid: dict[int, SymbolTable] = {}

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def build(cls, addresses: U64Array, sizes: U64Array, name_offsets: I64Array, names_blob: bytes,
              source: str, weak: BoolArray | None = None) -> SymbolTable:
        """Sort, drop aliases (see the module docstring) and infer missing sizes (size 0).

        ``names_blob`` holds NUL-terminated names; ``name_offsets`` index into it.
        Raises :class:`SymbolSourceError` when there is no symbol at all.
        """
        if addresses.size == 0:
            raise SymbolSourceError(f"{source}: no function symbols (FUNC, or t/T/w/W in a map)")
        addresses = addresses.astype(np.uint64, copy=False)
        sizes = sizes.astype(np.uint64, copy=False)
        name_offsets = name_offsets.astype(np.int64, copy=False)
        blob = np.frombuffer(names_blob, dtype=np.uint8)
        underscore = blob[name_offsets] == _UNDERSCORE
        weak_key = weak.astype(np.uint8) if weak is not None else np.zeros(addresses.size, np.uint8)
        order = np.lexsort((np.arange(addresses.size), underscore.astype(np.uint8), weak_key, addresses))
        addresses = addresses[order]
        sizes = sizes[order]
        name_offsets = name_offsets[order]
        first = np.ones(addresses.size, dtype=bool)
        first[1:] = addresses[1:] != addresses[:-1]
        # An alias may carry the size where the preferred name has none.
        if not first.all():
            group = np.cumsum(first) - 1
            best_size = np.zeros(int(group[-1]) + 1, dtype=np.uint64)
            np.maximum.at(best_size, group, sizes)
            addresses, name_offsets = addresses[first], name_offsets[first]
            sizes = np.where(sizes[first] != 0, sizes[first], best_size)
        missing = sizes == 0
        if missing.any():
            nxt = np.empty_like(addresses)
            nxt[:-1] = addresses[1:]
            nxt[-1] = addresses[-1]
            sizes = np.where(missing, nxt - addresses, sizes)
        marker = np.isin(name_offsets, _end_marker_offsets(names_blob))
        if marker.any() and not marker.all():
            keep = ~marker
            addresses, sizes, name_offsets = addresses[keep], sizes[keep], name_offsets[keep]
        return cls(addresses, sizes, name_offsets, names_blob, source)

    @classmethod
    def from_names(cls, addresses: list[int] | U64Array, names: list[bytes], source: str,
                   sizes: list[int] | U64Array | None = None,
                   weak: list[bool] | BoolArray | None = None) -> SymbolTable:
        """Build from Python lists (System.map, kallsyms); sizes default to inferred."""
        lengths = np.fromiter((len(n) + 1 for n in names), dtype=np.int64, count=len(names))
        offsets = np.zeros(len(names), dtype=np.int64)
        if len(names) > 1:
            np.cumsum(lengths[:-1], out=offsets[1:])
        blob = b"\0".join(names) + b"\0"
        addr = np.asarray(addresses, dtype=np.uint64)
        size = (np.zeros(addr.size, dtype=np.uint64) if sizes is None
                else np.asarray(sizes, dtype=np.uint64))
        weak_arr = None if weak is None else np.asarray(weak, dtype=bool)
        return cls.build(addr, size, offsets, blob, source, weak_arr)

    # -- inspection ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.addresses.size)

    def name_at(self, index: int) -> str:
        """The name of symbol ``index`` (in address order); decoded names are cached."""
        name = self._name_cache.get(index)
        if name is None:
            start = int(self._name_offsets[index])
            end = self._blob.index(b"\0", start)
            name = self._name_cache[index] = self._blob[start:end].decode("utf-8", "replace")
        return name

    def names(self) -> list[str]:
        """Every name, in address order."""
        return [self.name_at(i) for i in range(len(self))]

    def address_of(self, name: str) -> int | None:
        """The address of the first symbol called ``name``, or None (a linear scan)."""
        needle = name.encode() + b"\0"
        pos = -1
        while True:
            pos = self._blob.find(needle, pos + 1)
            if pos < 0:
                return None
            if pos == 0 or self._blob[pos - 1] == 0:
                hits = np.flatnonzero(self._name_offsets == pos)
                if hits.size:
                    return int(self.addresses[hits[0]])

    def items(self) -> list[tuple[int, str, int]]:
        """``(address, name, size)`` for every symbol, in address order."""
        return [(int(a), self.name_at(i), int(s))
                for i, (a, s) in enumerate(zip(self.addresses, self.sizes, strict=True))]

    # -- lookups ------------------------------------------------------------------------------
    def lookup_indices(self, addresses: U64Array | list[int]) -> I64Array:
        """Batch lookup: the index of the symbol containing each address, or -1.

        Python ints outside 0..2**64-1 (an address plus an offset that overflowed) are in no
        symbol: they get -1, as unknown addresses do.
        """
        if not isinstance(addresses, np.ndarray):
            in_range = [0 <= a <= ADDRESS_MAX for a in addresses]
            if not all(in_range):
                idx = self.lookup_indices([a if ok else 0 for a, ok in
                                           zip(addresses, in_range, strict=True)])
                idx[~np.asarray(in_range, dtype=bool)] = -1
                return idx
        addr = np.asarray(addresses, dtype=np.uint64)
        idx = np.searchsorted(self.addresses, addr, side="right").astype(np.int64) - 1
        safe = np.maximum(idx, 0)
        inside = (idx >= 0) & ((addr < self.ends[safe]) | (addr == self.addresses[safe]))
        return np.where(inside, idx, -1)

    def lookup(self, address: int) -> SymbolMatch:
        """The symbol containing ``address``, or a match named ``"??"``.

        Uses Python lists and :mod:`bisect` (built on first use): for one address at a time
        that is several times faster than a NumPy call; use :meth:`lookup_indices` for many.
        """
        starts = self._starts_list
        if starts is None:
            starts = self._starts_list = self.addresses.tolist()
            self._ends_list = self.ends.tolist()
        idx = bisect.bisect_right(starts, address) - 1
        if idx >= 0:
            start = starts[idx]
            end = self._ends_list[idx]
            if address < end or address == start:
                name = self._name_cache.get(idx)
                if name is None:
                    name = self.name_at(idx)
                # tuple.__new__ skips the named tuple's Python-level __new__ (a third of the
                # cost of a lookup); the fields are in declaration order.
                return _new_match(SymbolMatch, (address, name, start, address - start, end - start))
        return _new_match(SymbolMatch, (address, UNKNOWN_SYMBOL, 0, 0, 0))

    def lookup_many(self, addresses: list[int]) -> list[SymbolMatch]:
        """Batch lookup returning :class:`SymbolMatch` objects."""
        idx = self.lookup_indices(addresses)
        out = []
        for address, i in zip(addresses, idx.tolist(), strict=True):
            if i < 0:
                out.append(SymbolMatch(address, UNKNOWN_SYMBOL, 0, 0, 0))
            else:
                start = int(self.addresses[i])
                out.append(SymbolMatch(address, self.name_at(i), start, address - start,
                                       int(self.sizes[i])))
        return out

    def slid(self, slide: int) -> SymbolTable:
        """The same table with every address moved by ``slide`` bytes (KASLR)."""
        if slide == 0:
            return self
        if not -(1 << 64) < slide < 1 << 64:
            raise SymbolFileError(f"{self.source}: slide {slide:#x} does not fit in 64 bits")
        hit = self._slid.get(slide)
        if hit is not None:  # one KASLR slide per boot: trace after trace reuses the table
            return hit
        # Modulo 2**64, as the CPU adds addresses: a slide of 2**64 - 1 moves down by one.
        moved = self.addresses + np.uint64(slide % (1 << 64))
        table = SymbolTable(moved, self.sizes, self._name_offsets, self._blob,
                            f"{self.source} (slide {slide:+#x})")
        self._slid = {slide: table}
        return table
