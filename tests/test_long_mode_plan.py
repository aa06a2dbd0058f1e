"""The one long-mode planner: a bzImage and an ELF vmlinux get the same boot data around
their own regions; the PVH plan is a sibling of the long-mode plan, not a zeroed subclass."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from bzimage_builder import build_bzimage
from elf_builder import simple_kernel
from vmboot.errors import LayoutError
from vmboot.hv import MemoryVM
from vmboot.linux import BootOptions, BootPlan, EntryPlan, PvhBootPlan, load_kernel
from vmboot.linux.options import EntryChoice

MEM = 64 << 20
BOOT_DATA = ("zero page", "command line", "page tables", "GDT", "stack")


def _boot_data(plan: BootPlan) -> dict[str, tuple[int, int]]:
    return {r.name: (r.start, r.size) for r in plan.regions if not r.name.startswith("kernel")}


def test_bzimage_and_elf64_share_the_boot_data_layout() -> None:
    options = BootOptions(cmdline="console=ttyS0", initrd=b"i" * 4096)
    with MemoryVM(MEM) as vm:
        bz = load_kernel(build_bzimage()).plan(vm, options)
        elf = load_kernel(simple_kernel()).plan(vm, dataclasses.replace(options, entry="elf64"))
    assert isinstance(bz, BootPlan) and isinstance(elf, BootPlan)
    assert (bz.entry_mode, elf.entry_mode) == ("bzimage64", "elf64")
    assert set(BOOT_DATA) <= set(_boot_data(bz))
    assert _boot_data(bz) == _boot_data(elf)
    for field in ("zero_page_gpa", "cmdline_gpa", "stack_top_gpa", "paging_base", "gdt_gpa"):
        assert getattr(bz, field) == getattr(elf, field), field


@pytest.mark.parametrize(("kernel", "entry"), [(build_bzimage, "bzimage64"), (simple_kernel, "elf64")])
def test_both_entries_refuse_a_stack_with_no_room(kernel: Callable[[], bytes],
                                                 entry: EntryChoice) -> None:
    with MemoryVM(MEM) as vm, pytest.raises(LayoutError, match="stack_top_gpa 0x100 "):
        load_kernel(kernel()).plan(vm, BootOptions(stack_top_gpa=0x100, entry=entry))


def test_pvh_plan_is_a_sibling_without_long_mode_fields() -> None:
    with MemoryVM(MEM) as vm:
        plan = load_kernel(simple_kernel(pvh_entry=0x100000)).plan(vm, BootOptions(entry="pvh"))
    assert isinstance(plan, PvhBootPlan) and isinstance(plan, EntryPlan)
    assert not isinstance(plan, BootPlan)
    for long_mode_only in ("zero_page_gpa", "stack_top_gpa", "paging_base", "address_space_gib"):
        assert not hasattr(plan, long_mode_only)
