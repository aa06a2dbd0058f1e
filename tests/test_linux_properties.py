"""Property-based tests: placement and overlap logic, and hostile images."""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bzimage_builder import BzImageSpec, build_bzimage
from vmboot.errors import LayoutError, VmbootError
from vmboot.hv import MemoryVM
from vmboot.linux import BootOptions, load_bzimage
from vmboot.linux.configurator.layout import Region, check_regions, highest_free_spot

MiB = 1 << 20
PAGE = 4096

regions_st = st.lists(
    st.tuples(st.integers(0, 255), st.integers(1, 64)).map(
        lambda t: Region(f"r{t[0]}-{t[1]}", t[0] * 0x10000, t[1] * 0x1000)
    ),
    max_size=8,
)


@given(regions=regions_st, size=st.integers(1, 1 << 22), limit=st.integers(0, 1 << 24))
def test_highest_free_spot_is_free_aligned_and_highest(
    regions: list[Region], size: int, limit: int
) -> None:
    ram = [(0, 1 << 24)]
    spot = highest_free_spot(size, limit, regions, ram, PAGE)
    def free(at: int) -> bool:
        return at >= 0 and at + size <= min(limit, 1 << 24) and not any(
            at < r.end and r.start < at + size for r in regions)
    if spot is None:
        # no aligned free spot exists at all
        top = min(limit, 1 << 24) - size
        assert not any(free(a) for a in range(0, max(top, -1) + 1, PAGE))
        return
    assert spot % PAGE == 0
    assert free(spot)
    # nothing higher (page-aligned) is free
    top = (min(limit, 1 << 24) - size) // PAGE * PAGE
    assert not any(free(a) for a in range(spot + PAGE, top + 1, PAGE))


@given(regions=regions_st)
def test_check_regions_accepts_exactly_disjoint_sets(regions: list[Region]) -> None:
    ram = [(0, 1 << 25)]
    disjoint = all(not a.overlaps(b) for i, a in enumerate(regions) for b in regions[i + 1:])
    try:
        check_regions(regions, ram, None)
        assert disjoint
    except LayoutError as e:
        assert not disjoint
        assert "overlaps" in str(e)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    zero_page=st.integers(0, 0x3FFF).map(lambda p: p * PAGE),
    paging=st.integers(0, 0x3FFF).map(lambda p: p * PAGE),
    cmdline_gpa=st.one_of(st.none(), st.integers(0, 0x3FFFFFF)),
    initrd_size=st.integers(0, 8 * MiB),
    initrd_gpa=st.one_of(st.none(), st.integers(0, 0x3FFF).map(lambda p: p * PAGE)),
    gib=st.integers(1, 8),
)
def test_prepare_never_overlaps_and_never_half_writes(
    zero_page: int, paging: int, cmdline_gpa: int | None, initrd_size: int,
    initrd_gpa: int | None, gib: int,
) -> None:
    assume(initrd_gpa is None or initrd_size)
    k = load_bzimage(build_bzimage(BzImageSpec(init_size=0x200000)))
    opts = BootOptions(cmdline="console=ttyS0", zero_page_gpa=zero_page, paging_base=paging,
                       cmdline_gpa=cmdline_gpa, initrd=b"\xaa" * initrd_size if initrd_size else None,
                       initrd_gpa=initrd_gpa, address_space_gib=gib)
    with MemoryVM(64 * MiB) as vm:
        try:
            plan = k.prepare(vm, opts)
        except VmbootError:
            import numpy as np
            assert not np.frombuffer(vm.memory.mapping, dtype=np.uint64).any()
            return
        regs = [r for r in plan.regions if r.size]
        for i, a in enumerate(regs):
            assert a.start >= 0 and a.end <= 64 * MiB
            for b in regs[i + 1:]:
                assert not a.overlaps(b), (a, b)
        if initrd_size:
            assert plan.initrd_gpa is not None
            assert vm.read(plan.initrd_gpa, initrd_size) == b"\xaa" * initrd_size


_BASE = build_bzimage()


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, len(_BASE) - 1), st.integers(0, 255)), max_size=12),
       st.integers(0, len(_BASE)))
def test_corrupted_images_raise_only_vmboot_errors(edits: list[tuple[int, int]], cut: int) -> None:
    img = bytearray(_BASE)
    for off, val in edits:
        img[off] = val
    img = img[:cut]
    try:
        k = load_bzimage(bytes(img))
        _ = (k.kernel_version, k.compression, k.init_size, k.check_64bit_entry())
        with MemoryVM(32 * MiB) as vm:
            k.prepare(vm, BootOptions(cmdline="x", initrd=b"i" * 100))
    except VmbootError:
        pass


@settings(max_examples=200)
@given(st.integers(-(1 << 65), 1 << 65), st.integers(-10, 1 << 20))
def test_guest_memory_bounds(gpa: int, n: int) -> None:
    with MemoryVM(2 * MiB) as vm:
        inside = gpa >= 0 and n >= 0 and gpa + n <= 2 * MiB
        try:
            vm.write(gpa, b"\x01" * max(n, 0)) if n >= 0 else vm.read(gpa, n)
            assert inside
        except VmbootError:
            assert not inside
            import numpy as np
            assert not np.frombuffer(vm.memory.mapping, dtype=np.uint64).any()
