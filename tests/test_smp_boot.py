"""The tiny-smp kernel booted with 1, 2 and 4 vCPUs: the kernel finds the MP table, brings every
CPU up with INIT/SIPI, and a command in the guest sees them as cores of one package.

Each boot takes tens of seconds here, so each vCPU count boots once (module-scoped) and
every check reads that boot's console.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import requires_kvm, shared_kernel_file
from vmboot.hv.kvm.host import host_is_emulating
from vmboot.vmm.exits import ExitReason
from vmboot.vmm.machine import Machine, RunResult
from vmboot.vmm.profile import GuestProfiler, Profile

pytestmark = [pytest.mark.slow, requires_kvm]

LIMIT = 600.0
"""Seconds any one boot may take before the test gives up (a hang, not a slow host)."""
PROFILE_HZ = 20
CPU_COUNTS = (1, 2, 4)
EXEC_CPUS = 3
"""Not a power of two: the topology leaves still number one package of 3 cores."""


@pytest.fixture(scope="module", params=CPU_COUNTS, ids=lambda n: f"{n}cpu")
def booted(request: pytest.FixtureRequest) -> tuple[int, RunResult, Profile]:
    cpus: int = request.param
    with Machine(shared_kernel_file("tiny-smp-bzImage"),
                 initrd=shared_kernel_file("tiny-initramfs-min.cpio"), cpus=cpus) as machine, \
            GuestProfiler(machine, PROFILE_HZ) as profiler:
        result = machine.run(timeout=LIMIT)
    return cpus, result, profiler.profile()


def test_boots_to_init_and_resets(booted: tuple[int, RunResult, Profile]) -> None:
    cpus, result, _ = booted
    assert result.exit.reason is ExitReason.RESET, (result.exit.one_line(), result.console_text[-3000:])
    assert "VMBOOT-INIT-OK" in result.console_text
    assert result.cpus == cpus and result.as_dict()["cpus"] == cpus


def test_kernel_reads_the_mp_table(booted: tuple[int, RunResult, Profile]) -> None:
    cpus, result, _ = booted
    text = result.console_text
    assert "found SMP MP-table at [mem 0x0009fc00-0x0009fc0f]" in text
    assert "MPTABLE: OEM ID: VMBOOT" in text
    assert re.search(rf"IOAPIC\[0\]: apic_id {cpus + 1}, .*address 0xfec00000, GSI 0-23", text), text
    assert f"smpboot: Allowing {cpus} CPUs, 0 hotplug CPUs" in text


def test_kernel_brings_up_every_cpu(booted: tuple[int, RunResult, Profile]) -> None:
    cpus, result, _ = booted
    noun = "CPU" if cpus == 1 else "CPUs"
    assert f"smp: Brought up 1 node, {cpus} {noun}" in result.console_text, result.console_text[-3000:]
    assert "Converting physical" not in result.console_text, "each CPU taken for its own package"


def test_pv_send_ipi_hidden_on_an_emulating_host(booted: tuple[int, RunResult, Profile]) -> None:
    _, result, _ = booted
    if not host_is_emulating():
        pytest.skip("the host runs guest ring 0 natively: the auto policy shows PV send-IPI")
    assert "kvm_pv_send_ipi" in result.as_dict()["cpuid_hidden"]
    assert "kvm-guest: setup PV IPIs" not in result.console_text


def test_profile_samples_every_vcpu(booted: tuple[int, RunResult, Profile]) -> None:
    cpus, _, profile = booted
    assert [c.cpu for c in profile.per_cpu] == list(range(cpus))
    assert sum(c.samples for c in profile.per_cpu) == profile.samples
    if cpus > 1:
        assert "per vCPU" in profile.render()


def test_command_in_the_guest_sees_the_cpus_as_cores_of_one_package(busybox: Path) -> None:
    from vmboot.execute import exec_command

    script = ("nproc; cat /sys/devices/system/cpu/online; "
              "grep -E '^(physical id|core id|cpu cores|apicid)' /proc/cpuinfo")
    result = exec_command(["sh", "-c", script], kernel=shared_kernel_file("tiny-smp-bzImage"),
                          busybox=busybox, timeout=LIMIT, cpus=EXEC_CPUS)
    assert result.exit_status == 0, result.one_line()
    lines = result.stdout.decode().splitlines()
    assert lines[:2] == [str(EXEC_CPUS), f"0-{EXEC_CPUS - 1}"], lines
    fields: dict[str, list[str]] = {}
    for line in lines[2:]:
        name, value = (part.strip() for part in line.split(":", 1))
        fields.setdefault(name, []).append(value)
    assert fields["physical id"] == ["0"] * EXEC_CPUS
    assert fields["cpu cores"] == [str(EXEC_CPUS)] * EXEC_CPUS
    assert fields["core id"] == [str(i) for i in range(EXEC_CPUS)]
    assert fields["apicid"] == [str(i) for i in range(EXEC_CPUS)]
