"""BootOptions at their edges through plan()/prepare()/build_zero_page(), with and without the hole.

Every address/size option is drawn from boundary values (0, 1, negatives, 2**63, 2**64 - 1,
region edges), the command line from arbitrary bytes or a str with lone surrogates, the E820
map from arbitrary entries. Contract: only VmbootError comes out; a refused prepare()
writes nothing; an accepted plan keeps every region inside guest RAM without overlaps.
"""

from __future__ import annotations

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401

from collections.abc import Sequence

from fuzz.fuzz_bzimage import RecordingVM
from fuzz.harness import Bytes, Target, atheris_main
from fuzz.seeds import synthetic_bzimage
from vmboot.errors import VmbootError
from vmboot.linux import BootOptions, BzImage, E820Entry
from vmboot.linux import bootparam as bp
from vmboot.units import GiB, MiB

SMALL = 32 * MiB
HOLE = 3 * GiB + 32 * MiB
_vms: dict[int, RecordingVM] = {}
_kernels: list[BzImage] = []


def _vm(size: int) -> RecordingVM:
    if size not in _vms:
        _vms[size] = RecordingVM(size)
    return _vms[size]


def _kernel_choices() -> list[BzImage]:
    if not _kernels:
        for kw in ({}, {"relocatable": 0, "pref_address": 0}, {"version": 0x020C},
                   {"xloadflags": bp.XLF_KERNEL_64}, {"init_size": 0x2000000}):
            _kernels.append(BzImage(synthetic_bzimage(**kw)))
    return _kernels


def _maybe(src: Bytes, around: Sequence[int]) -> int | None:
    return None if src.uint(1) % 3 == 0 else src.interesting_int(around)


def one_input(data: bytes) -> None:
    src = Bytes(data)
    size = src.choice((SMALL, HOLE))
    vm = _vm(size)
    kernel = src.choice(_kernel_choices())
    around = [0, 0x1000, 0x90000, 0x100000, 0x1000000, size, 3 * GiB, 4 * GiB, 1 << 32, 1 << 64]
    cmd_len = src.uint(1) * 16
    raw_cmd = src.take(cmd_len)
    cmdline: str | bytes = raw_cmd if src.boolean() else raw_cmd.decode("utf-8", "surrogateescape")
    initrd = bytes(src.uint(3) % (1 << 20)) if src.boolean() else None
    e820 = None
    if src.uint(1) % 4 == 0:
        e820 = [E820Entry(src.interesting_int(around), src.interesting_int(around),
                          src.interesting_int((1, 2))) for _ in range(src.uint(1) % 200)]
    options = BootOptions(
        cmdline=cmdline,
        load_addr=_maybe(src, around),
        initrd=initrd,
        initrd_gpa=_maybe(src, around) if initrd is not None or src.boolean() else None,
        zero_page_gpa=src.interesting_int(around) if src.boolean() else 0x90000,
        cmdline_gpa=_maybe(src, around),
        stack_top_gpa=_maybe(src, around),
        paging_base=src.interesting_int(around) if src.boolean() else 0x20000,
        address_space_gib=src.interesting_int((1, 4, 512, 513)) if src.boolean() else 4,
        e820=e820,
    )
    vm.mutations = 0
    try:
        plan = kernel.prepare(vm, options)
    except VmbootError:
        assert vm.mutations == 0, "a refused prepare() wrote to guest memory"
        plan = None
    if plan is not None:
        ram = list(vm.memory.ram_ranges())
        live = [r for r in plan.regions if r.size > 0]
        for r in live:
            assert any(s <= r.start and r.end <= e for s, e in ram), r
        for i, a in enumerate(live):
            for b in live[i + 1 :]:
                assert not a.overlaps(b), (a, b)
        plan.describe()
    kernel.build_zero_page(
        src.interesting_int(around), _maybe(src, around), src.interesting_int((0, 1 << 32)),
        e820 or (), _maybe(src, around), _maybe(src, (0x200000, 1 << 32)),
    )


def _seeds() -> list[bytes]:
    return [bytes([k, 0, 4]) + b"console=ttyS0 x " * 4 + bytes([1, 0, 0x10, 0]) + bytes(32) for k in (0, 1)]


TARGET = Target("boot_options", one_input, _seeds, max_len=2048,
                description="BootOptions edges through plan/prepare/build_zero_page")

if __name__ == "__main__":
    atheris_main(TARGET)
