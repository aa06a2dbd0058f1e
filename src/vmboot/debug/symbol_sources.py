"""Where kernel symbols come from: a vmlinux's .symtab, a System.map, or the kernel image's kallsyms.

:func:`load_symbols` tries, in order, the vmlinux, the System.map (the fallback when the
vmlinux is missing or unreadable) and finally the kallsyms tables inside a kernel image.
Each loaded table is memoised per source — a path by (real path, mtime, size), a file
object by identity — until :func:`clear_symbol_cache`.

What counts as a function symbol:

* vmlinux ``.symtab``: ``STT_FUNC``, and ``STT_NOTYPE`` with a non-zero size (asm entry
  points); undefined (``SHN_UNDEF``) and zero-valued symbols are skipped. Sizes of 0 are
  inferred from the next symbol.
* System.map and kallsyms: types ``t``, ``T``, ``w``, ``W``; every size is inferred.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar, cast

import numpy as np

from vmboot.debug.symtab import SymbolTable
from vmboot.elf import SHN_UNDEF, STB_WEAK, STT_FUNC, STT_NOTYPE, ElfFile
from vmboot.errors import ElfFormatError, SymbolFileError, SymbolSourceError, VmbootError

T = TypeVar("T")

SymbolSource = str | os.PathLike[str] | IO[bytes] | bytes
"""A path, a binary file object, or the file's bytes."""

FUNCTION_MAP_TYPES = frozenset(b"tTwW")
"""System.map / kallsyms type letters of text (function) symbols."""
WEAK_MAP_TYPES = frozenset(b"wW")

PLACEHOLDER_MARKER = b"The real System.map is in"
"""Debian ships a one-line System.map saying this; the real one is in the -dbg package."""

_MAP_LINE = re.compile(rb"^([0-9A-Fa-f]{1,16})[ \t]+(\S)[ \t]+(\S+)(?:[ \t]+\[\S+\])?[ \t]*\r?$", re.M)

_cache: dict[tuple[object, ...], tuple[object, object]] = {}
_lock = threading.Lock()


def clear_symbol_cache() -> None:
    """Forget every memoised symbol table."""
    with _lock:
        _cache.clear()


def source_name(source: SymbolSource) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    return str(getattr(source, "name", "<file object>"))


def _memoised(kind: str, source: SymbolSource, load: Callable[[], T]) -> T:
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        st = os.stat(path)
        key: tuple[object, ...] = (kind, os.path.realpath(path), st.st_mtime_ns, st.st_size)
    else:
        key = (kind, "object", id(source))
    with _lock:
        hit = _cache.get(key)
    if hit is not None:
        return cast(T, hit[1])
    table = load()
    with _lock:
        # Holding the file object keeps its id from being reused while the entry lives.
        _cache[key] = (source, table)
    return table


def memoised(kind: str, source: SymbolSource, load: Callable[[], T]) -> T:
    """Memoise ``load()`` per (``kind``, source) like the symbol tables; for other per-file data."""
    return _memoised(kind, source, load)


def read_all(source: SymbolSource) -> bytes:
    """The whole content of a path or binary file object (rewound first when possible)."""
    return _read_all(source)


def rewind(source: SymbolSource) -> None:
    """Seek a seekable file object back to its start (paths and bytes need nothing)."""
    if not isinstance(source, str | os.PathLike | bytes) and source.seekable():
        source.seek(0)


def _read_all(source: SymbolSource) -> bytes:
    if isinstance(source, str | os.PathLike):
        return Path(source).read_bytes()
    if isinstance(source, bytes):
        return source
    if source.seekable():
        source.seek(0)
    data = source.read()
    if not isinstance(data, bytes | bytearray):
        raise SymbolFileError(f"{source_name(source)}: file object must be opened in binary mode")
    return bytes(data)


# -- vmlinux ----------------------------------------------------------------------------------
def table_from_elf(elf: ElfFile) -> SymbolTable:
    """Function symbols of an open ELF file's ``.symtab``."""
    syms_view, strtab_view = elf.symbol_table()
    # Copy out (a few MB at most) so that no view pins the file's mapping, even in a traceback.
    syms = syms_view.copy()
    strtab = bytes(strtab_view)
    del syms_view
    strtab_view.release()
    stype = syms["st_info"] & 0xF
    keep = ((stype == STT_FUNC) | ((stype == STT_NOTYPE) & (syms["st_size"] > 0)))
    keep &= (syms["st_shndx"] != SHN_UNDEF) & (syms["st_value"] != 0)
    chosen = syms[keep]
    if chosen.size == 0:
        raise SymbolSourceError(f"{elf.name}: .symtab has no function symbols "
                                f"(STT_FUNC, or STT_NOTYPE with a size)")
    name_off = chosen["st_name"].astype(np.int64)
    if int(name_off.max()) >= len(strtab):
        bad = int(name_off.max())
        raise ElfFormatError(f"{elf.name}: symbol st_name={bad:#x} lies outside the "
                             f"{len(strtab):#x}-byte string table")
    blob = strtab
    if not blob.endswith(b"\0"):
        blob += b"\0"
    weak = (chosen["st_info"] >> 4) == STB_WEAK
    return SymbolTable.build(chosen["st_value"], chosen["st_size"], name_off, blob,
                             f"{elf.name} (.symtab)", weak)


def load_vmlinux_symbols(source: SymbolSource) -> SymbolTable:
    """Function symbols from a vmlinux ELF file (path or binary file object), memoised."""
    def load() -> SymbolTable:
        rewind(source)
        elf = ElfFile.open(source)
        try:
            return table_from_elf(elf)
        finally:
            elf.close()
    return _memoised("vmlinux", source, load)


# -- System.map -------------------------------------------------------------------------------
def is_placeholder_system_map(data: bytes) -> bool:
    """True for Debian's one-line stand-in System.map."""
    return PLACEHOLDER_MARKER in data[:4096]


def parse_system_map(data: bytes, name: str = "<System.map>") -> SymbolTable:
    """Function symbols (t, T, w, W) of System.map text."""
    if is_placeholder_system_map(data):
        raise SymbolSourceError(
            f"{name}: a placeholder System.map ({data.strip()[:120].decode('utf-8', 'replace')!r}); "
            f"pass the kernel image to use its kallsyms, or the -dbg package's vmlinux"
        )
    addresses: list[int] = []
    names: list[bytes] = []
    weak: list[bool] = []
    matched = 0
    for m in _MAP_LINE.finditer(data):
        matched += 1
        kind = m.group(2)[0]
        if kind in FUNCTION_MAP_TYPES:
            addresses.append(int(m.group(1), 16))
            names.append(m.group(3))
            weak.append(kind in WEAK_MAP_TYPES)
    lines = [ln for ln in data.splitlines() if ln.strip()]
    if matched != len(lines):
        for number, line in enumerate(data.splitlines(), start=1):
            if line.strip() and not _MAP_LINE.match(line):
                raise SymbolFileError(
                    f"{name}: line {number}: {line[:80]!r} is not 'ADDRESS TYPE NAME' "
                    f"(hex address, one type letter, a name)"
                )
    if not addresses:
        raise SymbolSourceError(f"{name}: no function symbols (types t, T, w, W) among "
                                f"{matched} lines")
    return SymbolTable.from_names(addresses, names, f"{name} (System.map)", weak=weak)


def load_system_map(source: SymbolSource) -> SymbolTable:
    """Function symbols from a System.map (path or binary file object), memoised."""
    return _memoised("system_map", source,
                     lambda: parse_system_map(_read_all(source), source_name(source)))


# -- kernel image (kallsyms) ------------------------------------------------------------------
def load_kernel_symbols(source: SymbolSource) -> SymbolTable:
    """Function symbols from the kallsyms tables of a bzImage or vmlinux, memoised."""
    from vmboot.debug.kallsyms import kallsyms_from_image

    return _memoised("kallsyms", source,
                     lambda: kallsyms_from_image(_read_all(source), source_name(source)))


# -- all together -----------------------------------------------------------------------------
def load_symbols(vmlinux: SymbolSource | None = None, system_map: SymbolSource | None = None,
                 kernel: SymbolSource | None = None) -> SymbolTable:
    """The first usable table of: vmlinux .symtab, System.map, kernel-image kallsyms.

    Raises :class:`SymbolSourceError` naming every source tried and why each failed.
    """
    attempts: list[tuple[str, SymbolSource | None, Callable[[SymbolSource], SymbolTable]]] = [
        ("vmlinux", vmlinux, load_vmlinux_symbols),
        ("System.map", system_map, load_system_map),
        ("kernel image", kernel, load_kernel_symbols),
    ]
    failures: list[str] = []
    last: Exception | None = None
    for what, src, loader in attempts:
        if src is None:
            continue
        try:
            return loader(src)
        except FileNotFoundError as exc:
            failures.append(f"{what} {source_name(src)}: not found")
            last = exc
        except (OSError, VmbootError) as exc:  # the message may start with the name: say it once
            failures.append(f"{what} {source_name(src)}: {str(exc).removeprefix(f'{source_name(src)}: ')}")
            last = exc
    if not failures:
        raise SymbolSourceError("no symbol source: pass vmlinux=, system_map= or kernel= "
                                "(a vmlinux with .symtab, a System.map, or a kernel image)")
    raise SymbolSourceError("no usable symbol source: " + "; ".join(failures)) from last
