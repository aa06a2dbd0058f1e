"""What a command run in a guest gives back: :class:`ExecResult` (its output, status, timings
and console), :class:`ExecReason` (how the run ended) and :class:`Outcome` (the reason and
status before the result is put together), for every way :mod:`vmboot.execute` runs one.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vmboot.vmm.exits import ExitReason, VmExit

if TYPE_CHECKING:
    from vmboot.report import Reading, Verdict

PANIC_MARKER = b"Kernel panic"
OutputCallback = Callable[[bytes], object]


class ExecReason(enum.StrEnum):
    """How an exec run ended (see the module docstring)."""

    EXITED = "exited"
    PANIC = "panic"
    TIMEOUT = "timeout"
    BOOT_FAILURE = "boot-failure"
    GUEST_ERROR = "guest-error"
    LOST = "lost"


@dataclass(frozen=True)
class ExecTimings:
    """Wall-clock seconds since :func:`exec_command` was called (None: not reached)."""

    initramfs: float
    """The initramfs was built."""
    kernel_entry: float | None
    """The vCPU was about to enter the kernel (VM built, kernel loaded)."""
    first_console_byte: float | None
    command_start: float | None
    """The guest booted and is starting the command (``VMBOOT-START`` arrived; through the
    agent: its greeting; a warm run: the agent's STARTED answer, sent once the command's
    ``execve`` succeeded)."""
    command_exit: float | None
    """The command's status arrived (``VMBOOT-EXIT``; through the agent: its exit message)."""
    total: float
    restored: float | None = None
    """A warm run: the saved guest's memory, vCPUs and devices were back (not yet running)."""
    agent_ready: float | None = None
    """A warm run: the restored guest's agent answered the resume message. The message
    left in one write with the command, which the agent takes right after it: by then
    the agent holds the command."""
    command_sent: float | None = None
    """Through the agent: the command's EXEC message was handed to the guest's channel."""
    command_held: float | None = None
    """A warm run: the agent had read the command (sent in one write with the resume
    message): :attr:`vmboot.agent.client.AgentClient.held_command_at`."""
    first_output: float | None = None
    """Through the agent: the command's first stdout or stderr bytes arrived."""
    vm_exit: float | None = None
    """The guest's vCPUs stopped and the VM was released."""
    origin: float | None = None
    """``time.monotonic()`` at the moment every other field counts from: a caller that
    started this process places these times on its own clock (the same system-wide one)."""

    def as_dict(self) -> dict[str, float | None]:
        return {
            "initramfs": self.initramfs,
            "kernel_entry": self.kernel_entry,
            "first_console_byte": self.first_console_byte,
            "command_start": self.command_start,
            "command_exit": self.command_exit,
            "total": self.total,
            "restored": self.restored,
            "agent_ready": self.agent_ready,
            "command_sent": self.command_sent,
            "command_held": self.command_held,
            "first_output": self.first_output,
            "vm_exit": self.vm_exit,
            "origin": self.origin,
        }


@dataclass
class ExecResult:
    """What the command wrote and how the run ended."""

    stdout: bytes
    stderr: bytes
    exit_status: int | None
    """The command's exit status (0-255) when ``reason`` is ``exited``, else None."""
    reason: ExecReason
    timings: ExecTimings
    console: bytes
    """The guest's kernel console (ttyS0)."""
    detail: str = ""
    """One line saying why, for every reason but ``exited``."""
    vm_exit: VmExit | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    """Bytes beyond the capture limit per channel (``stdout``, ``stderr``, ``console``)."""
    reading: Reading | None = None
    """The kernel reports on the console and the run's verdict (:mod:`vmboot.report`)."""
    channel: str = "serial"
    """What carried the command (:data:`vmboot.execute.channel.EXEC_CHANNELS`): ``console``
    or ``vsock`` (the guest agent), or ``serial`` (the UARTs)."""
    channel_reason: str = ""
    """Why that channel (``-v``)."""

    def read_console(self) -> Reading:
        """:attr:`reading`, made from the console, the VM's exit and the command's status
        when not set yet."""
        if self.reading is None:
            from vmboot.report import read_console

            self.reading = read_console(self.console, None if self.vm_exit is None
                                        else self.vm_exit.reason, command_failed=not self.ok)
        return self.reading

    @property
    def verdict(self) -> Verdict:
        """``ok`` when the command exited 0 and the kernel reported nothing, else the most
        severe of the kernel's reports, the VM's end, and ``command-failed``."""
        return self.read_console().verdict

    @property
    def ok(self) -> bool:
        """The command exited with status 0."""
        return self.reason is ExecReason.EXITED and self.exit_status == 0

    def one_line(self) -> str:
        if self.reason is ExecReason.EXITED:
            return f"the command exited with status {self.exit_status}"
        return f"{self.reason.value}: {self.detail}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary; the outputs are decoded as UTF-8 (undecodable bytes replaced)."""
        return {
            "reason": self.reason.value,
            "exit_status": self.exit_status,
            "detail": self.detail,
            "summary": self.one_line(),
            "stdout": self.stdout.decode("utf-8", "replace"),
            "stderr": self.stderr.decode("utf-8", "replace"),
            "console_bytes": len(self.console),
            "vm_exit": None if self.vm_exit is None else self.vm_exit.reason.value,
            "timings": self.timings.as_dict(),
            "dropped": dict(self.dropped),
            "channel": self.channel,
            "channel_reason": self.channel_reason,
            **self.read_console().as_dict(),
        }


@dataclass(frozen=True)
class Outcome:
    reason: ExecReason
    exit_status: int | None
    detail: str


def exec_reading(run_reading: Reading | None, vm_exit: ExitReason,
                 outcome: Outcome) -> Reading | None:
    """The run's kernel reports, judged with the command's outcome."""
    from vmboot.report import Reading, decide

    if run_reading is None:
        return None
    failed = not (outcome.reason is ExecReason.EXITED and outcome.exit_status == 0)
    return Reading(decide(run_reading.reports, vm_exit, command_failed=failed), run_reading.reports)

