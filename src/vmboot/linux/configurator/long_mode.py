"""One planner for the 64-bit entries: a bzImage's ``startup_64`` and an ELF vmlinux's ``e_entry``.

Both enter in long mode with the same boot data around the kernel: a zero page (RSI), the
command line, identity-map page tables, the boot GDT and a stack, plus a SETUP_E820_EXT
setup_data block when the memory map outgrows the zero page. Only the kernel's own regions,
its entry and where its initrd may go differ; the loaders say those through
:class:`KernelPlacement`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vmboot.errors import LayoutError
from vmboot.linux import bootparam as bp
from vmboot.linux.configurator import layout
from vmboot.linux.configurator.e820 import E820Entry
from vmboot.linux.configurator.layout import Region
from vmboot.linux.configurator.plan import BootPlan
from vmboot.linux.options import BootOptions, EntryMode
from vmboot.units import GiB


@dataclass(frozen=True)
class KernelPlacement:
    """Where a kernel goes and how it is entered: what differs between the 64-bit entries."""

    regions: tuple[Region, ...]
    """The kernel's own regions (a bzImage's load area, a vmlinux's segments)."""
    load_addr: int
    entry_gpa: int
    kernel_end: int
    entry_mode: EntryMode
    initrd_limit: int
    """One past the highest byte the initrd may use when vmboot places it."""
    initrd_limit_name: str
    """``initrd_limit`` as the error messages name it."""
    initrd_may_exceed_limit: bool
    """Whether an explicit ``initrd_gpa`` may go above ``initrd_limit``."""


def cmdline_address(options: BootOptions) -> int:
    """Where the command line goes: ``options.cmdline_gpa``, else 4 KiB after the zero page."""
    if options.cmdline_gpa is not None:
        return options.cmdline_gpa
    return options.zero_page_gpa + layout.CMDLINE_OFFSET_FROM_ZERO_PAGE


def plan_long_mode(kernel: KernelPlacement, options: BootOptions, ram: Sequence[tuple[int, int]],
                   cmdline: bytes, e820: Sequence[E820Entry]) -> BootPlan:
    """Place the boot data around ``kernel``, check every region against RAM and the
    identity map, place the initrd, and return the plan (nothing is written)."""
    mapped = options.address_space_gib * GiB
    zero_page = options.zero_page_gpa
    cmdline_gpa = cmdline_address(options)
    low_ram_end = min(ram[0][1], mapped)
    stack_top = (layout.align_down(low_ram_end - layout.STACK_TOP_GAP, layout.STACK_ALIGN)
                 if options.stack_top_gpa is None else options.stack_top_gpa)
    if stack_top < layout.STACK_RESERVE:
        raise LayoutError(f"stack_top_gpa {stack_top:#x} leaves no room for the "
                          f"{layout.STACK_RESERVE:#x}-byte stack below it")
    regions = [
        *kernel.regions,
        Region("zero page", zero_page, bp.BOOT_PARAMS_SIZE, identity_mapped=True),
        Region("command line", cmdline_gpa, len(cmdline) + 1, identity_mapped=True),
        Region("page tables", options.paging_base,
               layout.page_table_bytes(options.address_space_gib)),
        Region("GDT", layout.GDT_GPA, layout.GDT_ENTRIES * 8, identity_mapped=True),
        Region("stack", stack_top - layout.STACK_RESERVE, layout.STACK_RESERVE,
               identity_mapped=True),
    ]
    setup_data_gpa = None
    ext = e820[bp.E820_MAX_ENTRIES_ZEROPAGE :]
    if ext:
        setup_data_gpa = layout.align_up(cmdline_gpa + len(cmdline) + 1, 8)
        size = bp.SETUP_DATA_HEADER_SIZE + len(ext) * bp.E820_ENTRY_SIZE
        regions.append(Region("setup_data (SETUP_E820_EXT)", setup_data_gpa, size,
                              identity_mapped=True))
    layout.check_regions(regions, ram, mapped)
    initrd_gpa, initrd_size = layout.place_initrd(
        options.initrd_size(), options.initrd_gpa, kernel.initrd_limit, kernel.initrd_limit_name,
        regions, ram, mapped, explicit_may_exceed=kernel.initrd_may_exceed_limit)
    return BootPlan(
        load_addr=kernel.load_addr,
        entry_gpa=kernel.entry_gpa,
        zero_page_gpa=zero_page,
        cmdline_gpa=cmdline_gpa,
        stack_top_gpa=stack_top,
        paging_base=options.paging_base,
        address_space_gib=options.address_space_gib,
        initrd_gpa=initrd_gpa,
        initrd_size=initrd_size,
        kernel_end=kernel.kernel_end,
        cmdline=cmdline,
        e820=tuple(e820),
        setup_data_gpa=setup_data_gpa,
        regions=tuple(regions),
        entry_mode=kernel.entry_mode,
    )
