"""Several vCPUs run together (vmboot.vmm.vcpus): stop, timeout and close act on all of them,
an exit names the vCPU it comes from, and application processors start with INIT/SIPI.

The guests are small programs assembled here: each vCPU is put in 64-bit mode by hand (a VM
without the in-kernel irqchip, where every vCPU is runnable at once), or, with the irqchip,
the bootstrap vCPU wakes the other from KVM's "wait for SIPI" state as firmware does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from kvm_helpers import CODE_GPA, assemble, enter_long_mode, need_binutils
from process_usage import open_fd_count
from vmboot.devices.bus import MmioBus, PortBus
from vmboot.hv.kvm import KvmVM, abi
from vmboot.hv.kvm.cpuid import find
from vmboot.vmm.exits import ExitReason, VmExit
from vmboot.vmm.runner import Runner
from vmboot.vmm.vcpus import VcpuSet

LONG_TIMEOUT = 120.0
"""Only a guard against a hang: runs that should end by themselves never reach it."""
SHORT = 0.3
"""A time limit for runs that are meant to hit it."""
MAX_SHORT_RUNS = int(LONG_TIMEOUT / SHORT)
MARK_PORT = 0x510
PROGRAM_SPACING = 0x1000
"""vCPU i runs the program at CODE_GPA + i * PROGRAM_SPACING."""
SPIN = "cli\n1: inc rbx\njmp 1b"


class MarkDevice:
    """Records which vCPU thread wrote which value; a write of 0xDD ends the run (POWEROFF)."""

    def __init__(self) -> None:
        self.stop: VcpuSet | None = None
        self.writes: list[tuple[str, int]] = []
        self.written = threading.Event()

    def port_write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((threading.current_thread().name, value))
        self.written.set()
        if value == 0xDD and self.stop is not None:
            self.stop.stop(ExitReason.POWEROFF, "guest wrote the done value")

    def port_read(self, offset: int, size: int) -> int:
        return 0


class SmpRig:
    """A VM with ``cpus`` vCPUs, each with its runner, and the mark port."""

    def __init__(self, cpus: int, *, irqchip: bool) -> None:
        self.vm = KvmVM(32 << 20, irqchip=irqchip, vcpu_count=cpus)
        self.cpus = [self.vm.create_vcpu(i) for i in range(cpus)]
        self.ports, self.mmio = PortBus(), MmioBus()
        self.mark = MarkDevice()
        self.ports.attach_device(MARK_PORT, 1, self.mark, "mark")
        self.set = VcpuSet([Runner(self.vm, c, self.ports, self.mmio) for c in self.cpus])
        self.mark.stop = self.set

    def load(self, *programs: str) -> None:
        """vCPU i runs programs[i] in 64-bit mode."""
        for i, (cpu, source) in enumerate(zip(self.cpus, programs, strict=True)):
            entry = CODE_GPA + i * PROGRAM_SPACING
            self.vm.write(entry, assemble(source, entry))
            enter_long_mode(self.vm, cpu, entry)

    def close(self) -> None:
        self.vm.close()


def vcpu_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("vmboot-vcpu")]


@pytest.fixture(autouse=True)
def _binutils() -> None:
    need_binutils()


@pytest.fixture
def baseline() -> Iterator[None]:
    """Threads and fds are back to what they were once the VM is closed."""
    fds, threads = open_fd_count(), threading.active_count()
    yield
    assert open_fd_count() == fds
    assert threading.active_count() == threads and not vcpu_threads()


@pytest.fixture
def rig2(baseline: None) -> Iterator[SmpRig]:
    rig = SmpRig(2, irqchip=False)
    try:
        yield rig
    finally:
        rig.close()


def run_until_every_vcpu_advances(rig: SmpRig, before: list[int]) -> list[int]:
    """Timed-out runs, resumed until every vCPU's RBX counter passed ``before`` (a loaded host
    may not schedule a vCPU thread within one short run); each run must end the same way."""
    for _ in range(MAX_SHORT_RUNS):
        result = rig.set.run(timeout=SHORT)
        assert result.reason is ExitReason.TIMEOUT, result.one_line()
        assert result.vcpu == 0, "an outside stop reports the bootstrap vCPU"
        assert not vcpu_threads(), "the application processors' threads were joined"
        assert all(r.thread_id is None for r in rig.set.runners)
        now = [c.snapshot()["rbx"] for c in rig.cpus]
        if all(n > b for n, b in zip(now, before, strict=True)):
            return now
    pytest.fail(f"the vCPUs did not all advance in {MAX_SHORT_RUNS} runs: {now} vs {before}")


def test_timeout_stops_every_vcpu_and_the_run_resumes(rig2: SmpRig) -> None:
    rig2.load(SPIN, SPIN)
    first = run_until_every_vcpu_advances(rig2, [0, 0])
    # No stop is left over from the last run: the next runs go on and both advance again.
    run_until_every_vcpu_advances(rig2, first)


def test_exit_of_the_second_vcpu_names_it_and_ends_the_first(rig2: SmpRig) -> None:
    rig2.load(SPIN, "cli\nmov rax, 0x1234\nhlt")  # HLT with interrupts off, no irqchip: final
    result = rig2.set.run(timeout=LONG_TIMEOUT)
    assert result.reason is ExitReason.HLT, result.one_line()
    assert result.vcpu == 1
    assert result.registers["rax"] == 0x1234, "the registers are vCPU 1's"
    assert "vCPU 1" in result.one_line()
    assert not vcpu_threads()


def test_device_stop_from_a_vcpu_thread_reports_that_vcpu(rig2: SmpRig) -> None:
    done = f"mov dx, {MARK_PORT}\nmov al, 0xDD\nmov rcx, 0x77\nout dx, al\n{SPIN}"
    rig2.load(SPIN, done)
    result = rig2.set.run(timeout=LONG_TIMEOUT)
    assert result.reason is ExitReason.POWEROFF, result.one_line()
    assert result.vcpu == 1 and result.registers["rcx"] == 0x77
    assert rig2.mark.writes == [("vmboot-vcpu1", 0xDD)]


def test_stop_from_another_thread_stops_all(rig2: SmpRig) -> None:
    rig2.load(SPIN, SPIN)
    timer = threading.Timer(SHORT, rig2.set.stop, (ExitReason.STOPPED, "asked"))
    timer.start()
    result = rig2.set.run(timeout=LONG_TIMEOUT)
    timer.join()
    assert (result.reason, result.detail, result.vcpu) == (ExitReason.STOPPED, "asked", 0)


def test_close_while_running_ends_every_vcpu_thread(baseline: None) -> None:
    rig = SmpRig(3, irqchip=False)
    rig.load(f"mov dx, {MARK_PORT}\nmov al, 1\nout dx, al\n{SPIN}", SPIN, SPIN)
    results: list[VmExit | BaseException] = []

    def run() -> None:
        try:
            results.append(rig.set.run(timeout=LONG_TIMEOUT))
        except BaseException as e:
            results.append(e)

    thread = threading.Thread(target=run, name="test-bsp")
    thread.start()
    assert rig.mark.written.wait(LONG_TIMEOUT)
    rig.close()  # neither raises nor hangs; every vCPU's run is ended first
    thread.join(LONG_TIMEOUT)
    assert not thread.is_alive()
    (outcome,) = results
    assert isinstance(outcome, VmExit) and outcome.reason is ExitReason.STOPPED, outcome


def test_application_processor_waits_for_sipi_and_runs_its_trampoline(baseline: None) -> None:
    """With the in-kernel irqchip vCPU 1 sits in KVM_RUN until vCPU 0 sends INIT and a
    STARTUP IPI through its local APIC; it then starts in real mode at the SIPI vector's page."""
    rig = SmpRig(2, irqchip=True)
    try:
        trampoline = 0x8000
        rig.vm.write(trampoline, assemble(
            f"mov dx, {MARK_PORT}\nmov al, 0xDD\nout dx, al\ncli\n1: hlt\njmp 1b",
            trampoline, bits=16))
        rig.load(f"""
            cli
            mov eax, 0xFEE00000                       # the local APIC
            mov dword ptr [rax + 0xF0], 0x1FF         # spurious vector: APIC software-enabled
            mov dword ptr [rax + 0x310], 0x01000000   # ICR high: APIC id 1
            mov dword ptr [rax + 0x300], 0x4500       # INIT, level assert
            mov dword ptr [rax + 0x300], {0x4600 | trampoline >> 12:#x}  # STARTUP, vector 0x08
            {SPIN}
        """, "ud2")  # never runs: an AP gets its state from the SIPI
        assert rig.cpus[1].get_mp_state() == abi.KVM_MP_STATE_UNINITIALIZED
        result = rig.set.run(timeout=LONG_TIMEOUT)
        assert result.reason is ExitReason.POWEROFF, result.one_line()
        assert result.vcpu == 1
        assert rig.mark.writes == [("vmboot-vcpu1", 0xDD)]
        assert rig.cpus[1].snapshot()["cs"] == trampoline >> 4, "real mode, CS = vector << 8"
    finally:
        rig.close()


def test_waiting_application_processor_is_stopped_by_the_timeout(baseline: None) -> None:
    rig = SmpRig(2, irqchip=True)
    try:
        rig.load(SPIN, "ud2")
        result = rig.set.run(timeout=SHORT)
        assert result.reason is ExitReason.TIMEOUT and result.vcpu == 0
        assert rig.cpus[1].get_mp_state() == abi.KVM_MP_STATE_UNINITIALIZED
    finally:
        rig.close()


@pytest.mark.parametrize("cpus", [1, 2, 5])
def test_cpuid_per_vcpu_apic_id_and_topology(cpus: int, baseline: None) -> None:
    with KvmVM(16 << 20, vcpu_count=cpus) as vm:
        for i in range(cpus):
            table = vm.cpuid_table(i)
            leaf1 = find(table, 0x1)
            assert leaf1 is not None and leaf1.ebx >> 24 == i
            assert (leaf1.ebx >> 16) & 0xFF == cpus
            for leaf in (0xB, 0x1F):
                levels = [find(table, leaf, sub) for sub in (0, 1)]
                if levels[0] is None:
                    continue
                smt, core = levels
                assert smt is not None and core is not None
                assert smt.edx == core.edx == i, "x2APIC id"
                assert (smt.ecx >> 8 & 0xFF, smt.ebx & 0xFFFF) == (1, 1), "one thread per core"
                assert (core.ecx >> 8 & 0xFF, core.ebx & 0xFFFF) == (2, cpus), "cpus cores"
                assert (i >> (core.eax & 0x1F)) == 0, "every APIC id in one package"


def test_empty_set_refused() -> None:
    from vmboot.errors import HypervisorError

    with pytest.raises(HypervisorError, match="at least the bootstrap"):
        VcpuSet([])


def test_profile_counts_a_waiting_application_processor_as_waiting(baseline: None) -> None:
    from vmboot.vmm.profile import WAITING_FOR_SIPI, GuestProfiler

    rig = SmpRig(2, irqchip=True)
    try:
        rig.load(SPIN, "ud2")
        with GuestProfiler(rig.set, hz=200) as profiler:
            for _ in range(MAX_SHORT_RUNS):  # until both vCPUs' threads were sampled
                assert rig.set.run(timeout=SHORT).reason is ExitReason.TIMEOUT
                if {s.cpu for s in profiler.samples} == {0, 1}:
                    break
        profile = profiler.profile()
        split = {c.cpu: c for c in profile.per_cpu}
        assert set(split) == {0, 1}, profile.render()
        assert [f.name for f in split[1].functions] == [WAITING_FOR_SIPI]
        assert WAITING_FOR_SIPI not in [f.name for f in split[0].functions]
    finally:
        rig.close()
