"""500 VM create -> boot the probe kernel -> close cycles in one process: fds and RSS stay flat."""

from __future__ import annotations

import time

import pytest

from conftest import requires_kvm
from process_usage import mapping_count, open_fd_count, rss_bytes
from vmboot.linux import BootOptions
from vmboot.probes import run_probe

CYCLES = 500
WARMUP = 10
RSS_GROWTH_LIMIT = 1 << 20
"""RSS after the cycles stays within 1 MiB of before (the README's claim): leaking one 4 KiB
kvm_run page per boot would add 2 MiB, one 16 MiB guest 8000 MiB (``pytest -s`` prints the
figures)."""
MEMORY = 16 << 20
MAPPING_GROWTH_LIMIT = CYCLES // 10
"""Mappings after the cycles: a leak of one per cycle (a kvm_run page, a guest RAM) would add
500. glibc may keep a few more for good (a malloc arena per thread that ran at the same
time as others, cached thread stacks), more of them on a loaded host."""


@pytest.mark.slow
@requires_kvm
def test_500_boot_cycles_leave_nothing_behind() -> None:
    options = BootOptions(cmdline="console=ttyS0 cycle", initrd=b"cycle" * 200)
    for _ in range(WARMUP):
        assert run_probe("bzimage", options, memory=MEMORY).ok
    fds, rss, maps = open_fd_count(), rss_bytes(), mapping_count()
    t0 = time.monotonic()
    failed = 0
    for _ in range(CYCLES):
        result = run_probe("bzimage", options, memory=MEMORY)
        failed += not result.ok
    elapsed = time.monotonic() - t0
    fds_after, rss_after, maps_after = open_fd_count(), rss_bytes(), mapping_count()
    print(f"\n{CYCLES} create/boot/close cycles in {elapsed:.1f} s: fds {fds} -> {fds_after}, "
          f"mappings {maps} -> {maps_after}, RSS {rss / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB")
    assert failed == 0
    assert fds_after == fds
    assert maps_after - maps < MAPPING_GROWTH_LIMIT, (maps, maps_after)
    assert rss_after - rss < RSS_GROWTH_LIMIT
