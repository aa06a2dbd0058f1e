"""The task list of a 2-vCPU tiny-smp guest from the host: each task's state letter and the
CPU it last ran on against the guest's own /proc/PID/stat (the per-CPU kernel threads of
CPU 1 must say 1), every vCPU's trace, and both read while run() is in progress."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conftest import requires_kvm, shared_kernel_file
from test_debug_guest_tasks import (
    SHELL_CMDLINE,
    by_pid,
    read_proc_stat,
    run_until,
    running_in_background,
    unchanged_sleepers,
)
from vmboot.vmm.machine import Machine

pytestmark = [pytest.mark.slow, requires_kvm]

CPUS = 2


@pytest.fixture(scope="module")
def smp_guest() -> Iterator[tuple[Machine, dict[int, tuple[str, int, int, str]]]]:
    """A busybox shell on 2 vCPUs; yields the machine (stopped) and the guest's own view of
    its processes (:func:`read_proc_stat`)."""
    with Machine(shared_kernel_file("tiny-smp-bzImage"),
                 initrd=shared_kernel_file("tiny-initramfs.cpio"), cmdline=SHELL_CMDLINE,
                 cpus=CPUS) as m:
        run_until(m, b"VMBOOT-INIT-OK")
        run_until(m, b"# ")
        yield m, read_proc_stat(m)


def test_states_and_cpus_of_sleeping_tasks_agree_with_proc_stat(
        smp_guest: tuple[Machine, dict[int, tuple[str, int, int, str]]]) -> None:
    m, stat = smp_guest
    tasks = by_pid(m.tasks())
    asleep = unchanged_sleepers(stat, tasks)
    assert len(asleep) >= 10, stat
    assert {cpu for _, cpu in asleep.values()} == set(range(CPUS)), asleep
    assert {pid: (tasks[pid].state, tasks[pid].cpu) for pid in asleep} == asleep
    on_cpu1 = [t for t in tasks.values() if t.comm in ("ksoftirqd/1", "migration/1", "cpuhp/1")]
    assert on_cpu1 and all(t.cpu == 1 for t in on_cpu1), [t.render() for t in on_cpu1]
    assert [t.cpu for t in m.traces()] == list(range(CPUS))


def test_tasks_and_traces_of_every_vcpu_while_running(
        smp_guest: tuple[Machine, dict[int, tuple[str, int, int, str]]]) -> None:
    m, _ = smp_guest
    vcpus = m.vcpu_set
    assert vcpus is not None
    with running_in_background(m, b"sleep 4; echo SLEPT-$((6*7))\n") as run:
        run.wait_until(lambda: any(t.comm == "sleep" for t in m.tasks()), 0.5)
        traces = m.traces()
        assert vcpus.running and run.runner.is_alive()
        assert [t.cpu for t in traces] == list(range(CPUS))
        run.wait_until(lambda: b"SLEPT-42" in run.output(), 0.2)
