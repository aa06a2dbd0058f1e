"""Default guest-physical placement of boot structures, and the region bookkeeping around it.

Defaults (the seed's)::

    0x000500  boot GDT (5 entries: null, 32-bit code 0x08, 64-bit code 0x10, data 0x18, TSS 0x20)
    0x020000  page tables: PML4, PDPT, then one page directory per identity-mapped GiB
    0x090000  zero page (struct boot_params)
    0x091000  kernel command line
    load      the kernel (pref_address, 1 MiB or 64 KiB; aligned to kernel_alignment)
    ...       initrd: the highest page-aligned spot below initrd_addr_max and RAM end
    end-4KiB  stack top (16-byte aligned); STACK_RESERVE bytes below it are kept free
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vmboot.errors import BootConfigError, LayoutError
from vmboot.units import GiB, KiB
from vmboot.x86.paging import PAGE_SIZE, TABLE_SIZE

ZERO_PAGE_GPA = 0x90000
CMDLINE_OFFSET_FROM_ZERO_PAGE = 0x1000
PAGING_BASE = 0x20000
ADDRESS_SPACE_GIB = 4
MAX_ADDRESS_SPACE_GIB = 512
"""One PDPT (one PML4 entry) maps 512 GiB."""
GDT_GPA = 0x500
GDT_ENTRIES = 6
"""null, code32, code64, data, and a 16-byte 64-bit TSS descriptor (two slots)."""
STACK_TOP_GAP = 4 * KiB
"""The default stack top sits this far below the end of RAM."""
STACK_ALIGN = 16
STACK_RESERVE = 16 * KiB
"""Bytes below the stack top that no other boot region may use."""


def page_table_bytes(address_space_gib: int) -> int:
    """Size of the identity-map tables: PML4 + PDPT + one PD per GiB."""
    return (2 + address_space_gib) * TABLE_SIZE


def align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def align_down(value: int, align: int) -> int:
    return value // align * align


@dataclass(frozen=True, slots=True)
class Region:
    """A named guest-physical range used by the boot layout."""

    name: str
    start: int
    size: int
    identity_mapped: bool = False
    """True if the kernel needs it inside the identity map at entry."""

    @property
    def end(self) -> int:
        return self.start + self.size

    def overlaps(self, other: Region) -> bool:
        return self.start < other.end and other.start < self.end

    def describe(self) -> str:
        return f"{self.name} [{self.start:#x}, {self.end:#x})"


def check_regions(
    regions: Sequence[Region],
    ram: Iterable[tuple[int, int]],
    mapped_bytes: int | None,
) -> None:
    """Refuse a region outside guest RAM, outside the identity map when it must be inside,
    or overlapping another region."""
    ram_ranges = list(ram)
    ram_text = ", ".join(f"[{s:#x}, {e:#x})" for s, e in ram_ranges)
    for r in regions:
        if r.size <= 0:
            continue
        if r.start < 0 or not any(s <= r.start and r.end <= e for s, e in ram_ranges):
            raise LayoutError(
                f"{r.describe()} ({r.size:#x} bytes) does not fit in guest RAM {ram_text}"
            )
        if r.identity_mapped and mapped_bytes is not None and r.end > mapped_bytes:
            raise LayoutError(
                f"{r.describe()} must be identity-mapped at entry, but only the first "
                f"{mapped_bytes // GiB} GiB ({mapped_bytes:#x}) are; raise address_space_gib or move it"
            )
    live = [r for r in regions if r.size > 0]
    for i, a in enumerate(live):
        for b in live[i + 1 :]:
            if a.overlaps(b):
                raise LayoutError(f"{a.describe()} overlaps {b.describe()}")


def highest_free_spot(
    size: int,
    limit: int,
    taken: Sequence[Region],
    ram: Iterable[tuple[int, int]],
    align: int = PAGE_SIZE,
) -> int | None:
    """The highest ``align``-aligned start of ``size`` bytes ending at or below ``limit``,
    inside one RAM range and clear of ``taken``; None if there is none."""
    for ram_start, ram_end in sorted(ram, key=lambda r: -r[1]):
        top = min(limit, ram_end)
        cand = align_down(top - size, align)
        while cand >= ram_start:
            blocker = next(
                (t for t in taken if t.size > 0 and cand < t.end and t.start < cand + size), None
            )
            if blocker is None:
                return cand
            cand = align_down(blocker.start - size, align)
    return None


def place_initrd(
    size: int,
    explicit_gpa: int | None,
    limit: int,
    limit_desc: str,
    regions: list[Region],
    ram: Sequence[tuple[int, int]],
    mapped_bytes: int | None,
    explicit_may_exceed: bool = False,
) -> tuple[int | None, int]:
    """Place an initrd of ``size`` bytes and append its region to ``regions``.

    Without ``explicit_gpa``: the highest free page-aligned spot ending at or below ``limit``
    (and the end of RAM). With it: that address, refused if it ends past ``limit`` unless
    ``explicit_may_exceed``. Returns ``(gpa, size)``, ``(None, 0)`` without an initrd.
    """
    if not size:
        if explicit_gpa is not None:
            raise BootConfigError(f"initrd_gpa {explicit_gpa:#x} was given without an initrd")
        return None, 0
    if explicit_gpa is None:
        gpa = highest_free_spot(size, limit, regions, list(ram), PAGE_SIZE)
        if gpa is None:
            raise LayoutError(
                f"initrd: no free page-aligned spot for {size:#x} bytes below {limit_desc} and "
                f"the end of RAM, clear of {', '.join(r.describe() for r in regions)}"
            )
    else:
        gpa = explicit_gpa
        if gpa + size > limit and not explicit_may_exceed:
            raise LayoutError(
                f"initrd at {gpa:#x} ({size:#x} bytes) ends past the kernel's {limit_desc}"
            )
    regions.append(Region("initrd", gpa, size))
    check_regions(regions, ram, mapped_bytes)
    return gpa, size
