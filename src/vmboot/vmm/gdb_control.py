"""Where the vCPU run loops and the gdb stub meet: pause, resume, step, and debug exits.

Each vCPU thread runs its guest through :func:`run_under_debugger`. When gdb interrupts, or
a vCPU hits a hardware breakpoint or finishes a single step, every vCPU is brought out of
KVM_RUN and parks in :meth:`GdbControl.park` until gdb resumes the guest. The debug-register
settings gdb asked for are applied by each vCPU thread to its own vCPU just before it runs
again, so no ioctl is made on a vCPU from another thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence

from vmboot.gdbstub.breakpoints import SLOTS, WatchKind
from vmboot.gdbstub.target import StopEvent, StopKind
from vmboot.hv.kvm import abi
from vmboot.hv.kvm.vcpu import KvmVCPU
from vmboot.vmm.exits import ExitReason, VmExit
from vmboot.vmm.runner import Runner

DR6_SINGLE_STEP = 1 << 14
DR7_INDEX = 7
PAUSE_WAIT_SECONDS = 10.0
"""How long :meth:`GdbControl.pause` waits for every vCPU to leave KVM_RUN."""


class GdbControl:
    """A :class:`~vmboot.gdbstub.GdbTarget` over vCPUs that run on threads of their own."""

    def __init__(
        self,
        vcpus: Sequence[KvmVCPU],
        request_stop: Callable[[int], None],
        kernel_offset: Callable[[], int | None] | None = None,
        watchpoints: bool = True,
    ) -> None:
        self._vcpus = list(vcpus)
        self._request_stop = request_stop
        self._kernel_offset = kernel_offset
        self.watchpoints = watchpoints
        """False where the host's KVM does not deliver data breakpoints (the stub then says
        watchpoints are not supported instead of setting ones that never fire)."""
        self._cond = threading.Condition()
        self._parked: set[int] = set()
        self._pause_wanted = False
        self._generation = 0
        self._step_cpu: int | None = None
        self._dr7 = 0
        self._addresses: tuple[int, ...] = (0,) * SLOTS
        self._hit: StopEvent | None = None
        self._exited: StopEvent | None = None
        self._stops: queue.Queue[StopEvent] = queue.Queue()

    # -- the GdbTarget side (the stub's thread) -------------------------------------------------
    @property
    def vcpus(self) -> Sequence[KvmVCPU]:
        return self._vcpus

    def pause(self) -> StopEvent:
        with self._cond:
            if self._exited is not None:
                return self._exited
            self._pause_wanted = True
            running = [cpu for cpu in range(len(self._vcpus)) if cpu not in self._parked]
        for cpu in running:
            self._request_stop(cpu)
        deadline = time.monotonic() + PAUSE_WAIT_SECONDS
        with self._cond:
            while len(self._parked) < len(self._vcpus) and self._exited is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._exited is not None:
                return self._exited
            hit, self._hit = self._hit, None
        self._drain()
        return hit if hit is not None else StopEvent(StopKind.INTERRUPTED, cpu=0)

    def resume(self, step_cpu: int | None = None) -> None:
        self._drain()
        with self._cond:
            self._pause_wanted = False
            self._step_cpu = step_cpu
            self._hit = None
            self._generation += 1
            self._cond.notify_all()

    def wait_stop(self, timeout: float) -> StopEvent | None:
        try:
            return self._stops.get(timeout=timeout)
        except queue.Empty:
            return None

    def set_debug_registers(self, dr7: int, addresses: Sequence[int]) -> None:
        with self._cond:
            self._dr7 = dr7
            self._addresses = tuple(addresses)

    def kernel_offset(self) -> int | None:
        return self._kernel_offset() if self._kernel_offset is not None else None

    def _drain(self) -> None:
        while True:
            try:
                self._stops.get_nowait()
            except queue.Empty:
                return

    # -- the vCPU side (each vCPU's own thread) -------------------------------------------------
    @property
    def pause_requested(self) -> bool:
        with self._cond:
            return self._pause_wanted

    def park(self, cpu: int, debug_exit: VmExit | None = None) -> None:
        """Stay out of KVM_RUN until gdb resumes; ``debug_exit`` is this vCPU's debug stop."""
        others: list[int] = []
        with self._cond:
            if debug_exit is not None and self._hit is None:
                self._hit = self._describe(cpu, debug_exit)
                if not self._pause_wanted:
                    self._pause_wanted = True
                    others = [c for c in range(len(self._vcpus)) if c != cpu and c not in self._parked]
        for other in others:
            self._request_stop(other)
        with self._cond:
            self._parked.add(cpu)
            self._announce_if_all_parked()
            generation = self._generation
            while self._generation == generation and self._exited is None:
                self._cond.wait()
            self._parked.discard(cpu)
            control, regs = self._debug_state(cpu)
        self._vcpus[cpu].set_guest_debug(control, regs)

    def exited(self, cpu: int, result: VmExit) -> None:
        """The guest ended on ``cpu``: nothing resumes any more; gdb is told the guest exited."""
        with self._cond:
            if self._exited is None:
                self._exited = StopEvent(StopKind.EXITED, cpu=cpu, detail=result.one_line())
                self._stops.put(self._exited)
            self._cond.notify_all()

    def _announce_if_all_parked(self) -> None:
        if len(self._parked) == len(self._vcpus) and self._hit is not None:
            self._stops.put(self._hit)
            self._hit = None
            self._cond.notify_all()
        elif len(self._parked) == len(self._vcpus):
            self._cond.notify_all()

    def _debug_state(self, cpu: int) -> tuple[int, tuple[int, ...]]:
        step = self._step_cpu == cpu
        if not self._dr7 and not step:
            return 0, ()
        control = abi.KVM_GUESTDBG_ENABLE
        if self._dr7:
            control |= abi.KVM_GUESTDBG_USE_HW_BP
        if step:
            control |= abi.KVM_GUESTDBG_SINGLESTEP
        regs = (*self._addresses[:SLOTS], 0, 0, 0, self._dr7)
        return control, regs

    def _describe(self, cpu: int, debug_exit: VmExit) -> StopEvent:
        dr6 = debug_exit.dr6 or 0
        for slot in range(SLOTS):
            if not dr6 & (1 << slot) or not self._dr7 & (1 << (2 * slot)):
                continue
            condition = (self._dr7 >> (16 + 4 * slot)) & 0b11
            if condition == 0:
                return StopEvent(StopKind.BREAKPOINT, cpu=cpu, detail="hwbreak")
            kind = WatchKind.WRITE if condition == WatchKind.WRITE.value else WatchKind.ACCESS
            return StopEvent(StopKind.BREAKPOINT, cpu=cpu, watch_address=self._addresses[slot],
                             watch_kind=kind.stop_name)
        return StopEvent(StopKind.BREAKPOINT, cpu=cpu,
                         detail="step" if dr6 & DR6_SINGLE_STEP else "")


def run_under_debugger(runner: Runner, control: GdbControl, cpu: int,
                       timeout: float | None = None) -> VmExit:
    """Run one vCPU until the guest ends, parking it whenever the debugger holds the guest.

    ``timeout`` counts wall time, including time the debugger keeps the guest stopped.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        result = runner.run(timeout=left)
        if result.reason is ExitReason.DEBUG:
            control.park(cpu, result)
            continue
        if result.reason is ExitReason.STOPPED and control.pause_requested:
            control.park(cpu)
            continue
        if result.reason is not ExitReason.STOPPED:
            # A plain stop is the VMM pausing the guest for its own work (a trace, a vmcore):
            # the run resumes after it, so the debugger is not told the guest ended.
            control.exited(cpu, result)
        return result
