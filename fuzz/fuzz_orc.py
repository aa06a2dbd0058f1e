"""ORC tables from raw section bytes, entry decoding, and ORC unwinding over a hostile guest stack.

Input layout (consumed with :class:`fuzz.harness.Bytes`): format choice, section
address, split point, .orc_unwind length, initial ip/sp/bp/signal, then the
``.orc_unwind_ip`` / ``.orc_unwind`` bytes; the same bytes also fill a small guest's RAM,
which the unwinder reads as its stack (paging off).
"""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

import struct

from fuzz.harness import Bytes, Target, atheris_main
from vmboot.debug.orc import OrcFormat, OrcTable, UnwindState, orc_step
from vmboot.debug.page_walk import GuestAddressSpace
from vmboot.errors import StackWalkError
from vmboot.hv import MemoryVM

VM_BYTES = 2 << 20
TEXT = 0xFFFF_FFFF_8100_0000
MAX_STEPS = 16
_vm: MemoryVM | None = None


def _guest() -> MemoryVM:
    global _vm
    if _vm is None:
        _vm = MemoryVM(VM_BYTES)
    return _vm


def _seeds() -> list[bytes]:
    out = []
    for fmt, call in ((0, 0), (3, 2), (2, 0)):
        count = 16
        ips = b"".join(struct.pack("<i", 0x10 * i - 4 * i) for i in range(count))
        entries = b"".join(struct.pack("<hhH", 8 + 8 * (i % 3), -16, (5 if i % 4 else 4) | 0x40 | (call << 8))
                           for i in range(count))
        head = bytes([fmt]) + struct.pack("<Q", TEXT) + struct.pack("<HH", len(ips), len(entries))
        regs = struct.pack("<QQQB", TEXT + 0x20, 0x1000, 0x1100, 1)
        out.append(head + regs + ips + entries + struct.pack("<Q", TEXT + 0x30) * 64)
    return out


def one_input(data: bytes) -> None:
    src = Bytes(data)
    fmt = src.choice((None, OrcFormat.V1, OrcFormat.V2, OrcFormat.V3))
    addr = src.uint(8)
    split, entry_len = src.uint(2), src.uint(2)
    ip, sp, bp, signal = src.uint(8), src.uint(8), src.uint(8), src.boolean()
    rest = src.rest()
    ip_data, entry_data = rest[:split], rest[split : split + entry_len]
    table = OrcTable.from_sections(ip_data, addr, entry_data, fmt, "<fuzz>")
    for i in range(min(len(table), 64)):
        table.entry(i)
    for probe in (0, addr, ip, (1 << 64) - 1):
        table.find(probe)
    vm = _guest()
    vm.zero(0, VM_BYTES)
    vm.write(0, rest[: VM_BYTES])
    space = GuestAddressSpace(vm, cr3=0, cr4=0, cr0=0)
    state: UnwindState | None = UnwindState(ip, sp, bp, None, signal)
    slide = int.from_bytes(data[-4:].ljust(4, b"\0"), "little", signed=True) if len(data) > 64 else 0
    for _ in range(MAX_STEPS):
        assert state is not None
        try:
            state = orc_step(table, space, state, slide)
        except StackWalkError:
            break  # the normal end of a walk over a broken stack
        if state is None:
            break


TARGET = Target("orc", one_input, _seeds, lambda: list(range(0, 48)), max_len=1 << 14,
                description="OrcTable.from_sections, entry decoding, orc_step on a hostile stack")

if __name__ == "__main__":
    atheris_main(TARGET)
