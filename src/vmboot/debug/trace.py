"""Capture a symbolised stack trace of a guest vCPU.

:func:`capture_stack_trace` reads RIP, RSP, RBP, CR0, CR3 and CR4, loads symbols (see
:func:`vmboot.debug.symbol_sources.load_symbols`), and unwinds:

* ``unwinder="auto"`` (default): ORC when the vmlinux or kernel image has ORC tables
  (kernels built without frame pointers). If ORC cannot go on from a frame, that frame's
  ``note`` says why and the rest of the stack is scanned, every frame found so marked
  unreliable (``?``), as the kernel prints it. Without ORC tables: the frame-pointer walk.
* ``"frame-pointer"``, ``"orc"``: only that unwinder.
* ``"scan"``: the heuristic stack scan; frames after RIP are ``reliable=False``.

Frame 0 is RIP, looked up as is. Later frames hold return addresses and are looked up at
``pc - 1`` (a call at the very end of a function returns past it), with the offset then
given relative to ``pc`` — what the kernel's ``%pB`` does.
"""

from __future__ import annotations

from typing import Literal

from vmboot.debug.frames import StackFrame
from vmboot.debug.kaslr import detect_slide
from vmboot.debug.orc import OrcTable, UnwindState, orc_step
from vmboot.debug.page_walk import GuestAddressSpace
from vmboot.debug.stack_walk import (
    FrameMaker,
    _as_objects,
    effective_max_frames,
    scan_stack,
    walk_frame_pointers,
)
from vmboot.debug.symbol_sources import SymbolSource, load_symbols, memoised, read_all, rewind
from vmboot.debug.symtab import SymbolTable
from vmboot.elf import ElfFile
from vmboot.errors import NoVcpuError, StackWalkError, VmbootError
from vmboot.hv.base import VirtualCPU
from vmboot.hv.registers import GENERAL_REGISTERS, Register

Unwinder = Literal["auto", "frame-pointer", "orc", "scan"]
UNWINDERS: tuple[Unwinder, ...] = ("auto", "frame-pointer", "orc", "scan")

_ORC_REGS = {Register.RDX: "dx", Register.RDI: "di", Register.R10: "r10", Register.R13: "r13",
             Register.RBP: "bp"}


def frame_maker(symbols: SymbolTable) -> FrameMaker:
    """Symbolise ``(index, pc, reliable, is_return_address)`` into a :class:`StackFrame`."""
    def make(index: int, pc: int, reliable: bool, is_return: bool) -> StackFrame:
        if not is_return:
            m = symbols.lookup(pc)
            return StackFrame(index, pc, m.name, m.offset, reliable, m.size)
        m = symbols.lookup(pc - 1)
        return StackFrame(index, pc, m.name, m.offset + 1 if m.known else 0, reliable, m.size)
    return make


def load_orc(vmlinux: SymbolSource | None = None, kernel: SymbolSource | None = None) -> OrcTable | None:
    """The ORC table of the vmlinux, else of the kernel image; None when neither has one."""
    if vmlinux is not None:
        try:
            found = memoised("orc-vmlinux", vmlinux, lambda: _orc_from_elf_source(vmlinux))
            if found is not None:
                return found
        except (OSError, VmbootError):
            pass
    if kernel is not None:
        try:
            return memoised("orc-kernel", kernel, lambda: _orc_from_image(read_all(kernel)))
        except (OSError, VmbootError):
            return None
    return None


def _orc_from_elf_source(source: SymbolSource) -> OrcTable | None:
    rewind(source)
    with ElfFile.open(source) as elf:
        table = OrcTable.from_elf(elf)
        if table is not None:  # copy out of the mapping before it closes
            table.ips = table.ips.copy()
            table.entries = table.entries.copy()
        return table


def _orc_from_image(image: bytes) -> OrcTable | None:
    from vmboot.linux.loader.vmlinux import uncompressed_kernel

    data = uncompressed_kernel(image)
    table = OrcTable.from_elf(ElfFile(data, "<uncompressed kernel>"))
    if table is not None:
        table.ips = table.ips.copy()
        table.entries = table.entries.copy()
    return table


def walk_orc(space: GuestAddressSpace, table: OrcTable, regs: dict[Register, int], max_frames: int,
             make_frame: FrameMaker, slide: int = 0) -> list[StackFrame]:
    """Unwind with ORC from the registers; errors carry the frames collected so far."""
    known = {name: regs[r] for r, name in _ORC_REGS.items() if r in regs}
    start = UnwindState(regs[Register.RIP], regs[Register.RSP], regs[Register.RBP], known, True)
    return walk_orc_from(space, table, start, max_frames, make_frame, slide)


def walk_orc_from(space: GuestAddressSpace, table: OrcTable, start: UnwindState, max_frames: int,
                  make_frame: FrameMaker, slide: int = 0) -> list[StackFrame]:
    """Unwind with ORC from ``start`` (``signal=False``: its ip is a return address, as for a
    sleeping task); errors carry the frames collected so far."""
    limit = effective_max_frames(max_frames)
    frames = [make_frame(0, start.ip, True, not start.signal)]
    state = start
    while len(frames) < limit:
        try:
            step = orc_step(table, space, state, slide)
        except StackWalkError as exc:
            raise OrcStepError(f"ORC unwind, frame {len(frames)}: {exc}",
                               _as_objects(frames), state) from exc
        if step is None:
            break
        state = step
        frames.append(make_frame(len(frames), state.ip, True, not state.signal))
    return frames


class OrcStepError(StackWalkError):
    """ORC could not step past a frame; ``state`` is where it stood (for the scan that follows)."""

    def __init__(self, message: str, frames: list[object], state: UnwindState) -> None:
        super().__init__(message, frames)
        self.state = state


def orc_then_scan(space: GuestAddressSpace, table: OrcTable, start: UnwindState, max_frames: int,
                  symbols: SymbolTable, slide: int = 0) -> list[StackFrame]:
    """ORC frames, and where ORC stops early, a note on that frame and the rest of the stack
    scanned from its stack pointer, every scanned frame unreliable."""
    make = frame_maker(symbols)
    try:
        return walk_orc_from(space, table, start, max_frames, make, slide)
    except OrcStepError as exc:
        got = [f for f in exc.frames if isinstance(f, StackFrame)]
        last = got[-1]
        got[-1] = StackFrame(last.index, last.pc, last.symbol, last.offset, last.reliable,
                             last.size, f"ORC cannot unwind past this frame: {exc.__cause__}; "
                             f"frames after it are from a stack scan")
        limit = effective_max_frames(max_frames)
        if len(got) >= limit:
            return got
        scanned = scan_stack(space, last.pc, exc.state.sp, symbols, limit - len(got) + 1, make)
        for f in scanned[1:]:
            got.append(StackFrame(len(got), f.pc, f.symbol, f.offset, False, f.size))
        return got


def capture_stack_trace(
    vcpu: VirtualCPU | None,
    vmlinux: SymbolSource | None = None,
    system_map: SymbolSource | None = None,
    max_frames: int = 16,
    *,
    kernel: SymbolSource | None = None,
    slide: int | Literal["auto"] = "auto",
    unwinder: Unwinder = "auto",
) -> list[StackFrame]:
    """The symbolised call stack of ``vcpu`` (see the module docstring).

    ``slide`` is the KASLR slide to apply to the symbols; ``"auto"`` (default) detects it
    from the guest page tables (:func:`vmboot.debug.kaslr.detect_slide`: 0 when they show
    no kernel mapping yet). ``max_frames <= 0``
    means 16. Raises :class:`NoVcpuError`, :class:`SymbolSourceError`,
    :class:`PageWalkError` and :class:`StackWalkError` (with ``.frames``).
    """
    if vcpu is None:
        raise NoVcpuError("capture_stack_trace: vcpu is None; pass the VirtualCPU to inspect")
    if unwinder not in UNWINDERS:
        raise ValueError(f"unwinder={unwinder!r}; valid: {', '.join(UNWINDERS)}")
    symbols = load_symbols(vmlinux=vmlinux, system_map=system_map, kernel=kernel)
    wanted = (*GENERAL_REGISTERS, Register.CR0, Register.CR3, Register.CR4)
    regs = vcpu.get_registers(wanted)
    space = GuestAddressSpace(vcpu.vm, regs[Register.CR3], regs[Register.CR4], regs[Register.CR0])
    if slide == "auto":
        slide = detect_slide(symbols, space)
    runtime_symbols = symbols.slid(slide)
    make = frame_maker(runtime_symbols)
    rip, rsp, rbp = regs[Register.RIP], regs[Register.RSP], regs[Register.RBP]
    if unwinder == "scan":
        return scan_stack(space, rip, rsp, runtime_symbols, max_frames, make)
    if unwinder == "frame-pointer":
        return walk_frame_pointers(space, rip, rbp, max_frames, make)
    orc = load_orc(vmlinux, kernel)
    if orc is None:
        if unwinder == "orc":
            raise StackWalkError("unwinder='orc' but neither the vmlinux nor the kernel image "
                                 "has .orc_unwind/.orc_unwind_ip sections")
        return walk_frame_pointers(space, rip, rbp, max_frames, make)
    if unwinder == "orc":
        return walk_orc(space, orc, regs, max_frames, make, slide)
    known = {name: regs[r] for r, name in _ORC_REGS.items() if r in regs}
    return orc_then_scan(space, orc, UnwindState(rip, rsp, rbp, known, True), max_frames,
                         runtime_symbols, slide)
