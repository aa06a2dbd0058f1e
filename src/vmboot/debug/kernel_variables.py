"""Link-time addresses of the kernel variables a vmcore needs (data symbols, not functions).

vmboot's symbol tables keep functions only; a vmcore also needs a few variables
(``vmcoreinfo_data``, ``page_offset_base``, ``phys_base``...). They come from a vmlinux's
``.symtab`` (any symbol type) or from the kallsyms of a kernel image (with
``CONFIG_KALLSYMS_ALL``, data symbols are listed too).
"""

from __future__ import annotations

import numpy as np

from vmboot.debug.symbol_sources import SymbolSource, memoised, read_all, rewind
from vmboot.elf import SHN_UNDEF, ElfFile
from vmboot.errors import VmbootError

VMCORE_VARIABLES: tuple[str, ...] = (
    "vmcoreinfo_data", "vmcoreinfo_size", "vmcoreinfo_note", "page_offset_base", "phys_base",
    "linux_banner", "swapper_pg_dir", "init_top_pgt", "_stext", "init_uts_ns", "current_task",
)
PERCPU_LIMIT = 1 << 24
"""x86_64 SMP per-CPU symbols are offsets from the CPU's per-CPU area, all below this."""


def _find_names(blob: bytes, name_offsets: np.ndarray, addresses: np.ndarray) -> dict[str, int]:
    """Addresses of :data:`VMCORE_VARIABLES` in a table of NUL-terminated names."""
    found: dict[str, int] = {}
    for name in VMCORE_VARIABLES:
        needle = name.encode() + b"\0"
        pos = blob.find(needle)
        while pos >= 0 and name not in found:
            if pos == 0 or blob[pos - 1] == 0:
                hits = np.flatnonzero(name_offsets == pos)
                if hits.size:
                    found[name] = int(addresses[hits[0]])
            pos = blob.find(needle, pos + 1)
    return found


def _from_elf(source: SymbolSource) -> dict[str, int]:
    rewind(source)
    with ElfFile.open(source) as elf:
        syms_view, strtab = elf.symbol_table()
        syms = syms_view[syms_view["st_shndx"] != SHN_UNDEF].copy()
        table = bytes(strtab)
        del syms_view
        strtab.release()
    return _find_names(table, syms["st_name"].astype(np.int64), syms["st_value"])


def _from_kallsyms(source: SymbolSource) -> dict[str, int]:
    from vmboot.debug.kallsyms import _rodata, decode_kallsyms
    from vmboot.linux.loader.vmlinux import uncompressed_kernel

    data = uncompressed_kernel(read_all(source))
    rodata = _rodata(data, "<kernel>")
    syms = decode_kallsyms(rodata if rodata is not None else data)
    return _find_names(syms.blob, syms.name_offsets, syms.addresses)


def kernel_variables(vmlinux: SymbolSource | None = None,
                     kernel: SymbolSource | None = None) -> dict[str, int]:
    """Link-time addresses of :data:`VMCORE_VARIABLES` found in the vmlinux, else the image's
    kallsyms (memoised; missing names are left out, an unreadable source gives ``{}``)."""
    if vmlinux is not None:
        try:
            found = memoised("vmcore-vars-elf", vmlinux, lambda: _from_elf(vmlinux))
            if found:
                return found
        except (OSError, VmbootError):
            pass
    if kernel is not None:
        try:
            return memoised("vmcore-vars-kallsyms", kernel, lambda: _from_kallsyms(kernel))
        except (OSError, VmbootError):
            return {}
    return {}
