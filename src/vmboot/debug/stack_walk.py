"""Walking a guest kernel stack: the frame-pointer chain, and a heuristic stack scan.

Frame-pointer walk (``-fno-omit-frame-pointer`` kernels): each frame holds the caller's
RBP at ``[rbp]`` and the return address at ``[rbp + 8]``. Frame 0 is always RIP. Then,
for each frame pointer:

Clean ends (the list so far is returned):
  * RBP is 0 (the entry code clears it at the bottom of every kernel stack);
  * the return address at ``[rbp + 8]`` is 0;
  * ``max_frames`` frames were collected.

Errors (:class:`StackWalkError`; ``.frames`` holds the frames collected so far):
  * RBP is not canonical;
  * the return address is not canonical;
  * the next frame pointer is not above the current one (stacks grow down, so callers'
    frames are at higher addresses; equal or lower means a loop or garbage);
  * the next frame pointer is more than 1 MiB above the current one (far beyond any
    kernel stack, so it is not the same stack).

Interrupt stacks: Linux (``call_on_irqstack``) switches to the per-CPU IRQ stack after
storing the interrupted stack pointer in the top word of that stack; the frame pointer
chain then leads from the IRQ stack back to the task stack. So a next frame pointer that
is not above the current one (or too far above) is followed when it lies in the 16 KiB
stack area of the stack pointer saved at the top of the current stack area, at or above
it, and that area was not visited yet.

A frame pointer whose page is not mapped raises :class:`UnmappedFrameError`, which is both
a :class:`PageWalkError` (its message names the paging level and the address) and a
:class:`StackWalkError` (``.frames`` holds the frames collected so far).

The stack scan (:func:`scan_stack`) reads every aligned word from RSP to the end of the
stack area and keeps those that fall inside a known function; it finds return addresses
but also stale values, so its frames are marked ``reliable=False`` (printed with ``?``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vmboot.debug.frames import StackFrame
from vmboot.debug.page_walk import GuestAddressSpace
from vmboot.debug.symtab import SymbolTable
from vmboot.errors import PageWalkError, StackWalkError
from vmboot.units import MiB

DEFAULT_MAX_FRAMES = 16
RETURN_ADDRESS_OFFSET = 8
"""``[rbp + 8]`` holds the return address pushed by ``call``."""
MAX_FRAME_JUMP = MiB
"""The largest step from one frame pointer to the next (1 MiB)."""
WORD = 8
STACK_SCAN_LIMIT = 16 << 10
"""The scan reads at most THREAD_SIZE (16 KiB on x86_64) from RSP."""
STACK_AREA = 16 << 10
"""THREAD_SIZE and IRQ_STACK_SIZE on x86_64: task and IRQ stacks are areas this size, aligned."""

FrameMaker = Callable[[int, int, bool, bool], StackFrame]
"""``(index, pc, reliable, is_return_address) -> StackFrame``: symbolises a frame.

A return address is looked up at ``pc - 1``; an exact address (RIP, or the RIP saved by
an interrupt) at ``pc``."""


class UnmappedFrameError(PageWalkError, StackWalkError):
    """A frame pointer (or the stack word it points at) is not mapped in the guest."""


def effective_max_frames(max_frames: int) -> int:
    """``max_frames <= 0`` means the default (16)."""
    return max_frames if max_frames > 0 else DEFAULT_MAX_FRAMES


def walk_frame_pointers(space: GuestAddressSpace, rip: int, rbp: int, max_frames: int,
                        make_frame: FrameMaker) -> list[StackFrame]:
    """The frame-pointer walk described in the module docstring."""
    limit = effective_max_frames(max_frames)
    frames = [make_frame(0, rip, True, False)]
    visited = {rbp & ~(STACK_AREA - 1)}
    while len(frames) < limit:
        if rbp == 0:
            break
        if not space.is_canonical(rbp):
            raise StackWalkError(f"frame {len(frames)}: frame pointer {rbp:#x} is not canonical",
                                 _as_objects(frames))
        try:
            ret = space.read_u64(rbp + RETURN_ADDRESS_OFFSET)
            next_rbp = space.read_u64(rbp)
        except PageWalkError as exc:
            raise UnmappedFrameError(f"frame {len(frames)}: frame pointer {rbp:#x}: {exc}",
                                     _as_objects(frames)) from exc
        if ret == 0:
            break
        if not space.is_canonical(ret):
            raise StackWalkError(f"frame {len(frames)}: return address {ret:#x} at "
                                 f"[{rbp:#x} + 8] is not canonical", _as_objects(frames))
        frames.append(make_frame(len(frames), ret, True, True))
        if next_rbp == 0:
            break
        if not rbp < next_rbp <= rbp + MAX_FRAME_JUMP and _is_stack_switch(space, rbp, next_rbp,
                                                                           visited):
            visited.add(next_rbp & ~(STACK_AREA - 1))
            rbp = next_rbp
            continue
        if next_rbp <= rbp:
            raise StackWalkError(f"frame {len(frames) - 1}: next frame pointer {next_rbp:#x} at "
                                 f"[{rbp:#x}] does not increase (must be above {rbp:#x})",
                                 _as_objects(frames))
        if next_rbp - rbp > MAX_FRAME_JUMP:
            raise StackWalkError(f"frame {len(frames) - 1}: next frame pointer {next_rbp:#x} is "
                                 f"{next_rbp - rbp:#x} bytes above {rbp:#x}, more than the "
                                 f"{MAX_FRAME_JUMP:#x} allowed", _as_objects(frames))
        rbp = next_rbp
    return frames


def _is_stack_switch(space: GuestAddressSpace, rbp: int, next_rbp: int, visited: set[int]) -> bool:
    """True when ``next_rbp`` is on the stack that the top word of ``rbp``'s area points to."""
    area = next_rbp & ~(STACK_AREA - 1)
    if area in visited or not space.is_canonical(next_rbp):
        return False
    try:
        saved_sp = space.read_u64((rbp & ~(STACK_AREA - 1)) + STACK_AREA - WORD)
    except PageWalkError:
        return False
    return saved_sp & ~(STACK_AREA - 1) == area and next_rbp >= saved_sp


def scan_stack(space: GuestAddressSpace, rip: int, rsp: int, symbols: SymbolTable, max_frames: int,
               make_frame: FrameMaker, limit_bytes: int = STACK_SCAN_LIMIT) -> list[StackFrame]:
    """Heuristic: frame 0 is RIP, then every stack word from RSP that lies inside a function.

    The scan stops at the end of the 16 KiB-aligned stack area holding RSP, at an unmapped
    page, or after ``max_frames`` frames. All frames after frame 0 are ``reliable=False``.
    """
    limit = effective_max_frames(max_frames)
    frames = [make_frame(0, rip, True, False)]
    start = rsp & ~(WORD - 1)
    end = (start & ~(limit_bytes - 1)) + limit_bytes
    try:
        raw = space.read(start, end - start)
    except PageWalkError:
        raw = b""
        # Read what is mapped, page by page, stopping at the first hole.
        addr = start
        while addr < end:
            chunk = min(end - addr, 4096 - (addr & 4095))
            try:
                raw += space.read(addr, chunk)
            except PageWalkError:
                break
            addr += chunk
    words = np.frombuffer(raw[: len(raw) // WORD * WORD], dtype="<u8")
    hits = symbols.lookup_indices(words)
    for value in words[hits >= 0].tolist():
        if len(frames) >= limit:
            break
        frames.append(make_frame(len(frames), int(value), False, True))
    return frames


def _as_objects(frames: list[StackFrame]) -> list[object]:
    """The frames for :class:`StackWalkError` (whose ``frames`` is typed loosely)."""
    return list[object](frames)
