"""Hardware breakpoints and watchpoints in the four x86 debug registers (DR0-DR3, DR7).

DR7 holds, for slot ``i``: the local-enable bit ``2*i``, the condition (R/W) in bits
``16+4*i`` (00 execute, 01 write, 11 read or write) and the length (LEN) in bits ``18+4*i``
(00 one byte, 01 two, 11 four, 10 eight). An execute breakpoint has length 00; a watched
range must be naturally aligned to its length. (Intel SDM vol. 3, 18.2.)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

SLOTS = 4
DR7_GE = 1 << 9
"""Global exact breakpoint enable (recommended with data breakpoints)."""
DR6_HIT_MASK = 0xF
"""DR6 bits B0-B3: which slot's condition was met."""

_LEN_BITS = {1: 0b00, 2: 0b01, 4: 0b11, 8: 0b10}


class WatchKind(enum.Enum):
    """The R/W condition of a data breakpoint (x86 cannot trap reads alone)."""

    WRITE = 0b01
    ACCESS = 0b11

    @property
    def stop_name(self) -> str:
        """How a stop reply names a hit: ``watch`` (write) or ``awatch`` (read or write)."""
        return "watch" if self is WatchKind.WRITE else "awatch"


@dataclass(frozen=True, slots=True)
class Slot:
    address: int
    length: int
    watch: WatchKind | None
    """None for an execute breakpoint."""


class DebugRegisterSlots:
    """Which of the four slots hold which breakpoint, and the DR7 value that arms them."""

    def __init__(self) -> None:
        self._slots: list[Slot | None] = [None] * SLOTS

    @staticmethod
    def valid(address: int, length: int, watch: WatchKind | None) -> bool:
        if not 0 <= address < 1 << 64:
            return False
        if watch is None:
            return True  # gdb's "kind" for an execute breakpoint is the instruction length
        return length in _LEN_BITS and address % length == 0

    def insert(self, address: int, length: int, watch: WatchKind | None) -> bool:
        if not self.valid(address, length, watch):
            return False
        slot = Slot(address, 1 if watch is None else length, watch)
        if slot in self._slots:
            return True
        for i, held in enumerate(self._slots):
            if held is None:
                self._slots[i] = slot
                return True
        return False

    def remove(self, address: int, length: int, watch: WatchKind | None) -> bool:
        slot = Slot(address, 1 if watch is None else length, watch)
        for i, held in enumerate(self._slots):
            if held == slot:
                self._slots[i] = None
                return True
        return False

    def any_set(self) -> bool:
        return any(s is not None for s in self._slots)

    def clear(self) -> None:
        self._slots = [None] * SLOTS

    def addresses(self) -> tuple[int, int, int, int]:
        a = [s.address if s is not None else 0 for s in self._slots]
        return (a[0], a[1], a[2], a[3])

    def dr7(self) -> int:
        value = 0
        for i, slot in enumerate(self._slots):
            if slot is None:
                continue
            value |= 1 << (2 * i)
            if slot.watch is not None:
                value |= slot.watch.value << (16 + 4 * i)
                value |= _LEN_BITS[slot.length] << (18 + 4 * i)
                value |= DR7_GE
        return value

    def hit(self, dr6: int) -> Slot | None:
        """The slot whose condition DR6 reports met (the lowest, if several)."""
        for i in range(SLOTS):
            if dr6 & (1 << i) and self._slots[i] is not None:
                return self._slots[i]
        return None
