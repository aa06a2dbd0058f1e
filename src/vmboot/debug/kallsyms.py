"""Symbols from a kernel image itself: find and decode its kallsyms tables.

``scripts/kallsyms`` compresses every symbol name ("T" + name, the type letter first)
into bytes that index a 256-entry token table. Its output, in .rodata:

=========================  ===============================================================
kernels                    order (each table 8-byte aligned)
=========================  ===============================================================
4.6 .. 6.1                 offsets (s32 x N), relative_base (u64), num_syms, names,
                           markers (u32 per 256 names), token_table, token_index (u16 x 256)
6.2 .. 6.3                 as above, with seqs_of_names (3 bytes x N) after markers
6.4 ..                     num_syms, names, markers, token_table, token_index, offsets,
                           relative_base, seqs_of_names
=========================  ===============================================================

Name entries are a length byte (6.4+: two bytes when bit 7 is set, little-endian base 128)
then that many token indices. With ``CONFIG_KALLSYMS_ABSOLUTE_PERCPU`` (x86_64 SMP), a
non-negative offset is an absolute address and a negative one means
``relative_base - 1 - offset``; otherwise every offset is ``relative_base + (u32)offset``.

The search works like vmlinux-to-elf's: find the token table by the run of single-digit
tokens ("0\\0" .. "9\\0"), check it against the token index that follows, find the markers
just before the table, then ``num_syms`` and the names before the markers, and verify
every marker against the decoded names before trusting anything.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from vmboot.debug.symtab import SymbolTable
from vmboot.elf import ElfFile
from vmboot.errors import SymbolSourceError, VmbootError
from vmboot.linux.loader.vmlinux import uncompressed_kernel

TOKEN_COUNT = 256
DIGIT_TOKENS = b"".join(bytes([c]) + b"\0" for c in b"0123456789")
FIRST_DIGIT = ord("0")
ALIGN = 8
MARKER_STRIDE = 256
"""One marker per 256 names."""
MAX_MARKER_STEP = 256 * 1024
"""256 compressed names can never take more bytes than this."""
BIG_LENGTH_FLAG = 0x80
LENGTH_BITS = 7
MIN_SYMBOLS = 16
FUNCTION_TYPES = b"tTwW"
WEAK_TYPES = b"wW"
KERNEL_ADDRESS_MIN = 0xFFFF_8000_0000_0000

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _align(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) & ~(a - 1)


@dataclass(frozen=True, slots=True)
class KallsymsTables:
    """Where the tables were found (offsets in the searched bytes) and what they hold."""

    token_table: int
    token_index: int
    markers: int
    names: int
    num_syms: int
    offsets: int
    relative_base: int
    base: int
    absolute_percpu: bool
    big_lengths: bool


@dataclass(frozen=True, slots=True)
class Kallsyms:
    """Every decoded symbol: ``addresses`` (u64), ``types`` (type letters) and ``names``."""

    addresses: np.ndarray[Any, np.dtype[np.uint64]]
    types: bytes
    blob: bytes
    name_offsets: np.ndarray[Any, np.dtype[np.int64]]
    tables: KallsymsTables

    def __len__(self) -> int:
        return int(self.addresses.size)

    def name(self, i: int) -> str:
        start = int(self.name_offsets[i])
        return self.blob[start : self.blob.index(b"\0", start)].decode("utf-8", "replace")

    def function_table(self, source: str) -> SymbolTable:
        types = np.frombuffer(self.types, dtype=np.uint8)
        keep = np.isin(types, np.frombuffer(FUNCTION_TYPES, dtype=np.uint8))
        weak = np.isin(types[keep], np.frombuffer(WEAK_TYPES, dtype=np.uint8))
        return SymbolTable.build(self.addresses[keep], np.zeros(int(keep.sum()), np.uint64),
                                 self.name_offsets[keep], self.blob, f"{source} (kallsyms)", weak)


# -- token table ------------------------------------------------------------------------------
def _token_table_candidates(data: bytes) -> list[tuple[int, int, list[bytes]]]:
    """``(table_offset, index_offset, tokens)`` for every token table confirmed by its index.

    From a run of digit tokens, the NUL terminators lead back to the start of token 1;
    token 0's start cannot be found that way (the byte before the table need not be 0),
    so it comes from the token index that follows: ``index[1]`` is token 0's size.
    """
    found = []
    hit = data.find(DIGIT_TOKENS)
    while hit >= 0:
        candidate = _confirm_token_table(data, hit)
        if candidate is not None:
            found.append(candidate)
        hit = data.find(DIGIT_TOKENS, hit + 1)
    return found


def _confirm_token_table(data: bytes, digits: int) -> tuple[int, int, list[bytes]] | None:
    start1 = digits
    for _ in range(FIRST_DIGIT - 1):  # back to the start of token 1
        if start1 < 2 or data[start1 - 1] != 0:
            return None
        start1 = data.rfind(b"\0", 0, start1 - 1) + 1
    if start1 < 2 or data[start1 - 1] != 0:
        return None
    pos, starts = start1, [start1]
    for _ in range(TOKEN_COUNT - 1):  # tokens 1..255
        end = data.find(b"\0", pos)
        if end <= pos:
            return None
        pos = end + 1
        starts.append(pos)
    table_end = starts.pop()
    for index_off in range(table_end, _align(table_end) + 1):
        if index_off + 2 * TOKEN_COUNT > len(data):
            break
        idx = np.frombuffer(data, dtype="<u2", count=TOKEN_COUNT, offset=index_off).astype(np.int64)
        table = start1 - int(idx[1])
        if idx[0] != 0 or idx[1] < 2 or table < 0:
            continue
        if np.array_equal(idx[1:], np.asarray(starts, dtype=np.int64) - table) and \
                data.find(b"\0", table, start1 - 1) < 0:
            bounds = [table, *starts, table_end]
            tokens = [data[a : b - 1] for a, b in itertools.pairwise(bounds)]
            return table, index_off, tokens
    return None


def _find_markers(data: bytes, table: int) -> list[list[int]]:
    """Candidate u32 marker lists ending just before ``table`` (after up to 4 bytes of padding).

    Each candidate is the markers in order plus, last, their offset. A zero word right before
    the table is either alignment padding or the only marker (kernels with <= 256 symbols
    have a single marker, 0), so both readings are returned and the caller checks each.
    """
    starts = [table - 4]
    if table - 8 >= 0 and _U32.unpack_from(data, table - 4)[0] == 0:
        starts.append(table - 8)
    out: list[list[int]] = []
    for start in starts:
        found = _markers_from(data, start)
        if found is not None:
            out.append(found)
    return out


def _markers_from(data: bytes, p: int) -> list[int] | None:
    values: list[int] = []
    while p >= 0:
        v = _U32.unpack_from(data, p)[0]
        if values and not (v < values[-1] and values[-1] - v <= MAX_MARKER_STEP):
            return None
        values.append(v)
        if v == 0:
            return [*values[::-1], p]  # last element: the markers' offset
        p -= 4
    return None


def _entry_offsets(data: bytes, names: int, count: int, limit: int) -> tuple[list[int], bool] | None:
    """Offsets of ``count`` name entries from ``names`` (None if they overrun ``limit``)."""
    offs = []
    pos = names
    big = False
    for _ in range(count):
        if pos >= limit:
            return None
        offs.append(pos)
        n = data[pos]
        if n & BIG_LENGTH_FLAG:
            n = (n & (BIG_LENGTH_FLAG - 1)) | (data[pos + 1] << LENGTH_BITS)
            pos += 2
            big = True
        else:
            pos += 1
        if n == 0:
            return None
        pos += n
    offs.append(pos)
    return offs, big


def _markers_match(data: bytes, names: int, offs: list[int], at: int) -> bool:
    """Whether the u32 markers at ``at`` agree with the decoded entry offsets."""
    m = (len(offs) - 2) // MARKER_STRIDE + 1
    if at + 4 * m > len(data):
        return False
    markers = np.frombuffer(data, dtype="<u4", count=m, offset=at)
    want = np.asarray(offs[: (m - 1) * MARKER_STRIDE + 1 : MARKER_STRIDE], dtype=np.int64) - names
    return bool(np.array_equal(markers.astype(np.int64), want))


def _locate_before_markers(data: bytes, table: int, index: int) -> tuple[KallsymsTables, list[int]] | None:
    """Layouts whose markers end right before the token table (<= 6.1 and 6.4+)."""
    for found in _find_markers(data, table):
        located = _locate_with_markers(data, table, index, found)
        if located is not None:
            return located
    return None


def _locate_with_markers(data: bytes, table: int, index: int,
                         found: list[int]) -> tuple[KallsymsTables, list[int]] | None:
    if len(found) < 2:
        return None
    markers_off = found[-1]
    m = len(found) - 1
    lo, hi = MARKER_STRIDE * (m - 1) + 1, MARKER_STRIDE * m
    # num_syms is a u32 at an aligned offset before the names, which end before the markers.
    p = (markers_off - 4) & ~(ALIGN - 1)
    floor = max(0, markers_off - MAX_MARKER_STEP * m - 64)
    while p >= floor:
        n = _U32.unpack_from(data, p)[0]
        if lo <= n <= hi:
            names = _align(p + 4)
            walked = _entry_offsets(data, names, n, markers_off)
            if walked is not None:
                offs, big = walked
                if _align(offs[-1]) == markers_off and _markers_match(data, names, offs, markers_off):
                    tables = _addresses_layout(data, p, n, index, names, table, markers_off, big)
                    if tables is not None:
                        return tables, offs
        p -= ALIGN
    return None


def _locate_with_seqs(data: bytes, table: int, index: int) -> tuple[KallsymsTables, list[int]] | None:
    """6.2-6.3 (and backports): relative_base, num_syms, names, markers, seqs_of_names, tokens."""
    words = np.frombuffer(data, dtype="<u8", count=(table & ~(ALIGN - 1)) // ALIGN)
    cand = np.flatnonzero(words[:-1] >= np.uint64(KERNEL_ADDRESS_MIN))
    nxt = words[cand + 1]
    n = (nxt & np.uint64(0xFFFF_FFFF)).astype(np.int64)
    space = table - (cand.astype(np.int64) + 2) * ALIGN
    ok = ((nxt >> np.uint64(32)) == 0) & (n >= MIN_SYMBOLS) & (n * 5 < space)
    for c, count in zip(cand[ok][::-1].tolist(), n[ok][::-1].tolist(), strict=True):
        rb = c * ALIGN
        names = rb + 2 * ALIGN
        walked = _entry_offsets(data, names, count, table)
        if walked is None:
            continue
        offs, big = walked
        markers_off = _align(offs[-1])
        m = (count - 1) // MARKER_STRIDE + 1
        seqs = _align(markers_off + 4 * m)
        if _align(seqs + 3 * count) != table or not _markers_match(data, names, offs, markers_off):
            continue
        rel = np.frombuffer(data, dtype="<i4", count=count, offset=(rb - 4 * count) & ~(ALIGN - 1))
        base = _U64.unpack_from(data, rb)[0]
        tables = KallsymsTables(table, index, markers_off, names, rb + ALIGN,
                                (rb - 4 * count) & ~(ALIGN - 1), rb, base,
                                bool((rel < 0).sum() * 2 > count), big)
        return tables, offs
    return None


def _locate(data: bytes, table: int, index: int) -> tuple[KallsymsTables, list[int]] | None:
    return _locate_before_markers(data, table, index) or _locate_with_seqs(data, table, index)


def _addresses_layout(data: bytes, num_syms: int, n: int, index: int, names: int, table: int,
                      markers: int, big: bool) -> KallsymsTables | None:
    candidates = []
    # <= 6.3: offsets, relative_base, then num_syms.
    rb = num_syms - ALIGN
    if rb >= 0:
        candidates.append(((rb - 4 * n) & ~(ALIGN - 1), rb))
    # 6.4+: token_index, offsets, relative_base.
    offsets = _align(index + 2 * TOKEN_COUNT)
    candidates.append((offsets, _align(offsets + 4 * n)))
    for offs, rb in candidates:
        if offs < 0 or rb + 8 > len(data):
            continue
        base = _U64.unpack_from(data, rb)[0]
        if base >= KERNEL_ADDRESS_MIN:
            rel = np.frombuffer(data, dtype="<i4", count=n, offset=offs)
            absolute = bool((rel < 0).sum() * 2 > n)
            return KallsymsTables(table, index, markers, names, num_syms, offs, rb, base,
                                  absolute, big)
    return None


def _decode(data: bytes, tables: KallsymsTables, entries: list[int], tokens: list[bytes]) -> Kallsyms:
    n = len(entries) - 1
    starts = np.asarray(entries[:-1], dtype=np.int64)
    ends = np.asarray(entries[1:], dtype=np.int64)
    raw = np.frombuffer(data, dtype=np.uint8)
    head = np.where(raw[starts] & BIG_LENGTH_FLAG, 2, 1)
    body_start = starts + head
    lengths = ends - body_start
    # Gather every token index of every entry into one array.
    total = int(lengths.sum())
    seg = np.repeat(body_start - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    token_ids = raw[seg + np.arange(total)]
    table_bytes = np.frombuffer(b"".join(t + b"\0" for t in tokens), dtype=np.uint8)
    tok_len = np.array([len(t) for t in tokens], dtype=np.int64)
    tok_start = np.concatenate(([0], np.cumsum(tok_len + 1)[:-1]))
    out_len = tok_len[token_ids]
    out_total = int(out_len.sum())
    src = np.repeat(tok_start[token_ids] - np.concatenate(([0], np.cumsum(out_len)[:-1])), out_len)
    text = table_bytes[src + np.arange(out_total)]
    # Expanded length of each name ("type letter + name").
    per_entry = np.add.reduceat(out_len, np.concatenate(([0], np.cumsum(lengths)[:-1])))
    name_start = np.concatenate(([0], np.cumsum(per_entry)[:-1]))
    types = text[name_start].tobytes()
    text = text.copy()
    text[name_start] = 0  # the type letters become the separators of the previous names
    blob = text[1:].tobytes() + b"\0"
    rel = np.frombuffer(data, dtype="<i4", count=n, offset=tables.offsets).astype(np.int64)
    base = np.uint64(tables.base)
    if tables.absolute_percpu:
        neg = rel < 0
        addr = np.where(neg, base + (-rel - 1).clip(min=0).astype(np.uint64), rel.astype(np.uint64))
    else:
        addr = base + (rel & 0xFFFF_FFFF).astype(np.uint64)
    return Kallsyms(addr.astype(np.uint64), types, blob, name_start.astype(np.int64), tables)


def decode_kallsyms(data: bytes, name: str = "<kernel>") -> Kallsyms:
    """Find and decode the kallsyms tables anywhere in ``data`` (an uncompressed kernel)."""
    candidates = _token_table_candidates(data)
    if not candidates:
        raise SymbolSourceError(f"{name}: no kallsyms token table found (no run of the tokens "
                                f"'0'..'9'); is the kernel built with CONFIG_KALLSYMS?")
    for table, index, tokens in candidates:
        located = _locate(data, table, index)
        if located is not None:
            tables, entries = located
            if len(entries) - 1 < MIN_SYMBOLS:
                continue
            return _decode(data, tables, entries, tokens)
    raise SymbolSourceError(
        f"{name}: found {len(candidates)} kallsyms token table(s) at "
        f"{', '.join(hex(c[0]) for c in candidates)} but no markers/num_syms/names before them "
        f"that decode consistently"
    )


def kallsyms_from_image(image: bytes, name: str = "<kernel>") -> SymbolTable:
    """Function symbols (t, T, w, W) from the kallsyms of a bzImage or vmlinux."""
    try:
        data = uncompressed_kernel(image, name)
    except VmbootError as exc:
        detail = str(exc).removeprefix(f"{name}: ")  # name the file once
        raise SymbolSourceError(f"{name}: cannot get the uncompressed kernel: {detail}") from exc
    rodata = _rodata(data, name)
    syms = decode_kallsyms(rodata if rodata is not None else data, name)
    return syms.function_table(name)


def _rodata(data: bytes, name: str) -> bytes | None:
    """The .rodata bytes of an ELF kernel (where kallsyms lives), or None."""
    if data[:4] != b"\x7fELF":
        return None
    try:
        elf = ElfFile(data, name)
        sec = elf.section(".rodata")
        return bytes(elf.section_data(sec)) if sec is not None else None
    except VmbootError:
        return None
