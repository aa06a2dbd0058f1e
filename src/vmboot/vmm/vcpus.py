"""The vCPUs of a machine run together: one host thread and one run loop per vCPU.

::

    vcpus = VcpuSet([Runner(vm, cpu, ports, mmio) for cpu in vm.vcpus])
    result = vcpus.run(timeout=60)     # -> VmExit naming the vCPU (result.vcpu)

The calling thread runs vCPU 0 (the bootstrap processor); every other vCPU gets a thread
of its own for the run. With the in-kernel irqchip an application processor sits in KVM's
``KVM_MP_STATE_UNINITIALIZED`` inside KVM_RUN until the guest sends it INIT and
STARTUP IPIs, exactly as a real CPU waits for them.

The first vCPU whose run ends by itself (a reset, a triple fault, an emulation failure...)
ends the run of all the others, and its exit is the result. A stop from outside (the
timeout, another thread, a device) acts on every vCPU; the result is then the exit of the
vCPU whose thread asked (a device handler running on it: e.g. the console line that showed a
kernel panic), else of vCPU 0. Every thread has been joined when :meth:`VcpuSet.run`
returns, and each vCPU can be inspected and run again.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vmboot.errors import HypervisorError
from vmboot.vmm.exits import ExitReason, VmExit
from vmboot.vmm.runner import Runner

if TYPE_CHECKING:
    from vmboot.vmm.gdb_control import GdbControl

THREAD_NAME = "vmboot-vcpu{index}"
"""Host thread name of an application processor's run loop."""


class VcpuSet:
    """Runs ``runners`` (one per vCPU, vCPU 0 first) together; see the module docstring."""

    def __init__(self, runners: Sequence[Runner], debugger: GdbControl | None = None) -> None:
        if not runners:
            raise HypervisorError("VcpuSet: no vCPU to run; give at least the bootstrap vCPU's runner")
        self.runners = tuple(runners)
        self.debugger = debugger
        """With a debugger attached, a vCPU stopped by it (or at a breakpoint) parks in its
        own thread until the debugger resumes the guest, instead of ending the run."""
        self._lock = threading.Lock()
        self._running = False
        self._ended_by: int | None = None
        """Index (in :attr:`runners`) of the vCPU whose exit ends the current run."""
        self._results: dict[int, VmExit] = {}

    def __len__(self) -> int:
        return len(self.runners)

    @property
    def bsp(self) -> Runner:
        return self.runners[0]

    @property
    def running(self) -> bool:
        """True while :meth:`run` is in progress (in any thread)."""
        with self._lock:
            return self._running

    # -- stopping -----------------------------------------------------------------------------
    def stop(self, reason: ExitReason, detail: str = "") -> None:
        """End the run of every vCPU with ``reason`` (any thread may call it).

        With no run in progress, the next :meth:`run` returns at once, as :meth:`Runner.stop`.
        """
        me = threading.get_ident()
        with self._lock:
            if self._ended_by is None:
                origin = next((i for i, r in enumerate(self.runners) if r.thread_id == me), 0)
                self._ended_by = origin
        for runner in self.runners:
            runner.stop(reason, detail)

    def request_sample(self) -> None:
        """Ask every running vCPU for one RIP/CPL sample (see :meth:`Runner.request_sample`)."""
        for runner in self.runners:
            runner.request_sample()

    def _finished(self, i: int, result: VmExit) -> None:
        """vCPU ``i``'s run returned ``result``: the first to end by itself ends the others."""
        with self._lock:
            self._results[i] = result
            first = self._ended_by is None
            if first:
                self._ended_by = i
        if first:
            detail = f"vCPU {self.runners[i].vcpu.index} ended the run ({result.reason.value})"
            for j, runner in enumerate(self.runners):
                if j != i:
                    runner.stop(ExitReason.STOPPED, detail)

    # -- running ------------------------------------------------------------------------------
    def run(self, timeout: float | None = None) -> VmExit:
        """Run every vCPU until one ends the run, or for at most ``timeout`` seconds."""
        if timeout is not None and timeout < 0:
            raise HypervisorError(f"vCPUs: timeout {timeout!r} s is negative; use None for no limit")
        with self._lock:
            if self._running:
                raise HypervisorError("vCPUs: run() is already in progress in another thread")
            self._running = True
            self._results = {}
        threads: list[threading.Thread] = []
        errors: list[BaseException] = []
        timer: threading.Timer | None = None
        try:
            for i, runner in enumerate(self.runners[1:], start=1):
                t = threading.Thread(target=self._run_one, args=(i, runner, errors),
                                     name=THREAD_NAME.format(index=runner.vcpu.index), daemon=True)
                threads.append(t)
            if timeout is not None:
                timer = threading.Timer(timeout, self.stop,
                                        (ExitReason.TIMEOUT, f"no exit within {timeout:g} s"))
                timer.daemon = True
            for t in threads:
                t.start()
            if timer is not None:
                timer.start()
            self._run_one(0, self.bsp, errors)
        finally:
            if timer is not None:
                timer.cancel()
                if timer.ident is not None:  # started: it is one of the threads joined here
                    timer.join()
            for t in threads:
                t.join()
            for runner in self.runners:  # stops sent to loops that had already ended
                runner.discard_stop()
            with self._lock:
                ended_by, self._ended_by = self._ended_by, None
                results, self._results = self._results, {}
                self._running = False
        if errors:
            raise errors[0]
        return results[ended_by if ended_by is not None and ended_by in results else 0]

    def _run_one(self, i: int, runner: Runner, errors: list[BaseException]) -> None:
        try:
            if self.debugger is not None:
                from vmboot.vmm.gdb_control import run_under_debugger

                result = run_under_debugger(runner, self.debugger, i)
            else:
                result = runner.run(None)
        except BaseException as e:
            errors.append(e)
            result = VmExit(ExitReason.ERROR, f"vCPU {runner.vcpu.index}: {type(e).__name__}: {e}")
        result.vcpu = runner.vcpu.index
        self._finished(i, result)
