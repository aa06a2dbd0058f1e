"""capture_stack_trace on synthetic guests: exact frames, every stop condition and error,
5-level paging, KASLR, ORC (both entry formats) and the stack scan."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import cast

import pytest

from debug_support import KERNEL_TEXT, STACK_TOP, ElfBuilder, GuestStack, Section, Sym, make_guest, system_map
from vmboot.debug import StackFrame, capture_stack_trace, clear_symbol_cache, format_trace, kaslr_slide
from vmboot.debug.orc import OrcFormat, OrcTable, OrcType
from vmboot.debug.page_walk import GuestAddressSpace
from vmboot.errors import DebugError, NoVcpuError, PageWalkError, StackWalkError, SymbolSourceError
from vmboot.hv import Register
from vmboot.x86.cr import CR4_LA57
from vmboot.x86.paging import PAGE_SIZE_2M

T = KERNEL_TEXT
FUNCS = [("func_a", 0x000), ("func_b", 0x100), ("func_c", 0x200), ("func_d", 0x300)]
FUNC_SIZE = 0x100
RSP = STACK_TOP - 0x1000
RBP0 = RSP + 0x20


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    clear_symbol_cache()


def symbol_map() -> io.BytesIO:
    return io.BytesIO(system_map([(T + off, "T", name) for name, off in FUNCS]
                                 + [(T + 0x400, "T", "_etext")]))


def chain(guest: GuestStack, links: list[tuple[int, int, int]]) -> None:
    for rbp, next_rbp, ret in links:
        guest.frame(rbp, next_rbp, ret)


def test_frame_pointer_chain_gives_exact_frames() -> None:
    g = make_guest()
    rbp1, rbp2 = RBP0 + 0x40, RBP0 + 0xC0
    chain(g, [(RBP0, rbp1, T + 0x105), (rbp1, rbp2, T + 0x230), (rbp2, 0, T + 0x301)])
    frames = capture_stack_trace(g.vcpu(T + 0x10, RSP, RBP0), system_map=symbol_map())
    assert frames == [
        StackFrame(0, T + 0x10, "func_a", 0x10, True, FUNC_SIZE),
        StackFrame(1, T + 0x105, "func_b", 0x5, True, FUNC_SIZE),
        StackFrame(2, T + 0x230, "func_c", 0x30, True, FUNC_SIZE),
        StackFrame(3, T + 0x301, "func_d", 0x1, True, FUNC_SIZE),
    ]


def test_return_address_just_past_a_function_is_attributed_to_the_caller() -> None:
    g = make_guest()
    chain(g, [(RBP0, 0, T + 0x200)])  # a call as func_b's last instruction
    frames = capture_stack_trace(g.vcpu(T + 0x10, RSP, RBP0), system_map=symbol_map())
    assert frames[1] == StackFrame(1, T + 0x200, "func_b", 0x100, True, FUNC_SIZE)


def test_rbp_zero_ends_with_only_rip() -> None:
    g = make_guest()
    frames = capture_stack_trace(g.vcpu(T + 0x10, RSP, 0), system_map=symbol_map())
    assert frames == [StackFrame(0, T + 0x10, "func_a", 0x10, True, FUNC_SIZE)]


def test_zero_return_address_ends_cleanly() -> None:
    g = make_guest()
    chain(g, [(RBP0, RBP0 + 0x40, T + 0x105), (RBP0 + 0x40, RBP0 + 0x80, 0)])
    frames = capture_stack_trace(g.vcpu(T + 0x10, RSP, RBP0), system_map=symbol_map())
    assert [f.symbol for f in frames] == ["func_a", "func_b"]


def test_unknown_addresses_are_question_marks() -> None:
    g = make_guest()
    chain(g, [(RBP0, 0, 0xFFFF_FFFF_A000_0000)])
    frames = capture_stack_trace(g.vcpu(0xFFFF_FFFF_9000_0000, RSP, RBP0), system_map=symbol_map())
    assert [(f.symbol, f.offset) for f in frames] == [("??", 0), ("??", 0)]


def _loop_chain(g: GuestStack, depth: int) -> None:
    for i in range(depth):
        g.frame(RBP0 + 0x10 * i, RBP0 + 0x10 * (i + 1), T + 0x105)


@pytest.mark.parametrize(("max_frames", "expected"), [(3, 3), (0, 16), (-5, 16), (40, 31)])
def test_max_frames(max_frames: int, expected: int) -> None:
    g = make_guest()
    _loop_chain(g, 30)
    g.frame(RBP0 + 0x10 * 30, 0, 0)
    frames = capture_stack_trace(g.vcpu(T + 0x10, RSP, RBP0), system_map=symbol_map(),
                                 max_frames=max_frames)
    assert len(frames) == expected
    assert [f.index for f in frames] == list(range(expected))


def test_non_increasing_frame_pointer_is_an_error_with_frames() -> None:
    g = make_guest()
    chain(g, [(RBP0, RBP0 + 0x40, T + 0x105), (RBP0 + 0x40, RBP0 + 0x40, T + 0x230)])
    with pytest.raises(StackWalkError, match=r"does not increase") as info:
        capture_stack_trace(g.vcpu(T + 0x10, RSP, RBP0), system_map=symbol_map())
    assert [f.symbol for f in info.value.frames] == ["func_a", "func_b", "func_c"]  # type: ignore[attr-defined]


def test_decreasing_frame_pointer_is_an_error() -> None:
    g = make_guest()
    chain(g, [(RBP0, RBP0 - 0x40, T + 0x105)])
    with pytest.raises(StackWalkError, match=r"does not increase") as info:
        capture_stack_trace(g.vcpu(T + 0x10, RSP, RBP0), system_map=symbol_map())
    assert len(info.value.frames) == 2


def test_jump_over_one_mib_is_an_error_with_frames() -> None:
    g = make_guest()
    chain(g, [(RBP0, RBP0 + (1 << 20) + 8, T + 0x105)])
    with pytest.raises(StackWalkError, match=r"more than the 0x100000 allowed") as info:
        capture_stack_trace(g.vcpu(T + 0x10, RSP, RBP0), system_map=symbol_map())
    assert [f.symbol for f in info.value.frames] == ["func_a", "func_b"]  # type: ignore[attr-defined]


def test_jump_of_exactly_one_mib_is_allowed() -> None:
    g = make_guest()
    g.tables.map_range(RBP0 + (1 << 20) & ~0xFFF, 0x900000, 0x1000)
    chain(g, [(RBP0, RBP0 + (1 << 20), T + 0x105)])
    frames = capture_stack_trace(g.vcpu(T + 0x10, RSP, RBP0), system_map=symbol_map())
    assert len(frames) >= 2


def test_non_canonical_rbp_is_an_error() -> None:
    g = make_guest()
    with pytest.raises(StackWalkError, match=r"frame pointer 0x8000000000000000 is not canonical") as info:
        capture_stack_trace(g.vcpu(T + 0x10, RSP, 0x8000_0000_0000_0000), system_map=symbol_map())
    assert len(info.value.frames) == 1


def test_non_canonical_return_address_is_an_error() -> None:
    g = make_guest()
    chain(g, [(RBP0, RBP0 + 0x40, T + 0x105), (RBP0 + 0x40, 0, 0x0000_8000_0000_0000)])
    with pytest.raises(StackWalkError, match=r"return address 0x800000000000 .* not canonical") as info:
        capture_stack_trace(g.vcpu(T + 0x10, RSP, RBP0), system_map=symbol_map())
    assert len(info.value.frames) == 2


def test_unmapped_frame_pointer_is_a_page_walk_error_carrying_frames() -> None:
    g = make_guest()
    chain(g, [(RBP0, STACK_TOP + 0x1000, T + 0x105)])  # the page above the stack is unmapped
    with pytest.raises(PageWalkError, match=r"PT entry 5 .* 0xffffc90000005008") as info:
        capture_stack_trace(g.vcpu(T + 0x10, RSP, RBP0), system_map=symbol_map())
    assert isinstance(info.value, StackWalkError)
    assert [cast(StackFrame, f).symbol for f in info.value.frames] == ["func_a", "func_b"]
    with pytest.raises(PageWalkError, match=r"^frame 1: frame pointer 0xffffc90100000000: PDPT entry 4"):
        capture_stack_trace(g.vcpu(T + 0x10, RSP, 0xFFFF_C901_0000_0000), system_map=symbol_map())


def test_no_vcpu_and_no_symbols_are_distinct_errors(tmp_path: Path) -> None:
    with pytest.raises(NoVcpuError):
        capture_stack_trace(None, system_map=symbol_map())
    g = make_guest()
    with pytest.raises(SymbolSourceError):
        capture_stack_trace(g.vcpu(T, RSP, 0), vmlinux=tmp_path / "x", system_map=tmp_path / "y")
    with pytest.raises(SymbolSourceError):
        capture_stack_trace(g.vcpu(T, RSP, 0))
    for cls in (NoVcpuError, SymbolSourceError, StackWalkError, PageWalkError):
        assert issubclass(cls, DebugError)


def test_five_level_paging_trace() -> None:
    g = make_guest(five_level=True)
    chain(g, [(RBP0, 0, T + 0x105)])
    frames = capture_stack_trace(g.vcpu(T + 0x10, RSP, RBP0, cr4=CR4_LA57, cr3_extra=0x3),
                                 system_map=symbol_map())
    assert [f.symbol for f in frames] == ["func_a", "func_b"]


def test_vmlinux_and_file_object_sources(tmp_path: Path) -> None:
    elf = ElfBuilder(symbols=[Sym(n, T + o, FUNC_SIZE) for n, o in FUNCS]).build()
    (tmp_path / "vmlinux").write_bytes(elf)
    g = make_guest()
    chain(g, [(RBP0, 0, T + 0x105)])
    cpu = g.vcpu(T + 0x10, RSP, RBP0)
    by_path = capture_stack_trace(cpu, vmlinux=tmp_path / "vmlinux")
    by_file = capture_stack_trace(cpu, vmlinux=io.BytesIO(elf), system_map=tmp_path / "missing")
    assert by_path == by_file
    assert [f.symbol for f in by_path] == ["func_a", "func_b"]


# -- KASLR ------------------------------------------------------------------------------------
SLIDE = 0x1E00000


def test_kaslr_auto_detects_the_slide_from_page_tables() -> None:
    g = make_guest(text_va=T + SLIDE)
    chain(g, [(RBP0, 0, T + SLIDE + 0x105)])
    cpu = g.vcpu(T + SLIDE + 0x10, RSP, RBP0)
    frames = capture_stack_trace(cpu, system_map=symbol_map(), slide="auto")
    assert [(f.symbol, f.offset) for f in frames] == [("func_a", 0x10), ("func_b", 0x5)]
    unslid = capture_stack_trace(cpu, system_map=symbol_map(), slide=0)
    assert [f.symbol for f in unslid] == ["??", "??"]
    assert capture_stack_trace(cpu, system_map=symbol_map(), slide=SLIDE) == frames
    assert capture_stack_trace(cpu, system_map=symbol_map()) == frames  # the default is "auto"


def test_kaslr_slide_by_text_bytes_and_by_known_symbol() -> None:
    from vmboot.debug.symbol_sources import load_system_map

    table = load_system_map(symbol_map())
    g = make_guest(text_va=T + SLIDE, text_pa=0x400000)
    g.tables.map(0xFFFF_FFFF_8000_0000, 0, PAGE_SIZE_2M)  # as before cleanup_highmap
    g.vm.write(0x400000, b"\x48\x8d\x25\x51\x3f\x60\x01")   # "_text" bytes
    space = GuestAddressSpace(g.vm, g.tables.root)
    with pytest.raises(DebugError, match=r"below the link-time _text"):
        kaslr_slide(table, space)
    assert kaslr_slide(table, space, text_bytes=b"\x48\x8d\x25\x51\x3f\x60\x01") == SLIDE
    assert kaslr_slide(table, known=("func_c", T + SLIDE + 0x200)) == SLIDE
    with pytest.raises(DebugError, match=r"'nope' is not in"):
        kaslr_slide(table, known=("nope", 0))


# -- stack scan -------------------------------------------------------------------------------
def test_scan_marks_frames_unreliable_and_keeps_only_text_words() -> None:
    g = make_guest()
    words = [0x1234, T + 0x105, 0xFFFF_8880_0000_0000, T + 0x230, 0, T + 0x5000]
    for i, w in enumerate(words):
        g.write_u64(RSP + 8 * i, w)
    frames = capture_stack_trace(g.vcpu(T + 0x10, RSP, 0), system_map=symbol_map(), unwinder="scan")
    assert frames[:3] == [
        StackFrame(0, T + 0x10, "func_a", 0x10, True, FUNC_SIZE),
        StackFrame(1, T + 0x105, "func_b", 0x5, False, FUNC_SIZE),
        StackFrame(2, T + 0x230, "func_c", 0x30, False, FUNC_SIZE),
    ]
    assert len(frames) == 3
    text = format_trace(frames, {Register.RIP: T + 0x10, Register.RSP: RSP})
    assert f" #1  {T + 0x105:016x} ? func_b+0x5/0x100" in text


def test_format_trace_lists_registers_and_frames() -> None:
    frames = [StackFrame(0, T + 0x10, "func_a", 0x10, True, FUNC_SIZE),
              StackFrame(1, 0xDEAD, "??", 0)]
    text = format_trace(frames, {Register.RIP: T + 0x10, Register.RSP: RSP, Register.CR3: 0x1000})
    assert text.splitlines() == [
        f"RIP: {T + 0x10:016x} RSP: {RSP:016x}",
        "CR3: 0000000000001000",
        "Call Trace:",
        f" #0  {T + 0x10:016x} func_a+0x10/0x100",
        " #1  000000000000dead ??",
    ]


# -- ORC --------------------------------------------------------------------------------------
ORC_IP_ADDR = 0xFFFF_FFFF_8200_0000
SP_REG, BP_REG_UNDEF = 5, 0


def orc_flags(fmt: OrcFormat, kind: str, sp_reg: int = SP_REG) -> int:
    if fmt is OrcFormat.V3:
        code = {"call": 2, "end": 1}[kind]
        return sp_reg | (BP_REG_UNDEF << 4) | (code << 8)
    if kind == "end":
        return sp_reg | (1 << (10 if fmt is OrcFormat.V1 else 11))
    return sp_reg  # CALL = 0


def orc_vmlinux(fmt: OrcFormat, entries: list[tuple[int, int, str]], version: str) -> bytes:
    ips = b"".join(struct.pack("<i", ip - (ORC_IP_ADDR + 4 * i)) for i, (ip, _, _) in enumerate(entries))
    orc = b"".join(struct.pack("<hhH", sp_off, 0, orc_flags(fmt, kind)) for _, sp_off, kind in entries)
    return ElfBuilder(
        symbols=[Sym(n, T + o, FUNC_SIZE) for n, o in FUNCS],
        extra=[Section(".rodata", f"Linux version {version} (x)\0".encode(), T + 0x1000000, flags=2),
               Section(".orc_unwind_ip", ips, ORC_IP_ADDR, flags=2),
               Section(".orc_unwind", orc, ORC_IP_ADDR + 0x100000, flags=2)],
    ).build()


ORC_CASES = [(OrcFormat.V1, "6.1.0"), (OrcFormat.V2, "6.3.0"), (OrcFormat.V3, "6.6.0")]


@pytest.mark.parametrize(("fmt", "version"), ORC_CASES)
def test_orc_unwinds_a_stack_without_frame_pointers(fmt: OrcFormat, version: str) -> None:
    # func_a: CFA = SP + 24; func_b: CFA = SP + 16; func_c: end of stack.
    vmlinux = orc_vmlinux(fmt, [(T, 24, "call"), (T + 0x100, 16, "call"), (T + 0x200, 8, "end"),
                                (T + 0x300, 8, "call")], version)
    g = make_guest()
    g.write_u64(RSP + 16, T + 0x120)   # func_a's return address into func_b
    g.write_u64(RSP + 24 + 8, T + 0x240)  # func_b's return address into func_c
    cpu = g.vcpu(T + 0x10, RSP, 0)
    frames = capture_stack_trace(cpu, vmlinux=io.BytesIO(vmlinux))
    assert [(f.symbol, f.offset) for f in frames] == [("func_a", 0x10), ("func_b", 0x20), ("func_c", 0x40)]
    with pytest.raises(StackWalkError, match=r"no ORC entry"):
        capture_stack_trace(g.vcpu(T - 0x10, RSP, 0), vmlinux=io.BytesIO(vmlinux), unwinder="orc")
    # The frame-pointer walk alone sees only RIP (RBP is 0).
    assert len(capture_stack_trace(cpu, vmlinux=io.BytesIO(vmlinux), unwinder="frame-pointer")) == 1


@pytest.mark.parametrize(("fmt", "version"), ORC_CASES)
def test_orc_format_from_version_and_from_the_entries(fmt: OrcFormat, version: str) -> None:
    from vmboot.elf import ElfFile

    data = orc_vmlinux(fmt, [(T, 8, "call"), (T + 0x100, 16, "call"), (T + 0x200, 8, "end")], version)
    table = OrcTable.from_elf(ElfFile(data))
    assert table is not None and table.format is fmt
    entry = table.find(T + 0x50)
    assert entry is not None and entry.is_call_frame and entry.ip == T
    end = table.find(T + 0x2FF)
    assert end is not None and end.type is OrcType.END_OF_STACK
    if fmt is not OrcFormat.V2:  # v2 (6.3 only) cannot be told from v1 without the version
        no_version = orc_vmlinux(fmt, [(T, 8, "call"), (T + 0x100, 16, "call")], "x")
        guessed = OrcTable.from_elf(ElfFile(no_version))
        assert guessed is not None and guessed.format is fmt


def test_orc_follows_pt_regs_and_restores_bp_from_the_stack() -> None:
    """func_a (pushed RBP, CFA = SP + 16, BP at CFA - 16) returns into an interrupt entry whose
    pt_regs say the interrupt hit func_b; func_b's entry ends the stack."""
    bp_prev_sp, regs_type = 1, 1  # ORC_REG_PREV_SP; v1 ORC_TYPE_REGS
    ip_entries = [(T, struct.pack("<hhH", 16, -16, SP_REG | (bp_prev_sp << 4))),
                  (T + 0x100, struct.pack("<hhH", 8, 0, SP_REG | (1 << 10))),           # end
                  (T + 0x300, struct.pack("<hhH", 0, 0, SP_REG | (regs_type << 8)))]    # pt_regs at SP
    ips = b"".join(struct.pack("<i", ip - (ORC_IP_ADDR + 4 * i)) for i, (ip, _) in enumerate(ip_entries))
    vmlinux = ElfBuilder(
        symbols=[Sym(n, T + o, FUNC_SIZE) for n, o in FUNCS],
        extra=[Section(".rodata", b"Linux version 6.1.0\0", T + 0x1000000, flags=2),
               Section(".orc_unwind_ip", ips, ORC_IP_ADDR, flags=2),
               Section(".orc_unwind", b"".join(e for _, e in ip_entries), ORC_IP_ADDR + 0x1000, flags=2)],
    ).build()
    g = make_guest()
    saved_bp = RSP + 0x800
    g.write_u64(RSP, saved_bp)              # func_a: push %rbp
    g.write_u64(RSP + 8, T + 0x310)         # return into the interrupt entry (func_d)
    regs = RSP + 16                         # pt_regs right above
    pt = [0] * 21
    pt[4] = 0xB0B0                          # bp
    pt[16], pt[17], pt[19] = T + 0x100, 0x10, RSP + 0x400   # ip (func_b's first byte), cs, sp
    for i, v in enumerate(pt):
        g.write_u64(regs + 8 * i, v)
    frames = capture_stack_trace(g.vcpu(T + 0x10, RSP, 0x1234), vmlinux=io.BytesIO(vmlinux),
                                 unwinder="orc")
    assert [(f.symbol, f.offset) for f in frames] == [("func_a", 0x10), ("func_d", 0x10), ("func_b", 0)]
