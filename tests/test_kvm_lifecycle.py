"""VM lifetime: create/close cycles release every fd and mapping; close is idempotent and
safe after errors; use after close is refused clearly."""

from __future__ import annotations

import pytest

from conftest import requires_kvm
from process_usage import open_fd_count, rss_bytes
from vmboot.errors import GuestMemoryError, HypervisorError
from vmboot.hv import Register
from vmboot.hv.kvm import KVM, KvmVM

pytestmark = [requires_kvm, pytest.mark.kvm]

CYCLES = 500
RSS_GROWTH_LIMIT = 1 << 20
"""RSS after the cycles stays within 1 MiB of before (the README's claim): leaking one 4 KiB
kvm_run page per cycle would add 2 MiB, one 2 MiB guest RAM 1000 MiB (``pytest -s`` prints
the figures)."""


def _cycle() -> None:
    with KvmVM(2 << 20) as vm:
        vcpu = vm.create_vcpu(0)
        vm.write(0x1000, b"\xf4" * 4096)  # touch guest RAM so it is really mapped
        _ = vcpu.run_page[0]


def test_create_close_cycles_leave_no_fds_or_memory_behind() -> None:
    for _ in range(5):  # warm caches (ctypes types, CPUID) before the baseline
        _cycle()
    fds, rss = open_fd_count(), rss_bytes()
    for _ in range(CYCLES):
        _cycle()
    fds_after, rss_after = open_fd_count(), rss_bytes()
    print(f"\n{CYCLES} create/close cycles: fds {fds} -> {fds_after}, "
          f"RSS {rss / 2**20:.1f} MiB -> {rss_after / 2**20:.1f} MiB "
          f"({(rss_after - rss) / 2**10:+.0f} KiB)")
    assert fds_after == fds
    assert rss_after - rss < RSS_GROWTH_LIMIT


def test_close_is_idempotent_and_refuses_use_after() -> None:
    fds = open_fd_count()
    vm = KvmVM(2 << 20)
    vcpu = vm.create_vcpu(0)
    vm.close()
    vm.close()
    assert vm.closed
    assert open_fd_count() == fds
    with pytest.raises(HypervisorError, match="after close"):
        vcpu.get_register(Register.RIP)
    with pytest.raises(HypervisorError, match="after close"):
        vm.create_vcpu(1)
    with pytest.raises(GuestMemoryError, match="after the VM was closed"):
        vm.read(0, 1)


def test_failed_setup_releases_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    fds = open_fd_count()
    import mmap  # the module vmboot.hv.kvm.vcpu maps the kvm_run page with

    def refuse(*args: object, **kwargs: object) -> None:
        raise HypervisorError("injected: the kvm_run page cannot be mapped")

    with KvmVM(2 << 20) as vm, pytest.raises(HypervisorError, match="injected"):
        monkeypatch.setattr(mmap, "mmap", refuse)
        vm.create_vcpu(0)
    monkeypatch.undo()
    assert open_fd_count() == fds
    with pytest.raises(HypervisorError, match=r"CPUID policy .fast. is not one of"):
        KvmVM(2 << 20, cpuid_policy="fast")  # type: ignore[arg-type]
    assert open_fd_count() == fds


def test_shared_kvm_outlives_its_vms() -> None:
    with KVM() as kvm:
        fds = open_fd_count()
        for _ in range(3):
            with KvmVM(2 << 20, kvm=kvm) as vm:
                vm.create_vcpu(0)
        assert open_fd_count() == fds
        assert kvm.fd >= 0


def test_the_guest_tsc_rate_is_read_from_the_vm() -> None:
    """KVM_GET_TSC_KHZ on the VM (what the agent's cycle counts are converted with) gives a
    rate a TSC can have: 100 MHz to 10 GHz."""
    with KvmVM(2 << 20) as vm:
        assert 100_000 <= vm.tsc_khz() <= 10_000_000
