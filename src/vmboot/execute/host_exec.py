"""``vmboot exec --rootfs / -- CMD``: run a host program in a guest booted on the host's root.

The guest's root is the host's ``/``, read-only over virtio-fs (:mod:`vmboot.vmm.host_root`),
and the guest agent is its init. ``CMD`` is looked up in the host's ``PATH`` (the guest sees
the same files at the same paths), runs in the host's current directory with the host's
environment (plus ``--env``), reads what is given as ``stdin``, and its status, output and
timings come back as an :class:`~vmboot.execute.ExecResult`, like the initramfs path's.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vmboot.config import DEFAULT_ENTRY, MIN_CPUS, MachineConfig
from vmboot.devices.console import DEFAULT_CAPTURE_LIMIT
from vmboot.errors import BootConfigError, UsageError
from vmboot.execute.agent_run import (
    EXIT_NOT_FOUND,
    STOP_GRACE,
    AgentCommand,
    OutputCapture,
    exec_through_agent,
)
from vmboot.execute.discovery import find_kernel
from vmboot.execute.result import ExecReason, ExecResult, ExecTimings, OutputCallback
from vmboot.vmm.host_root import hidden_in_guest

if TYPE_CHECKING:
    from vmboot.agent.client import StdinSource
    from vmboot.devices.virtio.share import Share
    from vmboot.linux.options import EntryChoice

HOST_ROOT_MEMORY = "512M"
CHANNEL_REASON = "the host's root: the agent is init, on its virtio-console port"


def exec_on_host_root(
    command: Sequence[str],
    *,
    kernel: str | Path | None = None,
    memory: str | int = HOST_ROOT_MEMORY,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdin: StdinSource = None,
    timeout: float | None = None,
    console: OutputCallback | None = None,
    on_stdout: OutputCallback | None = None,
    on_stderr: OutputCallback | None = None,
    shares: Sequence[Share] = (),
    entry: EntryChoice = DEFAULT_ENTRY,
    cpus: int = MIN_CPUS,
) -> ExecResult:
    """Boot ``kernel`` on the host's root and run ``command`` there through the agent.

    ``env``: the command's whole environment (default: this process's). ``cwd``: its
    directory (default: this process's). ``timeout``: seconds for the boot and the command
    together; the command is then killed and the result says ``timeout``.
    """
    from vmboot.vmm.machine import Machine

    if timeout is not None and not timeout > 0:
        raise BootConfigError(f"timeout: {timeout!r} is not a positive number of seconds (or None)")
    t0 = time.monotonic()
    environment = dict(os.environ if env is None else env)
    directory = os.getcwd() if cwd is None else cwd
    hidden = hidden_in_guest(directory)
    if hidden is not None:
        raise UsageError(f"the working directory {directory} is under {hidden}, which the guest "
                         "replaces with an empty tmpfs; run vmboot exec --rootfs / from a "
                         "directory elsewhere")
    kernel_path = Path(kernel) if kernel is not None else find_kernel()
    argv = list(command)
    program = shutil.which(argv[0], path=environment.get("PATH", os.defpath))
    if program is None:
        message = f"vmboot exec: {argv[0]}: command not found in the host's PATH\n".encode()
        if on_stderr is not None:
            on_stderr(message)
        return _result(ExecReason.EXITED, EXIT_NOT_FOUND, b"", message, t0, None, None)
    argv[0] = program
    config = MachineConfig(kernel_path, memory=memory, rootfs="/", shares=tuple(shares),
                           entry=entry, cpus=cpus,
                           timeout=None if timeout is None else timeout + STOP_GRACE)
    with Machine.from_config(config, console=console, on_panic=None) as machine:
        result = exec_through_agent(
            machine, AgentCommand(argv, environment, directory, stdin), t0=t0, timeout=timeout,
            stdout=OutputCapture(on_stdout, DEFAULT_CAPTURE_LIMIT),
            stderr=OutputCapture(on_stderr, DEFAULT_CAPTURE_LIMIT))
    result.channel_reason = CHANNEL_REASON
    return result


def _result(reason: ExecReason, status: int | None, stdout: bytes, stderr: bytes, t0: float,
            entered: float | None, exited: float | None, detail: str = "",
            console: bytes = b"") -> ExecResult:
    timings = ExecTimings(initramfs=0.0, kernel_entry=entered, first_console_byte=None,
                          command_start=None, command_exit=exited, total=time.monotonic() - t0)
    return ExecResult(stdout=stdout, stderr=stderr, exit_status=status, reason=reason,
                      timings=timings, console=console, detail=detail, channel="console",
                      channel_reason=CHANNEL_REASON)
