"""Addresses of every kernel symbol by name, data as well as functions (``init_task``,
``__per_cpu_offset``, per-CPU variables), for reading kernel data structures.

From, in order: a vmlinux's ``.symtab``, a System.map, the kallsyms of a kernel image.
Addresses are link-time ones; :func:`runtime_address` applies a KASLR slide. Per-CPU
variables of an SMP kernel are offsets into each CPU's area (small numbers below the
kernel's address range) and are not moved by KASLR.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from vmboot.debug.kaslr import KERNEL_MAP_BASE
from vmboot.debug.symbol_sources import SymbolSource, memoised, read_all, rewind, source_name
from vmboot.elf import SHN_UNDEF, ElfFile
from vmboot.errors import SymbolSourceError, VmbootError

_MAP_LINE = re.compile(rb"^([0-9A-Fa-f]{1,16})[ \t]+\S[ \t]+(\S+)", re.M)


def _from_vmlinux(source: SymbolSource) -> dict[str, int]:
    rewind(source)
    with ElfFile.open(source) as elf:
        syms, strtab_view = elf.symbol_table()
        strtab = bytes(strtab_view)
        out: dict[str, int] = {}
        for name_off, shndx, value in zip(syms["st_name"].tolist(), syms["st_shndx"].tolist(),
                                          syms["st_value"].tolist(), strict=True):
            if name_off == 0 or shndx == SHN_UNDEF:
                continue
            end = strtab.find(b"\0", name_off)
            name = strtab[name_off:end].decode("utf-8", "replace")
            out.setdefault(name, value)
        del syms
        strtab_view.release()
        return out


def _from_system_map(source: SymbolSource) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in _MAP_LINE.finditer(read_all(source)):
        out.setdefault(m.group(2).decode("utf-8", "replace"), int(m.group(1), 16))
    return out


def _from_kallsyms(source: SymbolSource) -> dict[str, int]:
    from vmboot.debug.kallsyms import _rodata, decode_kallsyms
    from vmboot.linux.loader.vmlinux import uncompressed_kernel

    name = source_name(source)
    data = uncompressed_kernel(read_all(source), name)
    syms = decode_kallsyms(_rodata(data, name) or data, name)
    out: dict[str, int] = {}
    for i, addr in enumerate(syms.addresses.tolist()):
        out.setdefault(syms.name(i), addr)
    return out


def _load_memoised(what: str, src: SymbolSource,
                   load: Callable[[SymbolSource], dict[str, int]]) -> dict[str, int]:
    return memoised(f"all-symbols-{what}", src, lambda: load(src))


def load_symbol_addresses(vmlinux: SymbolSource | None = None,
                          system_map: SymbolSource | None = None,
                          kernel: SymbolSource | None = None) -> dict[str, int]:
    """Every symbol's link-time address, from the first source that loads (memoised)."""
    attempts: list[tuple[str, SymbolSource | None, Callable[[SymbolSource], dict[str, int]]]] = [
        ("vmlinux", vmlinux, _from_vmlinux), ("System.map", system_map, _from_system_map),
        ("kernel image", kernel, _from_kallsyms)]
    failures = []
    for what, src, load in attempts:
        if src is None:
            continue
        try:
            found = _load_memoised(what, src, load)
        except (OSError, VmbootError) as exc:
            failures.append(f"{what} {source_name(src)}: {exc}")
            continue
        if found:
            return found
        failures.append(f"{what} {source_name(src)}: no symbols")
    raise SymbolSourceError("no kernel symbol addresses: " + ("; ".join(failures) or
                            "pass vmlinux=, system_map= or kernel="))


def runtime_address(symbols: Mapping[str, int], name: str, slide: int) -> int:
    """The running kernel's address of ``name``: KASLR-slid unless it is a per-CPU offset."""
    try:
        linked = symbols[name]
    except KeyError:
        raise SymbolSourceError(f"kernel symbol {name!r} is not in the symbol table; "
                                f"is this the kernel's own vmlinux/System.map/image?") from None
    return linked + slide if linked >= KERNEL_MAP_BASE else linked
