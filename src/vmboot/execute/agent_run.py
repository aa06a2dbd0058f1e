"""One command through the guest agent of a started machine, as an :class:`ExecResult`.

Both agent paths of ``vmboot exec`` end here: the initramfs whose init is the agent
(:func:`vmboot.execute.api.exec_command`) and the host's root (:mod:`vmboot.execute.host_exec`).
The machine (``Machine(..., agent=...)`` or ``rootfs="/"``) runs on a background thread
(:meth:`~vmboot.vmm.machine.Machine.exec`); the command's stdout and stderr go to their
callbacks as the agent sends them; SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to vmboot while
the command runs go to the command's process group instead.

How the run ended maps onto :class:`ExecReason` as on the serial path: the command's status
(128+N when signal N killed it), ``timeout`` (the command is killed at the time limit; the
guest is stopped a grace period later if it does not answer), ``panic`` (the console says
so), ``boot-failure`` (the guest stopped, or the time ran out, before the agent greeted),
``lost`` (the guest stopped while the command ran).
"""

from __future__ import annotations

import dataclasses
import errno
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vmboot.agent.client import AgentError, CommandNotStarted, StdinSource
from vmboot.errors import VmbootError
from vmboot.execute.result import (
    PANIC_MARKER,
    ExecReason,
    ExecResult,
    ExecTimings,
    Outcome,
    OutputCallback,
    exec_reading,
)
from vmboot.vmm.exits import ExitReason

if TYPE_CHECKING:
    from vmboot.vmm.machine import Machine, RunResult

EXIT_NOT_FOUND = 127
EXIT_CANNOT_RUN = 126
SIGNAL_STATUS_BASE = 128
"""A command killed by signal N reports 128+N, as a shell does."""
STOP_GRACE = 30.0
"""Seconds past ``timeout`` after which the machine itself stops, should the guest no longer
answer (the agent reports a killed command at once when the guest is alive)."""
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
"""Signals vmboot passes on to the command in the guest (Ctrl-C, Ctrl-\\, kill, hang-up)."""
Handlers = dict[signal.Signals, Any]


class OutputCapture:
    """A command's output: kept up to ``limit`` bytes (the rest counted), passed to ``sink``."""

    def __init__(self, sink: OutputCallback | None, limit: int) -> None:
        self.sink = sink
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def __call__(self, chunk: bytes) -> None:
        room = max(self.limit - len(self.data), 0)
        self.data += chunk[:room]
        self.dropped += max(len(chunk) - room, 0)
        if self.sink is not None:
            self.sink(chunk)


@dataclass(frozen=True)
class AgentCommand:
    """What to run: ``argv[0]`` is a path in the guest; ``env`` the whole environment."""

    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str = ""
    stdin: StdinSource = None
    """Bytes, or a file read as the command takes its input (see AgentClient.run)."""


def exec_through_agent(machine: Machine, command: AgentCommand, *, t0: float,
                       timeout: float | None, stdout: OutputCapture, stderr: OutputCapture,
                       initramfs_seconds: float = 0.0) -> ExecResult:
    """Run ``command`` in ``machine`` (entered, not yet running) and say how it went.

    ``t0``: ``time.monotonic()`` when the exec began (timings count from it); ``timeout``:
    seconds for the boot and the command together, counted from ``t0``.
    """
    kernel_entry = time.monotonic() - t0
    started_at: float | None = None
    exited_at: float | None = None
    outcome: Outcome
    forwarding = forward_signals(machine)
    try:
        try:
            machine.wait_agent(_left(t0, timeout))
        except AgentError as e:
            run = machine.stop_exec()
            outcome = _not_started(run, str(e), timeout)
        else:
            started_at = time.monotonic() - t0
            outcome = _run_command(machine, command, _left(t0, timeout), timeout, stdout, stderr)
            exited_at = time.monotonic() - t0
    finally:
        restore_signals(forwarding)
    run = machine.stop_exec()
    if run is not None and outcome.reason is ExecReason.LOST:
        outcome = _stopped(run, "while the command ran, before it reported an exit status")
    console = b"" if run is None else run.console
    vm_exit = None if run is None else run.exit
    if vm_exit is not None and outcome.reason is ExecReason.TIMEOUT \
            and vm_exit.reason is ExitReason.STOPPED:
        # vmboot stopped the guest because the time ran out: that is how the VM ended
        vm_exit = dataclasses.replace(vm_exit, reason=ExitReason.TIMEOUT, detail=outcome.detail)
    first = machine.console.first_byte_at
    timings = ExecTimings(initramfs=initramfs_seconds, kernel_entry=kernel_entry,
                          first_console_byte=None if first is None else first - t0,
                          command_start=started_at, command_exit=exited_at,
                          total=time.monotonic() - t0)
    return ExecResult(
        stdout=bytes(stdout.data), stderr=bytes(stderr.data),
        exit_status=outcome.exit_status, reason=outcome.reason, timings=timings,
        console=console, detail=outcome.detail, vm_exit=vm_exit,
        dropped={"stdout": stdout.dropped, "stderr": stderr.dropped,
                 "console": 0 if run is None else run.console_dropped},
        reading=None if run is None or vm_exit is None
        else exec_reading(run.reading, vm_exit.reason, outcome),
        channel=machine.config.agent_transport or "console",
    )


def _left(t0: float, timeout: float | None) -> float | None:
    return None if timeout is None else max(timeout - (time.monotonic() - t0), 0.001)


def _run_command(machine: Machine, command: AgentCommand, left: float | None,
                 timeout: float | None, stdout: OutputCapture,
                 stderr: OutputCapture) -> Outcome:
    try:
        result = machine.exec(command.argv, command.env, command.cwd, command.stdin,
                              timeout=left, on_stdout=stdout, on_stderr=stderr)
    except CommandNotStarted as e:
        status = EXIT_NOT_FOUND if e.errno == errno.ENOENT else EXIT_CANNOT_RUN
        message = f"vmboot exec: {e}\n".encode()
        stderr(message)
        return Outcome(ExecReason.EXITED, status, str(e))
    except AgentError as e:
        return Outcome(ExecReason.LOST, None, str(e))
    if result.timed_out:
        limit = "" if timeout is None else f" of {timeout:g} s"
        return Outcome(ExecReason.TIMEOUT, None,
                       f"the time limit{limit} passed while the command ran; it was killed")
    if result.signal is not None:
        return Outcome(ExecReason.EXITED, SIGNAL_STATUS_BASE + result.signal,
                       f"killed by {signal.Signals(result.signal).name}")
    return Outcome(ExecReason.EXITED, result.exit_status, "")


def _not_started(run: RunResult | None, why: str, timeout: float | None) -> Outcome:
    """The agent never greeted: the guest stopped first, or the time ran out."""
    if run is not None and run.exit.reason is not ExitReason.STOPPED:
        return _stopped(run, "before starting the command")
    if timeout is not None:
        return Outcome(ExecReason.TIMEOUT, None,
                       f"the time limit of {timeout:g} s passed before the command started ({why})")
    return Outcome(ExecReason.BOOT_FAILURE, None, f"the guest never started the command: {why}")


def _stopped(run: RunResult, stage: str) -> Outcome:
    """The guest stopped by itself (``stage``: when): a panic, or another end of the VM."""
    panic_at = run.console.find(PANIC_MARKER)
    if run.exit.reason is ExitReason.PANIC or panic_at >= 0:
        line = (run.console[panic_at:].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
                if panic_at >= 0 else run.exit.detail)
        return Outcome(ExecReason.PANIC, None, f"the guest kernel panicked: {line}")
    if run.exit.reason is ExitReason.TIMEOUT:
        return Outcome(ExecReason.TIMEOUT, None, f"the guest stopped answering {stage}; "
                       f"it was stopped {STOP_GRACE:g} s past the time limit")
    how = run.exit.reason.value + (f" ({run.exit.detail})" if run.exit.detail else "")
    reason = ExecReason.LOST if stage.startswith("while") else ExecReason.BOOT_FAILURE
    return Outcome(reason, None, f"the guest stopped ({how}) {stage}")


def forward_signals(machine: Machine) -> Handlers:
    """While the command runs, these signals go to it instead of ending vmboot."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def forward(signo: int, _frame: object) -> None:
        try:
            machine.exec_signal(signo)
        except VmbootError:  # still booting: the signal ends vmboot, as it would have
            if signo == signal.SIGINT:
                raise KeyboardInterrupt from None
            raise SystemExit(SIGNAL_STATUS_BASE + signo) from None
    return {s: signal.signal(s, forward) for s in FORWARDED_SIGNALS}


def restore_signals(previous: Handlers) -> None:
    for signo, handler in previous.items():
        signal.signal(signo, handler)

