"""Checks of the PVH boot contract, from the PVH probe's report (32-bit entry, paging off).

The contract (Xen ``docs/misc/pvh.pandoc``, Linux ``arch/x86/platform/pvh/head.S``): CR0.PE
set and paging off, CR4 clear, not in long mode; CS a flat 32-bit execute/read segment and
DS/ES/SS flat 32-bit read/write segments; EFLAGS.IF, TF and VM clear; EBX = the physical
address of ``struct hvm_start_info`` (magic 0x336ec578), whose command line, module list
(the initrd is module 0) and memory map the probe reads back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from vmboot.linux.configurator.e820 import E820Entry
from vmboot.linux.configurator.pvh import PvhBootPlan
from vmboot.linux.options import BootOptions
from vmboot.probes.checksum import fnv1a64_words
from vmboot.probes.protocol import MAX_PVH_MODULES, SELECTOR_INDEX_MASK, EntryKind, Key
from vmboot.probes.pvh_abi import HVM_START_MAGIC, pack_memmap
from vmboot.probes.report import ProbeReport
from vmboot.probes.verify import (
    NOT_REPORTED,
    Check,
    bits_set,
    entry_kind,
    equal,
    flat_descriptor,
    report_complete,
)
from vmboot.x86 import cr

EFLAGS_TF = 1 << 8
EFLAGS_VM = 1 << 17


@dataclass(frozen=True)
class PvhExpectation:
    """What the host set up for a PVH entry (from the loader's plan and the options)."""

    entry_gpa: int
    """The XEN_ELFNOTE_PHYS32_ENTRY address."""
    load_addr: int
    """Where the probe image's first byte was loaded (its PT_LOAD p_paddr)."""
    start_info_gpa: int
    start_info_version: int
    cmdline: bytes
    cmdline_gpa: int
    modules: Sequence[tuple[int, bytes]] = ()
    """(guest-physical address, contents) of each module, in order: the initrd first."""
    memmap: Sequence[E820Entry] = field(default=())
    rsdp_gpa: int = 0


def verify_pvh(report: ProbeReport, expected: PvhExpectation, *, exit_detail: str = "") -> list[Check]:
    """Every check of the PVH contract for one PVH probe run."""
    r = report
    x = expected
    checks: list[Check] = [report_complete(r, exit_detail), *entry_kind(r, EntryKind.PVH32)]
    checks.append(equal("PVH entry address", x.entry_gpa, r.value(Key.ENTRY_ADDR)))
    checks.append(equal("load address (p_paddr)", x.load_addr, r.value(Key.IMAGE_START)))

    checks.append(bits_set("CR0 (protected mode, paging off)", r.value(Key.CR0),
                           [("PE", cr.CR0_PE)], [("PG", cr.CR0_PG)]))
    checks.append(equal("CR4 (all clear)", 0, r.value(Key.CR4)))
    checks.append(bits_set("EFER (not long mode)", r.value(Key.EFER), [],
                           [("LME", cr.EFER_LME), ("LMA", cr.EFER_LMA)]))
    checks.append(bits_set("EFLAGS", r.value(Key.ENTRY_FLAGS), [],
                           [("IF", cr.RFLAGS_IF), ("TF", EFLAGS_TF), ("VM", EFLAGS_VM)]))

    cs = r.value(Key.SEL_CS)
    ds = r.value(Key.SEL_DS)
    checks.append(flat_descriptor("CS descriptor (flat 32-bit code)", _descriptor(r, cs), code=True))
    checks.append(flat_descriptor("DS descriptor (flat 32-bit data)", _descriptor(r, ds), code=False))
    es, ss = r.value(Key.SEL_ES), r.value(Key.SEL_SS)
    checks.append(Check("ES, SS selectors == DS", _sel(ds), f"ES {_sel(es)}, SS {_sel(ss)}",
                        ds is not None and es == ds and ss == ds))

    checks.append(equal("EBX (hvm_start_info)", x.start_info_gpa, r.value(Key.ENTRY_RBX)))
    checks.append(equal("start_info magic", HVM_START_MAGIC, r.value(Key.PVH_MAGIC)))
    checks.append(equal("start_info version", x.start_info_version, r.value(Key.PVH_VERSION),
                        decimal=True))
    checks.append(equal("start_info rsdp_paddr", x.rsdp_gpa, r.value(Key.PVH_RSDP)))

    checks.append(equal("cmdline_paddr", x.cmdline_gpa, r.value(Key.PVH_CMDLINE_PTR)))
    checks.append(equal("cmdline length", len(x.cmdline), r.value(Key.PVH_CMDLINE_LEN), decimal=True))
    checks.append(equal("cmdline checksum", fnv1a64_words(x.cmdline), r.value(Key.PVH_CMDLINE_SUM)))

    checks.append(equal("nr_modules", len(x.modules), r.value(Key.PVH_NR_MODULES), decimal=True))
    modlist = r.value(Key.PVH_MODLIST)
    checks.append(Check("modlist_paddr", "non-zero" if x.modules else "any",
                        NOT_REPORTED if modlist is None else f"{modlist:#x}",
                        modlist is not None and (modlist != 0 or not x.modules)))
    for i, (gpa, data) in enumerate(x.modules[:MAX_PVH_MODULES]):
        checks.append(equal(f"module {i} paddr", gpa, r.value(Key.PVH_MODULE_ADDR, i)))
        checks.append(equal(f"module {i} size", len(data), r.value(Key.PVH_MODULE_SIZE, i),
                            decimal=True))
        checks.append(equal(f"module {i} checksum", fnv1a64_words(data),
                            r.value(Key.PVH_MODULE_SUM, i)))

    if x.start_info_version >= 1:
        memmap_at = r.value(Key.PVH_MEMMAP_ADDR)
        checks.append(Check("memmap_paddr", "non-zero",
                            NOT_REPORTED if memmap_at is None else f"{memmap_at:#x}",
                            bool(memmap_at)))
        checks.append(equal("memmap_entries", len(x.memmap), r.value(Key.PVH_MEMMAP_ENTRIES),
                            decimal=True))
        checks.append(equal("memmap checksum", fnv1a64_words(pack_memmap(x.memmap)),
                            r.value(Key.PVH_MEMMAP_SUM)))
    return checks


def _descriptor(r: ProbeReport, selector: int | None) -> int | None:
    """The raw GDT descriptor the probe reported for ``selector``."""
    return None if selector is None else r.value(Key.GDT_DESC, selector & SELECTOR_INDEX_MASK)


def _sel(value: int | None) -> str:
    return NOT_REPORTED if value is None else f"{value:#x}"


def expectation_from_plan(plan: PvhBootPlan, options: BootOptions) -> PvhExpectation:
    """What a PVH probe should observe, from the loader's plan and the options it was given."""
    initrd = options.initrd_bytes()
    return PvhExpectation(
        entry_gpa=plan.entry_gpa, load_addr=plan.load_addr, start_info_gpa=plan.start_info_gpa,
        start_info_version=plan.start_info.version, cmdline=options.cmdline_bytes(),
        cmdline_gpa=plan.cmdline_gpa,
        modules=[] if initrd is None else [(plan.modules[0].paddr, initrd)],
        memmap=plan.e820)
