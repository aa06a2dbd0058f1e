"""KASLR: how far the running kernel's text was moved from its link-time address.

Two ways, used by :func:`kaslr_slide` in this order:

1. *A known symbol*: ``known=("name", runtime_address)``, e.g. from a log line; the slide
   is the runtime address minus the table's address of that symbol.
2. *The guest page tables*: after boot, ``cleanup_highmap()`` leaves the kernel-image
   mapping (``__START_KERNEL_map`` = 0xffffffff80000000, 1 GiB) present only from
   ``_text`` (2 MiB aligned) to ``_end``. The lowest present 2 MiB slot is therefore the
   runtime ``_text``; with ``text_bytes`` (the first bytes of ``_text`` from the vmlinux)
   every present slot is compared instead, which also works before cleanup_highmap.

KASLR only moves the kernel up in 2 MiB steps, so a negative slide found from the page
tables is reported as an error rather than returned.
"""

from __future__ import annotations

from vmboot.debug.page_walk import GuestAddressSpace
from vmboot.debug.symtab import SymbolTable
from vmboot.errors import DebugError, PageWalkError
from vmboot.x86.paging import PAGE_SIZE_1G, PAGE_SIZE_2M

KERNEL_MAP_BASE = 0xFFFF_FFFF_8000_0000
"""``__START_KERNEL_map``: where the kernel image is mapped on x86_64."""
KERNEL_MAP_SIZE = PAGE_SIZE_1G
"""``KERNEL_IMAGE_SIZE`` with KASLR (1 GiB)."""
KASLR_ALIGN = PAGE_SIZE_2M
TEXT_SYMBOLS = ("_text", "_stext", "startup_64")
"""Names of the first byte of kernel text, in order of preference."""


def link_text_address(symbols: SymbolTable) -> int:
    """The link-time ``_text`` (or ``_stext``/``startup_64``) of a symbol table."""
    for name in TEXT_SYMBOLS:
        addr = symbols.address_of(name)
        if addr is not None:
            return addr
    return int(symbols.addresses[0])


def present_kernel_slots(space: GuestAddressSpace) -> list[int]:
    """The 2 MiB-aligned addresses of the kernel-image area that the guest maps."""
    slots = []
    for va in range(KERNEL_MAP_BASE, KERNEL_MAP_BASE + KERNEL_MAP_SIZE, KASLR_ALIGN):
        try:
            space.translate(va)
        except PageWalkError:
            continue
        slots.append(va)
    return slots


def kaslr_slide(symbols: SymbolTable, space: GuestAddressSpace | None = None,
                known: tuple[str, int] | None = None, text_bytes: bytes | None = None) -> int:
    """The KASLR slide (runtime minus link-time address); see the module docstring."""
    if known is not None:
        name, runtime = known
        linked = symbols.address_of(name)
        if linked is None:
            raise DebugError(f"KASLR: symbol {name!r} is not in {symbols.source}; "
                             f"give a function symbol the table has")
        return runtime - linked
    if space is None:
        raise DebugError("KASLR: need the guest page tables (space=) or a known symbol (known=)")
    link_text = link_text_address(symbols)
    slots = present_kernel_slots(space)
    if not slots:
        raise DebugError(f"KASLR: nothing is mapped in the kernel image area "
                         f"[{KERNEL_MAP_BASE:#x}, {KERNEL_MAP_BASE + KERNEL_MAP_SIZE:#x}) "
                         f"of CR3={space.cr3:#x}")
    if text_bytes:
        for va in slots:
            candidate = va + (link_text & (KASLR_ALIGN - 1))
            try:
                if space.read(candidate, len(text_bytes)) == text_bytes:
                    return candidate - link_text
            except PageWalkError:
                continue
        raise DebugError(f"KASLR: the first {len(text_bytes)} bytes of _text appear in none of the "
                         f"{len(slots)} mapped 2 MiB slots of the kernel image area")
    slide = slots[0] + (link_text & (KASLR_ALIGN - 1)) - link_text
    if slide < 0:
        raise DebugError(f"KASLR: the kernel image area is mapped from {slots[0]:#x}, below the "
                         f"link-time _text {link_text:#x} (early boot, before cleanup_highmap?); "
                         f"pass text_bytes= or a known symbol")
    return slide


def detect_slide(symbols: SymbolTable, space: GuestAddressSpace) -> int:
    """:func:`kaslr_slide` from the page tables, or 0 when they show no usable kernel mapping.

    For the automatic traces: a kernel that has not yet set up its own mapping (early boot),
    or a guest whose kernel area is not mapped, is traced at its link-time addresses.
    """
    try:
        return kaslr_slide(symbols, space)
    except DebugError:
        return 0
