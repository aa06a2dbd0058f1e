"""``vmboot exec --rootfs / -- CMD``: run a host program in a guest booted on the host's root.

The guest's root is the host's ``/``, read-only over virtio-fs (:mod:`vmboot.vmm.host_root`),
and the guest agent is its init. ``CMD`` is looked up in the host's ``PATH`` (the guest sees
the same files at the same paths), runs in the host's current directory with the host's
environment (plus ``--env``), reads the bytes given as ``stdin``, and its status, output and
timings come back as an :class:`~vmboot.execute.ExecResult`, like the initramfs path's.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmboot.agent.client import AgentError, CommandNotStarted
from vmboot.config import DEFAULT_ENTRY, MIN_CPUS
from vmboot.errors import BootConfigError, UsageError, VmbootError
from vmboot.execute.api import ExecReason, ExecResult, ExecTimings
from vmboot.execute.discovery import find_kernel
from vmboot.vmm.guest_agent import READY_TIMEOUT
from vmboot.vmm.host_root import hidden_in_guest

if TYPE_CHECKING:
    from vmboot.devices.virtio.share import Share
    from vmboot.linux.options import EntryChoice
    from vmboot.vmm.machine import Machine

OutputCallback = Callable[[bytes], object]
EXIT_NOT_FOUND = 127
EXIT_CANNOT_RUN = 126
SIGNAL_STATUS_BASE = 128
"""A command killed by signal N reports 128+N, as a shell does."""
HOST_ROOT_MEMORY = "512M"


def exec_on_host_root(
    command: Sequence[str],
    *,
    kernel: str | Path | None = None,
    memory: str | int = HOST_ROOT_MEMORY,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdin: bytes | None = None,
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
    console_bytes = bytearray()

    def on_console(data: bytes) -> None:
        console_bytes.extend(data)
        if console is not None:
            console(data)

    with Machine(kernel_path, memory=memory, rootfs="/", shares=shares, console=on_console,
                 on_panic=None, entry=entry, cpus=cpus) as machine:
        entered = time.monotonic() - t0
        left = None if timeout is None else max(timeout - entered, 0.001)
        forwarding = _forward_signals(machine)
        try:
            outcome = machine.exec(argv, environment, directory, stdin, timeout=left,
                                   on_stdout=on_stdout, on_stderr=on_stderr,
                                   ready_timeout=READY_TIMEOUT if left is None else left)
        except CommandNotStarted as e:
            status = EXIT_NOT_FOUND if e.errno == errno.ENOENT else EXIT_CANNOT_RUN
            message = f"vmboot exec: {e}\n".encode()
            if on_stderr is not None:
                on_stderr(message)
            return _result(ExecReason.EXITED, status, b"", message, t0,
                           entered, time.monotonic() - t0, str(e), bytes(console_bytes))
        except AgentError as e:
            reason = ExecReason.BOOT_FAILURE
            if "no greeting" in str(e) and timeout is not None:
                reason = ExecReason.TIMEOUT
            return _result(reason, None, b"", b"", t0, entered, None, str(e), bytes(console_bytes))
        finally:
            _restore_signals(forwarding)
    if outcome.timed_out:
        return _result(ExecReason.TIMEOUT, None, outcome.stdout, outcome.stderr, t0, entered,
                       None, f"the command ran past the {timeout:g} s time limit and was killed",
                       bytes(console_bytes))
    status = (outcome.exit_status if outcome.exit_status is not None
              else SIGNAL_STATUS_BASE + (outcome.signal or 0))
    detail = "" if outcome.signal is None else f"killed by {signal.Signals(outcome.signal).name}"
    return _result(ExecReason.EXITED, status, outcome.stdout, outcome.stderr, t0, entered,
                   time.monotonic() - t0, detail, bytes(console_bytes))


FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
"""Signals vmboot passes on to the command in the guest (Ctrl-C, Ctrl-\\, kill, hang-up)."""
Handlers = dict[signal.Signals, Any]


def _forward_signals(machine: Machine) -> Handlers:
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


def _restore_signals(previous: Handlers) -> None:
    for signo, handler in previous.items():
        signal.signal(signo, handler)


def _result(reason: ExecReason, status: int | None, stdout: bytes, stderr: bytes, t0: float,
            entered: float | None, exited: float | None, detail: str = "",
            console: bytes = b"") -> ExecResult:
    timings = ExecTimings(initramfs=0.0, kernel_entry=entered, first_console_byte=None,
                          command_start=None, command_exit=exited, total=time.monotonic() - t0)
    return ExecResult(stdout=stdout, stderr=stderr, exit_status=status, reason=reason,
                      timings=timings, console=console, detail=detail)
