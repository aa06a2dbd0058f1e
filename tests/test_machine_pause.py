"""Machine.when_stopped: work that needs every vCPU stopped (oops traces, vmcores on request)
runs between two runs of the whole VcpuSet, and the run then goes on with the time left.

Two vCPUs of a small assembled guest: vCPU 1 writes the mark port (a device handler on its
thread asks for the work) while vCPU 0 spins; the work checks that no vCPU loop is running.
"""

from __future__ import annotations

import threading

from kvm_helpers import CODE_GPA, assemble, enter_long_mode, need_binutils
from vmboot.devices.bus import MmioBus, PortBus
from vmboot.hv.kvm import KvmVM
from vmboot.vmm.exits import ExitReason
from vmboot.vmm.machine import Machine
from vmboot.vmm.runner import Runner
from vmboot.vmm.vcpus import VcpuSet

MARK_PORT = 0x510
SPACING = 0x1000
SHORT = 0.5
SPIN = "cli\n1: inc rbx\njmp 1b"
MARK_THEN_SPIN = f"mov dx, {MARK_PORT:#x}\nmov al, 1\nout dx, al\n{SPIN}"


class PauseOnMark:
    """Asks ``machine`` for work with every vCPU stopped when the guest writes the port."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.seen: list[list[int | None]] = []
        self.asked_from: str | None = None

    def port_write(self, offset: int, size: int, value: int) -> None:
        self.asked_from = threading.current_thread().name
        self.machine.when_stopped(self.work)

    def work(self) -> None:
        vcpus = self.machine.vcpu_set
        assert vcpus is not None
        self.seen.append([r.thread_id for r in vcpus.runners])

    def port_read(self, offset: int, size: int) -> int:
        return 0


def test_work_asked_from_a_vcpu_thread_runs_with_every_vcpu_stopped_then_the_run_goes_on(
) -> None:
    need_binutils()
    machine = Machine(b"not started")
    vm = KvmVM(32 << 20, irqchip=False, vcpu_count=2)
    try:
        cpus = [vm.create_vcpu(i) for i in range(2)]
        ports = PortBus()
        device = PauseOnMark(machine)
        ports.attach_device(MARK_PORT, 1, device, "mark")
        for i, (cpu, source) in enumerate(zip(cpus, (SPIN, MARK_THEN_SPIN), strict=True)):
            entry = CODE_GPA + i * SPACING
            vm.write(entry, assemble(source, entry))
            enter_long_mode(vm, cpu, entry)
        machine._vcpu_set = VcpuSet([Runner(vm, c, ports, MmioBus()) for c in cpus])
        vm_exit = machine._run_vcpus(SHORT)
    finally:
        machine._vcpu_set = None
        vm.close()
    assert device.asked_from == "vmboot-vcpu1"
    assert device.seen == [[None, None]]  # once, with no vCPU loop running
    assert vm_exit.reason is ExitReason.TIMEOUT  # the pause did not end the run


def test_work_asked_between_runs_runs_at_once() -> None:
    machine = Machine(b"not started")
    done: list[int] = []
    machine.when_stopped(lambda: done.append(1))
    assert done == [1]
