"""Guest introspection: symbolised kernel stack traces, symbol tables, page walks, KASLR.

The entry points::

    frames = capture_stack_trace(vcpu, vmlinux="vmlinux", system_map="System.map")
    print(format_trace(frames, registers))

Symbol sources: a vmlinux's .symtab, a System.map, or the kallsyms inside a kernel image
(:mod:`vmboot.debug.kallsyms`). Unwinders: frame pointers, ORC (:mod:`vmboot.debug.orc`)
and a heuristic stack scan (:mod:`vmboot.debug.stack_walk`). Crash dumps: ELF vmcores for
crash and drgn (:mod:`vmboot.debug.vmcore`) and any ELF kernel core read back into a
``MemoryVM`` (:mod:`vmboot.debug.core_reader`).
"""

from vmboot.debug.core_reader import GuestCore, read_core
from vmboot.debug.frames import StackFrame, format_trace
from vmboot.debug.kaslr import kaslr_slide
from vmboot.debug.page_walk import GuestAddressSpace
from vmboot.debug.symbol_sources import (
    clear_symbol_cache,
    load_kernel_symbols,
    load_symbols,
    load_system_map,
    load_vmlinux_symbols,
)
from vmboot.debug.symtab import SymbolMatch, SymbolTable
from vmboot.debug.trace import capture_stack_trace, load_orc
from vmboot.debug.vmcore import VmcoreResult, write_guest_vmcore, write_vmcore

__all__ = [
    "GuestAddressSpace",
    "GuestCore",
    "StackFrame",
    "SymbolMatch",
    "SymbolTable",
    "VmcoreResult",
    "capture_stack_trace",
    "clear_symbol_cache",
    "format_trace",
    "kaslr_slide",
    "load_kernel_symbols",
    "load_orc",
    "load_symbols",
    "load_system_map",
    "load_vmlinux_symbols",
    "read_core",
    "write_guest_vmcore",
    "write_vmcore",
]
