"""A guest's shell on its serial console, driven command by command.

::

    shell = GuestShell(machine, waiter)            # the machine's console is ``waiter``
    shell.wait_for_prompt(timeout=120)             # after a boot (not after a restore)
    shell.run("echo $((6*7))")                     # -> "42"

:meth:`GuestShell.run` types the command, runs the guest until the prompt comes back, and
returns what the command printed: without the echoed command line, the prompt, carriage
returns and the terminal queries busybox's line editor sends (``ESC [ 6 n``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from vmboot.vmm.console_wait import ConsoleWaiter

if TYPE_CHECKING:
    from vmboot.vmm.machine import Machine

BUSYBOX_PROMPT = "/ # "
"""busybox ash's prompt for root in /."""
DEFAULT_COMMAND_TIMEOUT = 60.0
_TERMINAL_QUERY = re.compile(rb"\x1b\[[0-9;]*[a-zA-Z]")


class GuestShell:
    """Commands typed into ``machine``'s console UART, answers read from its console."""

    def __init__(self, machine: Machine, waiter: ConsoleWaiter, prompt: str = BUSYBOX_PROMPT
                 ) -> None:
        self.machine = machine
        self.waiter = waiter
        self.prompt = prompt.encode()
        waiter.attach(machine)

    def wait_for_prompt(self, timeout: float) -> bytes:
        """Run until the first prompt; return the console output up to it."""
        return self.waiter.run_until(self.prompt, timeout)

    def run(self, command: str, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> str:
        """Type ``command`` and return its output (lines joined with "\\n", no final newline)."""
        self.machine.push_input(command.encode() + b"\n")
        raw = self.waiter.run_until(b"\n" + self.prompt, timeout)
        text = _TERMINAL_QUERY.sub(b"", raw).replace(b"\r", b"")
        body = text[: text.rfind(b"\n" + self.prompt)]
        _echo, _, output = body.partition(b"\n")
        return output.decode("utf-8", "replace")
