"""Guest RAM accessors at edge addresses and lengths, with and without the 3-4 GiB hole.

Each input is a sequence of operations (read, write, zero, view, contains, offset_of,
read_u64s) at addresses chosen around region edges, 0, 2**64 - 1, negatives and lengths
that wrap. Contract: a refused access raises GuestMemoryError (nothing else) and writes
nothing; an accepted one lands where offset_of says and reads back what was written.
"""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

import hashlib

from fuzz.harness import Bytes, Target, atheris_main
from vmboot.errors import GuestMemoryError
from vmboot.hv import MemoryVM
from vmboot.units import GiB, MiB

SMALL = 2 * MiB
HOLE = 3 * GiB + 8 * MiB
"""Just past the 3 GiB MMIO gap: RAM [0, 3 GiB) and [4 GiB, 4 GiB + 8 MiB)."""
MAX_LEN = 64 * 1024
PROBE = 16 * 1024
_vms: dict[int, MemoryVM] = {}


def _vm(size: int) -> MemoryVM:
    if size not in _vms:
        _vms[size] = MemoryVM(size)
    return _vms[size]


def _edges(vm: MemoryVM) -> list[int]:
    out = [0, 1, -1, (1 << 64) - 1, 1 << 63, 1 << 64, -(1 << 64), 3 * GiB, 4 * GiB]
    for r in vm.regions:
        out += [r.gpa, r.end, r.end - 1, r.end - 8, r.gpa - 1]
    return out


def _fingerprint(vm: MemoryVM, points: list[int]) -> bytes:
    """A hash of guest RAM around every edge and every address touched (cheap, local)."""
    h = hashlib.blake2b(digest_size=16)
    for r in vm.regions:
        for start in {r.gpa, max(r.gpa, r.end - PROBE)} | {
            min(max(r.gpa, p - PROBE // 2), r.end - PROBE) for p in points if r.gpa <= p < r.end
        }:
            h.update(vm.read(start, PROBE))
    return h.digest()


def one_input(data: bytes) -> None:
    src = Bytes(data)
    vm = _vm(src.choice((SMALL, HOLE)))
    edges = _edges(vm)
    for _ in range(8):
        if src.remaining == 0:
            break
        op = src.choice(("read", "write", "zero", "view", "contains", "offset", "u64s"))
        gpa = src.interesting_int(edges)
        length = src.interesting_int((0, 1, 8, 4096, vm.memory.size, 1 << 64))
        fits = vm.memory.contains(gpa, length)
        points = [p for p in (gpa, gpa + length) if isinstance(p, int)]
        before = _fingerprint(vm, points) if op in ("write", "zero") and not fits else b""
        try:
            if op == "read":
                if fits and length > MAX_LEN:  # a valid multi-GiB copy proves nothing more
                    vm.view(gpa, length).release()
                else:
                    out = vm.read(gpa, length)
                    assert len(out) == length
            elif op == "write":
                payload = bytes([src.uint(1)]) * min(max(length, 0), MAX_LEN)
                vm.write(gpa, payload)
                assert vm.read(gpa, len(payload)) == payload
                length = len(payload)
            elif op == "zero":
                vm.zero(gpa, length)
                if length:
                    assert vm.read(gpa, min(length, MAX_LEN)) == bytes(min(length, MAX_LEN))
            elif op == "view":
                view = vm.view(gpa, length)
                assert view.nbytes == length
                view.release()
            elif op == "contains":
                assert vm.memory.contains(gpa, length) is fits
            elif op == "offset":
                off = vm.memory.offset_of(gpa, length)
                assert off >= 0 and off + length <= vm.memory.size
            else:
                count = length % 4096 if length >= 0 else length
                vm.memory.read_u64s(gpa, count)
        except GuestMemoryError:
            if op in ("write", "zero"):
                assert not vm.memory.contains(gpa, length) or length < 0
                assert _fingerprint(vm, points) == (before or _fingerprint(vm, points))
            continue
        if op in ("read", "zero", "view", "offset"):
            assert fits, f"{op}({gpa:#x}, {length:#x}) succeeded outside guest RAM"


def _seeds() -> list[bytes]:
    return [bytes([k, op, 0, 0, 0, 0, 0, 1, 0]) for k in (0, 1) for op in range(7)]


TARGET = Target("guest_memory", one_input, _seeds, max_len=512,
                description="GuestMemory read/write/zero/view/offset_of at edges, with and without the hole")

if __name__ == "__main__":
    atheris_main(TARGET)
