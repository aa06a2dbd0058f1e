"""The ``vm`` fixture's value: one test's guest, booted or restored, and its agent.

::

    def test_uname(vm):
        result = vm.exec(["uname", "-r"])          # an ExecResult, as vmboot exec returns
        assert result.ok and result.stdout.startswith(b"6.")
        vm.console                                  # what the kernel printed (str)
        vm.traces(), vm.tasks()                     # every vCPU's stack, every task's

The guest runs on a background thread from the first :meth:`GuestVM.exec` until the test
ends. A command that outlives its time limit is killed and reported as ``timeout``; a
guest that stops answering altogether (its kernel hung) is stopped :data:`HANG_GRACE`
seconds later, with every vCPU's stack and a hang report taken (:attr:`GuestVM.hung`). A
guest that panics ends the command with reason ``panic``. The plugin reads what happened
after the test (:mod:`vmboot.testing.verdicts`).
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from vmboot.errors import GuestError, UsageError
from vmboot.testing.agent_image import GUEST_HOME, GUEST_PATH, busybox_applets
from vmboot.testing.names import DEFAULT_EXEC_TIMEOUT

if TYPE_CHECKING:
    from vmboot.debug.cpus import CpuTrace
    from vmboot.debug.tasks import GuestTask
    from vmboot.execute.result import ExecReason, ExecResult
    from vmboot.testing.guest_spec import GuestSpec
    from vmboot.vmm.guest_agent import GuestAgent
    from vmboot.vmm.machine import Machine, RunResult

HANG_GRACE = 30.0
"""Seconds after a command's time limit (when the agent should have killed it and answered)
before the guest is taken for hung and stopped."""
PAUSE_TIMEOUT = 120.0
"""Seconds to wait for the running guest to stop for :meth:`GuestVM.traces`/:meth:`tasks`."""

T = TypeVar("T")


class GuestStopped(GuestError):
    """The test's guest has stopped (it panicked, hung or was powered off): no more commands."""


class GuestVM:
    """A test's guest: run commands in it, read its console, trace its kernel."""

    def __init__(self, machine: Machine, agent: GuestAgent[RunResult], spec: GuestSpec,
                 busybox: Path,
                 *, restored: bool, exec_timeout: float = DEFAULT_EXEC_TIMEOUT) -> None:
        self.machine = machine
        self.spec = spec
        self.restored = restored
        """True when the guest was restored from the session's snapshot, False when booted."""
        self.exec_timeout = exec_timeout
        self.hung = False
        """True when the guest stopped answering and was stopped (:data:`HANG_GRACE`)."""
        self.commands: list[tuple[list[str], ExecResult]] = []
        """Every command :meth:`exec` ran, with its result, in order."""
        self._agent = agent
        self._applets = frozenset(busybox_applets(busybox))
        self._ended: RunResult | None = None

    # -- commands -------------------------------------------------------------------------
    def exec(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str = "",
             stdin: bytes | None = None, timeout: float | None = None) -> ExecResult:
        """Run ``argv`` in the guest; its output, status and how it ended.

        A name without ``/`` is a busybox applet (``/bin/NAME``) or looked up on ``PATH`` by
        the guest's shell. ``env``: the command's whole environment (default ``PATH`` and
        ``HOME``). ``timeout``: seconds (default :attr:`exec_timeout`).
        """
        from vmboot.agent.client import AgentError, CommandNotStarted
        from vmboot.execute.agent_run import EXIT_CANNOT_RUN, EXIT_NOT_FOUND, SIGNAL_STATUS_BASE
        from vmboot.execute.result import ExecReason

        if not argv:
            raise UsageError("vm.exec: argv is empty; give the command and its arguments")
        if self.ended is not None:
            raise GuestStopped(f"vm.exec: the guest has stopped ({self.ended.exit.one_line()}); "
                               "a test gets one guest")
        limit = self.exec_timeout if timeout is None else timeout
        if not limit > 0:
            raise UsageError(f"vm.exec: timeout={timeout!r} is not a positive number of seconds")
        words = self._resolve(list(argv))
        environment = dict({"PATH": GUEST_PATH, "HOME": GUEST_HOME} if env is None else env)
        console_from = len(self.machine.console.data)
        t0 = time.monotonic()
        watchdog = threading.Timer(limit + HANG_GRACE, self._stop_hung, (limit + HANG_GRACE,))
        watchdog.daemon = True
        try:
            watchdog.start()
            client = self._agent.client
            if client is None:
                raise GuestStopped("vm.exec: the guest's agent never connected; a test gets "
                                   "one guest")
            outcome = client.run(words, environment, cwd, stdin, timeout=limit)
        except CommandNotStarted as e:
            status = EXIT_NOT_FOUND if e.errno == errno.ENOENT else EXIT_CANNOT_RUN
            return self._record(argv, ExecReason.EXITED, status, b"", f"{e}\n".encode(), t0,
                                console_from, str(e))
        except AgentError as e:
            return self._stopped(argv, t0, console_from, str(e))
        finally:
            watchdog.cancel()
        if outcome.timed_out:
            return self._record(argv, ExecReason.TIMEOUT, None, outcome.stdout, outcome.stderr,
                                t0, console_from,
                                f"the command ran past its {limit:g} s time limit and was killed")
        status = (outcome.exit_status if outcome.exit_status is not None
                  else SIGNAL_STATUS_BASE + (outcome.signal or 0))
        return self._record(argv, ExecReason.EXITED, status, outcome.stdout, outcome.stderr, t0,
                            console_from, "")

    def _resolve(self, argv: list[str]) -> list[str]:
        name = argv[0]
        if "/" in name:
            return argv
        if name in self._applets:
            return [f"/bin/{name}", *argv[1:]]
        return ["/bin/sh", "-c", 'exec "$@"', "sh", *argv]

    def _stop_hung(self, after: float) -> None:
        from vmboot.vmm.exits import ExitReason

        self.hung = True
        self.machine.request_stop(ExitReason.TIMEOUT, f"the guest did not answer for {after:g} s")

    def _stopped(self, argv: Sequence[str], t0: float, console_from: int, why: str) -> ExecResult:
        """The connection ended: the guest stopped; wait for its run's result."""
        from vmboot.execute.result import ExecReason
        from vmboot.vmm.exits import ExitReason

        ended = self.wait_ended()
        if ended is None:
            return self._record(argv, ExecReason.LOST, None, b"", b"", t0, console_from, why)
        if self.hung:
            reason = ExecReason.TIMEOUT
        elif ended.exit.reason is ExitReason.PANIC:
            reason = ExecReason.PANIC
        else:
            reason = ExecReason.LOST
        return self._record(argv, reason, None, b"", b"", t0, console_from,
                            f"the guest stopped: {ended.exit.one_line()}", ended)

    def _record(self, argv: Sequence[str], reason: ExecReason, status: int | None, stdout: bytes,
                stderr: bytes, t0: float, console_from: int, detail: str,
                ended: RunResult | None = None) -> ExecResult:
        from vmboot.execute.result import ExecReason, ExecResult, ExecTimings

        took = time.monotonic() - t0
        timings = ExecTimings(initramfs=0.0, kernel_entry=None, first_console_byte=None,
                              command_start=None,
                              command_exit=took if reason is ExecReason.EXITED else None,
                              total=took)
        result = ExecResult(stdout=stdout, stderr=stderr, exit_status=status, reason=reason,
                            timings=timings, console=bytes(self.machine.console.data[console_from:]),
                            detail=detail, vm_exit=None if ended is None else ended.exit)
        self.commands.append((list(argv), result))
        return result

    # -- the guest ------------------------------------------------------------------------
    @property
    def console(self) -> str:
        """What the guest's kernel printed on its console (since the restore, or the boot)."""
        self.machine.console.flush()
        return self.machine.console.text()

    @property
    def ended(self) -> RunResult | None:
        """How the guest's run ended, once it has (None while it runs)."""
        return self._ended

    def ended_with(self, result: RunResult) -> None:
        """The guest's run ended with ``result`` (called on the run's thread)."""
        self._ended = result

    def wait_ended(self, timeout: float = PAUSE_TIMEOUT) -> RunResult | None:
        """The run's result, waiting up to ``timeout`` seconds for its thread to finish."""
        deadline = time.monotonic() + timeout
        while self._ended is None and self._agent.running and time.monotonic() < deadline:
            time.sleep(0.05)
        return self._ended

    def traces(self, max_frames: int = 16) -> list[CpuTrace]:
        """Every vCPU's symbolised kernel stack, now (the guest is paused meanwhile)."""
        return self._paused(lambda: self.machine.traces(max_frames))

    def tasks(self, max_frames: int = 16) -> list[GuestTask]:
        """Every task of the guest kernel with its stack, now (the guest is paused meanwhile)."""
        return self._paused(lambda: self.machine.tasks(max_frames))

    def _paused(self, work: Callable[[], T]) -> T:
        if not self._agent.running:
            return work()
        done = threading.Event()
        box: list[T] = []
        failure: list[BaseException] = []

        def action() -> None:
            try:
                box.append(work())
            except BaseException as e:  # handed to the caller: the guest's run goes on
                failure.append(e)
            finally:
                done.set()

        self.machine.when_stopped(action)
        if not done.wait(PAUSE_TIMEOUT):
            raise GuestError(f"vm: the guest did not pause within {PAUSE_TIMEOUT:g} s")
        if failure:
            raise failure[0]
        return box[0]

    def stop(self) -> RunResult | None:
        """End the guest's run (if it runs) and return how it ended."""
        self._agent.stop()
        return self._ended

    def close(self) -> None:
        self.stop()
        self.machine.close()
        self._agent.link.close()
