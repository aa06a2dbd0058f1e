"""Run a machine until its console shows a given text (a prompt, a command's answer).

::

    waiter = ConsoleWaiter()
    machine = Machine(kernel, initrd=initrd, console=waiter)
    waiter.attach(machine)
    text = waiter.run_until(b"/ # ", timeout=120)             # boot to the shell prompt
    machine.push_input(b"echo $((6*7))\\n")
    text = waiter.run_until(b"\\n/ # ", timeout=30)            # the answer and the next prompt

The console sink runs on the vCPU thread; when the awaited text has arrived it asks the
run to stop, so :meth:`run_until` returns with the guest paused right after it.
"""

from __future__ import annotations

import threading

from vmboot.devices.console import ConsoleSink
from vmboot.errors import GuestError
from vmboot.vmm.running import RunEnd, RunsGuest


class ConsoleWaiter:
    """A console sink that stops the machine's run once an awaited byte string appears."""

    def __init__(self, echo: ConsoleSink | None = None) -> None:
        """``echo``: also hand every chunk to this sink (e.g. the terminal)."""
        self.echo = echo
        self.data = bytearray()
        self._lock = threading.Lock()
        self._machine: RunsGuest[RunEnd] | None = None
        self._marker: bytes | None = None
        self._start = 0

    def attach(self, machine: RunsGuest[RunEnd]) -> None:
        self._machine = machine

    def __call__(self, chunk: bytes) -> None:
        if self.echo is not None:
            self.echo(chunk)
        with self._lock:
            self.data += chunk
            hit = self._marker is not None and self.data.find(
                self._marker, max(self._start, len(self.data) - len(chunk) - len(self._marker))) >= 0
            if hit:
                self._marker = None
        if hit and self._machine is not None:
            self._machine.request_stop()

    def run_until(self, marker: bytes, timeout: float) -> bytes:
        """Run until ``marker`` appears in output that is new since this call; return that output."""
        machine = self._machine
        if machine is None:
            raise GuestError("ConsoleWaiter: attach(machine) first")
        with self._lock:
            start = len(self.data)
            self._start, self._marker = start, marker
        result = machine.run(timeout=timeout)
        with self._lock:
            self._marker = None
            new = bytes(self.data[start:])
        if marker not in new:
            raise GuestError(
                f"console: {marker!r} did not appear (run ended: {result.exit.one_line()}); "
                f"last output: {new[-500:]!r}"
            )
        return new
