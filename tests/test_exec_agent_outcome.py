"""How a command run through the guest agent ends, as an ``ExecResult`` (fast: a stand-in
machine plays the guest's side of :func:`vmboot.execute.agent_run.exec_through_agent`)."""

from __future__ import annotations

import errno
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import pytest

from vmboot.agent.client import AgentError, CommandNotStarted, CommandResult
from vmboot.config import MachineConfig
from vmboot.devices.console import ConsoleOutput
from vmboot.execute.agent_run import AgentCommand, OutputCapture, exec_through_agent
from vmboot.execute.result import ExecReason, ExecResult
from vmboot.report.kinds import Verdict
from vmboot.vmm.exits import ExitReason, VmExit
from vmboot.vmm.machine import BootTimings, Machine, RunResult

PANIC = b"[ 9.1] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009\n"
Behaviour = Callable[[Callable[[bytes], object], Callable[[bytes], object]], CommandResult]


def run_result(reason: ExitReason, console: bytes = b"") -> RunResult:
    return RunResult(VmExit(reason, "detail"), console, BootTimings(0.1, 0.2, None, 3.0))


@dataclass
class GuestStandIn:
    """What ``exec_through_agent`` uses of a Machine, with the guest's answers scripted."""

    behaviour: Behaviour | None
    """None: the agent never greets (the guest stops first)."""
    ended: RunResult
    config: MachineConfig = field(default_factory=lambda: MachineConfig("bzImage", agent="console"))
    console: ConsoleOutput = field(default_factory=ConsoleOutput)
    signals: list[int] = field(default_factory=list)

    def wait_agent(self, timeout: float | None = None) -> str:
        if self.behaviour is None:
            raise AgentError("agent: the guest closed the connection")
        return "vmboot-agent 1"

    def exec(self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str = "",
             stdin: bytes | None = None, timeout: float | None = None,
             on_stdout: Callable[[bytes], object] | None = None,
             on_stderr: Callable[[bytes], object] | None = None) -> CommandResult:
        assert self.behaviour is not None and on_stdout is not None and on_stderr is not None
        return self.behaviour(on_stdout, on_stderr)

    def exec_signal(self, signo: int) -> None:
        self.signals.append(signo)

    def stop_exec(self) -> RunResult:
        return self.ended


def outcome(behaviour: Behaviour | None, ended: RunResult | None = None,
            timeout: float | None = 60.0) -> ExecResult:
    guest = GuestStandIn(behaviour, ended or run_result(ExitReason.STOPPED))
    return exec_through_agent(cast(Machine, guest), AgentCommand(["/bin/busybox", "true"], {}),
                              t0=0.0, timeout=timeout, stdout=OutputCapture(None, 1 << 20),
                              stderr=OutputCapture(None, 1 << 20))


def exited(status: int | None = None, signo: int | None = None,
           timed_out: bool = False) -> Behaviour:
    def behave(out: Callable[[bytes], object], err: Callable[[bytes], object]) -> CommandResult:
        out(b"to stdout\n")
        err(b"to stderr\n")
        return CommandResult(status, signo, b"", b"", timed_out)
    return behave


def test_an_exit_status_is_the_result() -> None:
    result = outcome(exited(7))
    assert (result.reason, result.exit_status, result.channel) == (ExecReason.EXITED, 7, "console")
    assert (result.stdout, result.stderr) == (b"to stdout\n", b"to stderr\n")
    assert result.verdict is Verdict.COMMAND_FAILED
    assert outcome(exited(0)).verdict is Verdict.OK


def test_death_by_a_signal_is_128_plus_its_number() -> None:
    result = outcome(exited(signo=signal.SIGKILL))
    assert (result.exit_status, result.detail) == (128 + signal.SIGKILL, "killed by SIGKILL")


@pytest.mark.parametrize(("code", "status"), [(errno.ENOENT, 127), (errno.EACCES, 126)])
def test_a_command_the_agent_cannot_start_is_126_or_127(code: int, status: int) -> None:
    def behave(out: Callable[[bytes], object], err: Callable[[bytes], object]) -> CommandResult:
        raise CommandNotStarted("agent: cannot run 'x' in the guest", code)
    result = outcome(behave)
    assert (result.reason, result.exit_status) == (ExecReason.EXITED, status)
    assert b"cannot run 'x'" in result.stderr


def test_the_time_limit_kills_the_command_and_the_vm_ended_by_timeout() -> None:
    result = outcome(exited(signo=signal.SIGKILL, timed_out=True), timeout=30)
    assert (result.reason, result.exit_status) == (ExecReason.TIMEOUT, None)
    assert "30 s" in result.detail and "while the command ran" in result.detail
    assert result.vm_exit is not None and result.vm_exit.reason is ExitReason.TIMEOUT
    assert result.verdict is Verdict.TIMEOUT


def test_a_panic_while_the_command_ran() -> None:
    def behave(out: Callable[[bytes], object], err: Callable[[bytes], object]) -> CommandResult:
        raise AgentError("agent: the guest closed the connection")
    result = outcome(behave, run_result(ExitReason.RESET, PANIC))
    assert result.reason is ExecReason.PANIC
    assert "Attempted to kill init" in result.detail
    assert result.verdict is Verdict.PANIC


def test_the_guest_stopping_while_the_command_ran_is_lost() -> None:
    def behave(out: Callable[[bytes], object], err: Callable[[bytes], object]) -> CommandResult:
        raise AgentError("agent: the guest closed the connection")
    result = outcome(behave, run_result(ExitReason.POWEROFF))
    assert result.reason is ExecReason.LOST and "poweroff" in result.detail


def test_the_guest_stopping_before_the_agent_greets_is_a_boot_failure_or_panic() -> None:
    assert outcome(None, run_result(ExitReason.POWEROFF)).reason is ExecReason.BOOT_FAILURE
    assert outcome(None, run_result(ExitReason.RESET, PANIC)).reason is ExecReason.PANIC


def test_no_greeting_within_the_time_limit_is_a_timeout() -> None:
    result = outcome(None, run_result(ExitReason.STOPPED), timeout=10)
    assert result.reason is ExecReason.TIMEOUT and "before the command started" in result.detail
    assert outcome(None, run_result(ExitReason.STOPPED), timeout=None).reason \
        is ExecReason.BOOT_FAILURE


def test_signals_are_forwarded_to_the_command_while_it_runs() -> None:
    def behave(out: Callable[[bytes], object], err: Callable[[bytes], object]) -> CommandResult:
        signal.raise_signal(signal.SIGINT)  # Ctrl-C at the terminal, while the command runs
        return CommandResult(None, signal.SIGINT, b"", b"")

    stand_in = GuestStandIn(behave, run_result(ExitReason.STOPPED))
    before = signal.getsignal(signal.SIGINT)
    result = exec_through_agent(cast(Machine, stand_in), AgentCommand(["/bin/sh"], {}), t0=0.0,
                                timeout=None, stdout=OutputCapture(None, 10),
                                stderr=OutputCapture(None, 10))
    assert stand_in.signals == [signal.SIGINT]
    assert result.exit_status == 128 + signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before  # vmboot's own handling comes back
