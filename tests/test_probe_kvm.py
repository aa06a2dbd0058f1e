"""The bzImage probe under real KVM: every boot-contract check passes for the default options
and for each BootOptions override, and negative controls show that breaking one part of the
contract after prepare()/configure_vcpu() fails exactly the checks that watch that part.

Each run takes a fraction of a second of guest time (the probe is a few hundred instructions
plus one pass over the initrd), even on an emulating KVM.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from conftest import requires_kvm
from vmboot.hv import Register, SegmentRegister
from vmboot.hv.base import VirtualCPU, VirtualMachine
from vmboot.hv.registers import DescriptorTable
from vmboot.linux import BootOptions, BootPlan, E820Entry, E820Type, EntryPlan
from vmboot.linux import bootparam as bp
from vmboot.probes import Key, ProbeResult, run_probe
from vmboot.probes.run import Tamper as ProbeTamper
from vmboot.vmm.exits import ExitReason
from vmboot.x86 import cr
from vmboot.x86.gdt import flat_data
from vmboot.x86.paging import PAGE_SIZE_2M, PTE_PRESENT, TABLE_SIZE

pytestmark = [requires_kvm, pytest.mark.kvm]

MiB = 1 << 20
GiB = 1 << 30
MEMORY = 64 * MiB


def pattern(n: int, seed: int = 1) -> bytes:
    """Deterministic, non-repeating-looking bytes (no two 8-byte words alike in practice)."""
    return bytes((i * 2654435761 + seed * 40503 + (i >> 8)) & 0xFF for i in range(n))


def assert_all_pass(result: ProbeResult) -> None:
    failed = "\n".join(f"  {c.name}: expected {c.expected}, observed {c.observed}"
                       for c in result.failed)
    assert result.exit.reason is ExitReason.POWEROFF, result.exit.one_line()
    assert result.report.done
    assert result.ok, f"failed checks:\n{failed}"
    # the report really came from the guest: every check had something to compare
    assert all(c.observed != "not reported" for c in result.checks)


CUSTOM_E820 = [
    E820Entry(0, 0x9F000, E820Type.RAM),
    E820Entry(0x9F000, 0x61000, E820Type.RESERVED),
    E820Entry(0x100000, 0x1F00000, E820Type.RAM),
    E820Entry(0x2000000, 0x100000, E820Type.ACPI),
    E820Entry(0x2100000, MEMORY - 0x2100000, E820Type.RAM),
]

CASES: dict[str, tuple[BootOptions, int]] = {
    "defaults": (BootOptions(), MEMORY),
    "cmdline and initrd": (BootOptions(cmdline="console=ttyS0 probe=1", initrd=pattern(4099)), MEMORY),
    "load address 4 KiB aligned": (BootOptions(load_addr=0x1234000, cmdline="x"), MEMORY),
    "load address high": (BootOptions(load_addr=0x3000000), MEMORY),
    "initrd gpa": (BootOptions(initrd=pattern(10000, 2), initrd_gpa=0x800000), MEMORY),
    "zero page": (BootOptions(zero_page_gpa=0x70000, cmdline="zp"), MEMORY),
    "cmdline gpa": (BootOptions(cmdline_gpa=0x7F000, cmdline="root=/dev/vda quiet"), MEMORY),
    "stack": (BootOptions(stack_top_gpa=0x80000), MEMORY),
    "paging base": (BootOptions(paging_base=0x40000), MEMORY),
    "address space 1 GiB": (BootOptions(address_space_gib=1), MEMORY),
    "address space 4 GiB": (BootOptions(address_space_gib=4), MEMORY),
    "address space 8 GiB": (BootOptions(address_space_gib=8), MEMORY),
    "custom e820": (BootOptions(e820=CUSTOM_E820, initrd=pattern(100, 3)), MEMORY),
    "long cmdline": (BootOptions(cmdline="a=" + "x" * 2045), MEMORY),
    "large initrd": (BootOptions(initrd=pattern(2 * MiB + 13, 4)), MEMORY),
    "everything above 4 GiB": (
        BootOptions(address_space_gib=8, load_addr=0x1_0000_0000, cmdline="high",
                    cmdline_gpa=0x1_0040_0000, initrd=pattern(5000, 5), initrd_gpa=0x1_0080_0000,
                    zero_page_gpa=0x1_0100_0000, stack_top_gpa=0x1_0200_0000),
        5 * GiB,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_probe_passes(name: str) -> None:
    options, memory = CASES[name]
    result = run_probe("bzimage", options, memory=memory)
    assert_all_pass(result)
    # the options were really honoured by the plan the checks compared against
    plan = result.plan
    assert isinstance(plan, BootPlan)
    for field in ("load_addr", "initrd_gpa", "zero_page_gpa", "cmdline_gpa", "stack_top_gpa"):
        wanted = getattr(options, field)
        if wanted is not None:
            assert getattr(plan, field) == wanted, field
    assert plan.paging_base == options.paging_base
    assert plan.address_space_gib == options.address_space_gib
    if options.e820 is not None:
        assert list(plan.e820) == list(options.e820)


def test_probe_checks_the_whole_list_of_e820_ram() -> None:
    """The RAM touches cover every E820 RAM entry inside the identity map."""
    result = run_probe("bzimage", BootOptions(e820=CUSTOM_E820), memory=MEMORY)
    assert_all_pass(result)
    touched = [r.u64(0) for r in result.report.indexed(Key.TOUCH).values()]
    for entry in (e for e in CUSTOM_E820 if e.type == E820Type.RAM):
        assert any(a is not None and entry.addr <= a < entry.end for a in touched), entry


# -- negative controls --------------------------------------------------------------------------

Tamper = Callable[[VirtualMachine, VirtualCPU, BootPlan], object]


def on_boot_plan(tamper: Tamper) -> ProbeTamper:
    """``run_probe`` hands a tamper the plan as an EntryPlan; the bzImage probe's is a BootPlan."""

    def narrowed(vm: VirtualMachine, vcpu: VirtualCPU, plan: EntryPlan) -> object:
        assert isinstance(plan, BootPlan), plan
        return tamper(vm, vcpu, plan)

    return narrowed


def _u32(vm: VirtualMachine, gpa: int, value: int) -> None:
    vm.write(gpa, struct.pack("<I", value))


def move_cmdline(vm: VirtualMachine, vcpu: VirtualCPU, plan: BootPlan) -> None:
    """An identical copy of the command line elsewhere, and cmd_line_ptr pointing at it."""
    copy = 0x95000
    vm.write(copy, plan.cmdline + b"\0")
    _u32(vm, plan.zero_page_gpa + bp.HDR_CMD_LINE_PTR, copy)


def flip_cmdline_byte(vm: VirtualMachine, vcpu: VirtualCPU, plan: BootPlan) -> None:
    vm.write(plan.cmdline_gpa + 3, bytes([vm.read(plan.cmdline_gpa + 3, 1)[0] ^ 0x20]))


def flip_initrd_byte(vm: VirtualMachine, vcpu: VirtualCPU, plan: BootPlan) -> None:
    assert plan.initrd_gpa is not None
    at = plan.initrd_gpa + plan.initrd_size - 1
    vm.write(at, bytes([vm.read(at, 1)[0] ^ 1]))


def wrong_ds(vm: VirtualMachine, vcpu: VirtualCPU, plan: BootPlan) -> None:
    """A flat data segment, but loaded through another selector than __BOOT_DS."""
    vcpu.set_segment(SegmentRegister.DS, flat_data(bp.BOOT_CS + 0x18))


def shrink_e820_entry(vm: VirtualMachine, vcpu: VirtualCPU, plan: BootPlan) -> None:
    last = len(plan.e820) - 1
    at = plan.zero_page_gpa + bp.BP_E820_TABLE + last * bp.E820_ENTRY_SIZE + 8
    (size,) = struct.unpack("<Q", vm.read(at, 8))
    vm.write(at, struct.pack("<Q", size - 0x1000))


def lower_stack(vm: VirtualMachine, vcpu: VirtualCPU, plan: BootPlan) -> None:
    vcpu.set_register(Register.RSP, plan.stack_top_gpa - 0x100)


def interrupts_on(vm: VirtualMachine, vcpu: VirtualCPU, plan: BootPlan) -> None:
    vcpu.set_register(Register.RFLAGS, cr.RFLAGS_RESERVED_1 | cr.RFLAGS_IF)


def zero_page_copy(vm: VirtualMachine, vcpu: VirtualCPU, plan: BootPlan) -> None:
    """An identical zero page elsewhere, and RSI pointing at it."""
    copy = 0x70000
    vm.write(copy, vm.read(plan.zero_page_gpa, bp.BOOT_PARAMS_SIZE))
    vcpu.set_register(Register.RSI, copy)


def unmap_last_gib(vm: VirtualMachine, vcpu: VirtualCPU, plan: BootPlan) -> None:
    pdpt = plan.paging_base + TABLE_SIZE
    at = pdpt + (plan.address_space_gib - 1) * 8
    (entry,) = struct.unpack("<Q", vm.read(at, 8))
    vm.write(at, struct.pack("<Q", entry & ~PTE_PRESENT))


def remap_one_2mib_page(vm: VirtualMachine, vcpu: VirtualCPU, plan: BootPlan) -> None:
    """The first 2 MiB page of GiB 1 maps the second one's frame: not an identity map."""
    pd1 = plan.paging_base + (2 + 1) * TABLE_SIZE
    (entry,) = struct.unpack("<Q", vm.read(pd1, 8))
    vm.write(pd1, struct.pack("<Q", entry + PAGE_SIZE_2M))


def short_gdt(vm: VirtualMachine, vcpu: VirtualCPU, plan: BootPlan) -> None:
    """A GDT limit that ends before __BOOT_DS (the loaded segments keep working)."""
    vcpu.set_gdt(DescriptorTable(plan.gdt_gpa, bp.BOOT_DS - 1))


NEGATIVE: dict[str, tuple[Tamper, set[str]]] = {
    "cmd_line_ptr moved": (move_cmdline, {"cmd_line_ptr"}),
    "cmdline byte": (flip_cmdline_byte, {"cmdline checksum"}),
    "initrd byte": (flip_initrd_byte, {"initrd checksum"}),
    "wrong DS": (wrong_ds, {"DS selector"}),
    "e820 entry": (shrink_e820_entry, {"E820 table checksum"}),
    "stack pointer": (lower_stack, {"RSP (stack top)", "stack usable (CALL/RET, PUSH/POP)"}),
    "interrupts on": (interrupts_on, {"RFLAGS (interrupts off)"}),
    "zero page elsewhere": (zero_page_copy, {"RSI (zero page)"}),
    "last GiB unmapped": (unmap_last_gib, {"identity map: GiB mapped",
                                           "identity map: identity 2 MiB pages",
                                           "identity map: samples (1 per GiB)"}),
    "one 2 MiB page remapped": (remap_one_2mib_page,
                                {"identity map: identity 2 MiB pages"}),
    "short GDT": (short_gdt, {"GDT limit (SGDT)", f"GDT[{bp.BOOT_DS:#x}] __BOOT_DS"}),
}


@pytest.mark.parametrize("name", list(NEGATIVE))
def test_negative_control(name: str) -> None:
    tamper, expected_failures = NEGATIVE[name]
    options = BootOptions(cmdline="console=ttyS0 negative=control", initrd=pattern(3000, 9))
    result = run_probe("bzimage", options, memory=MEMORY, tamper=on_boot_plan(tamper))
    assert result.report.done, result.exit.one_line()
    assert {c.name for c in result.failed} == expected_failures
    assert not result.ok


def test_probe_that_never_reports_fails_cleanly() -> None:
    """A vCPU started somewhere with no probe: the run ends, every check fails, none passes."""

    def jump_to_halt(vm: VirtualMachine, vcpu: VirtualCPU, plan: BootPlan) -> None:
        vm.write(0x7000, b"\xf4")  # hlt
        vcpu.set_register(Register.RIP, 0x7000)

    result = run_probe("bzimage", BootOptions(), memory=MEMORY, tamper=on_boot_plan(jump_to_halt),
                       timeout=20)
    assert result.exit.reason is ExitReason.HLT
    assert not result.report.records
    assert not any(c.ok for c in result.checks)
    assert "no DONE record" in result.check("probe report complete").observed
