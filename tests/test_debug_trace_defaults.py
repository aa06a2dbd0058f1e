"""The trace defaults on KASLR/ORC kernels: where ORC stops, interrupt stacks with frame
pointers, and addresses past the end of kernel text."""

from __future__ import annotations

import io
import struct

import pytest

from debug_support import STACK_TOP, ElfBuilder, Section, Sym, make_guest, system_map
from vmboot.debug import StackFrame, capture_stack_trace, clear_symbol_cache, format_trace
from vmboot.debug.symbol_sources import parse_system_map
from vmboot.errors import StackWalkError
from vmboot.hv.memory import MemoryVCPU

T = 0xFFFF_FFFF_8100_0000
FUNCS = [("func_a", 0x000), ("func_b", 0x100), ("func_c", 0x200), ("func_d", 0x300)]
FUNC_SIZE = 0x100
RSP = STACK_TOP - 0x1000
RBP0 = RSP + 0x20
ORC_IP_ADDR = 0xFFFF_FFFF_8200_0000
SP_REG = 5  # ORC_REG_SP


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    clear_symbol_cache()


def symbol_map() -> io.BytesIO:
    return io.BytesIO(system_map([(T + off, "T", name) for name, off in FUNCS]
                                 + [(T + 0x400, "T", "_etext")]))


def orc_v1_vmlinux(entries: list[tuple[int, int, int]]) -> bytes:
    """A 6.1 vmlinux with FUNCS and ORC entries ``(ip, sp_offset, flags)``."""
    ips = b"".join(struct.pack("<i", ip - (ORC_IP_ADDR + 4 * i)) for i, (ip, _, _) in enumerate(entries))
    orc = b"".join(struct.pack("<hhH", sp_off, 0, flags) for _, sp_off, flags in entries)
    return ElfBuilder(
        symbols=[Sym(n, T + o, FUNC_SIZE) for n, o in FUNCS],
        extra=[Section(".rodata", b"Linux version 6.1.0 (x)\0", T + 0x1000000, flags=2),
               Section(".orc_unwind_ip", ips, ORC_IP_ADDR, flags=2),
               Section(".orc_unwind", orc, ORC_IP_ADDR + 0x100000, flags=2)],
    ).build()


def test_orc_failure_is_noted_on_its_frame_and_the_rest_is_scanned_unreliable() -> None:
    # func_a: CFA = SP + 24; func_b: an undefined CFA (sp_reg 0), so ORC cannot go past it.
    vmlinux = orc_v1_vmlinux([(T, 24, SP_REG), (T + 0x100, 0, 0), (T + 0x200, 8, SP_REG)])
    g = make_guest()
    g.write_u64(RSP + 16, T + 0x120)      # func_a returns into func_b
    g.write_u64(RSP + 40, T + 0x240)      # a word further up the stack, inside func_c
    g.write_u64(RSP + 48, 0x1234)         # not text: the scan skips it
    cpu = g.vcpu(T + 0x10, RSP, RBP0)
    frames = capture_stack_trace(cpu, vmlinux=io.BytesIO(vmlinux))
    assert [(f.symbol, f.reliable) for f in frames] == [
        ("func_a", True), ("func_b", True), ("func_c", False)]
    assert frames[1].note.startswith("ORC cannot unwind past this frame: ")
    assert "undefined CFA" in frames[1].note
    assert frames[0].note == "" and frames[2].note == ""
    text = format_trace(frames)
    assert f" #2  {T + 0x240:016x} ? func_c+0x40/0x100" in text
    assert "(ORC cannot unwind past this frame" in text
    with pytest.raises(StackWalkError, match=r"ORC unwind, frame 2: .*undefined CFA"):
        capture_stack_trace(cpu, vmlinux=io.BytesIO(vmlinux), unwinder="orc")


IRQ_TOP = STACK_TOP + 0x10000
"""A 16 KiB IRQ stack above the task stack (which ends at STACK_TOP): the chain goes down."""
IRQ_PHYS = 0x900000


def irq_stack_guest(save_task_sp: bool) -> tuple[MemoryVCPU, int]:
    g = make_guest()
    g.tables.map_range(IRQ_TOP - 0x4000, IRQ_PHYS, 0x4000)

    def write_irq(va: int, value: int) -> None:
        g.vm.write(IRQ_PHYS + va - (IRQ_TOP - 0x4000), struct.pack("<Q", value))

    irq_rbp = IRQ_TOP - 0x100
    write_irq(irq_rbp, RBP0)              # the handler's frame links back to the task stack
    write_irq(irq_rbp + 8, T + 0x105)
    if save_task_sp:
        write_irq(IRQ_TOP - 8, RSP)       # call_on_irqstack: the task's RSP at the top word
    g.frame(RBP0, 0, T + 0x230)
    return g.vcpu(T + 0x10, IRQ_TOP - 0x180, irq_rbp), irq_rbp


def test_frame_pointer_walk_follows_the_irq_stack_back_to_the_task_stack() -> None:
    cpu, _ = irq_stack_guest(save_task_sp=True)
    frames = capture_stack_trace(cpu, system_map=symbol_map())
    assert frames == [StackFrame(0, T + 0x10, "func_a", 0x10, True, FUNC_SIZE),
                      StackFrame(1, T + 0x105, "func_b", 0x5, True, FUNC_SIZE),
                      StackFrame(2, T + 0x230, "func_c", 0x30, True, FUNC_SIZE)]


def test_a_downward_frame_pointer_without_a_saved_stack_pointer_is_still_an_error() -> None:
    cpu, _ = irq_stack_guest(save_task_sp=False)
    with pytest.raises(StackWalkError, match=r"does not increase"):
        capture_stack_trace(cpu, system_map=symbol_map())


def test_addresses_past_etext_and_other_section_ends_are_unknown() -> None:
    table = parse_system_map(system_map([
        (T, "T", "_stext"), (T + 0x100, "T", "last_fn"), (T + 0x180, "T", "__irqentry_text_end"),
        (T + 0x200, "T", "_etext"), (T + 0x1000000, "T", "_sinittext"),
        (T + 0x1000040, "T", "init_fn"), (T + 0x1000080, "T", "_einittext")]))
    assert str(table.lookup(T + 0x17F)) == "last_fn+0x7f/0x80"
    assert table.lookup(T + 0x180).name == "??"
    assert table.lookup(T + 0x2DB1AE).name == "??"  # was _etext+0x2db1ae/0xdffe00
    assert str(table.lookup(T + 0x1000041)) == "init_fn+0x1/0x40"
    assert table.lookup(T + 0x1000080).name == "??"
    assert "_etext" not in table.names() and "__irqentry_text_end" not in table.names()


def test_orc_follows_the_irq_stack_back_to_a_lower_task_stack() -> None:
    """func_a runs on the IRQ stack (CFA = SP + 8); its caller func_b switched stacks, so
    func_b's entry is SP_INDIRECT: the interrupted task's SP is the word at SP. func_c, on
    the task stack (below the IRQ stack), ends the stack."""
    sp_indirect, end_v1 = 9, 1 << 10
    vmlinux = orc_v1_vmlinux([(T, 8, SP_REG), (T + 0x100, 8, sp_indirect),
                              (T + 0x200, 8, SP_REG | end_v1)])
    g = make_guest()
    g.tables.map_range(IRQ_TOP - 0x4000, IRQ_PHYS, 0x4000)

    def write_irq(va: int, value: int) -> None:
        g.vm.write(IRQ_PHYS + va - (IRQ_TOP - 0x4000), struct.pack("<Q", value))

    irq_sp = IRQ_TOP - 0x10
    write_irq(irq_sp, T + 0x120)          # func_a returns into func_b
    write_irq(irq_sp + 8, RSP)            # the task's SP, saved at the top of the IRQ stack
    g.write_u64(RSP, T + 0x240)           # func_b returns into func_c on the task stack
    frames = capture_stack_trace(g.vcpu(T + 0x10, irq_sp, 0), vmlinux=io.BytesIO(vmlinux),
                                 unwinder="orc")
    assert [(f.symbol, f.offset, f.reliable) for f in frames] == [
        ("func_a", 0x10, True), ("func_b", 0x20, True), ("func_c", 0x40, True)]
