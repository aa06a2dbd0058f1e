"""When a :class:`~vmboot.vmm.machine.Machine` writes vmcores, and what they are called.

Triggers (``Machine(dump_on=...)``, ``vmboot run --dump-on``):

* ``panic``: the guest printed ``Kernel panic - not syncing`` (written at the end of the
  panic, still inside ``panic()``);
* ``oops``: the guest printed an oops, a report of the kernel's ``die()`` that ends with
  ``---[ end trace`` (a NULL dereference or bad page fault, ``kernel BUG at``, an invalid
  opcode, a general protection fault, ...); the guest then goes on. Reports that do not
  end that way (a soft lockup, a hung task) are no oopses;
* ``timeout``: the run's time limit passed.

A dump on demand (:meth:`Machine.request_dump`, or :data:`DUMP_SIGNAL` sent to ``vmboot
run``) is written as soon as the vCPU leaves the guest, and the run goes on.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable
from pathlib import Path

from vmboot.config import DUMP_TRIGGERS as DUMP_TRIGGERS
from vmboot.config import parse_triggers as parse_triggers
from vmboot.errors import UsageError

DEMAND = "demand"
"""The trigger name of a dump asked for while the guest runs."""
DUMP_SIGNAL = signal.SIGUSR2
"""The signal that makes ``vmboot run`` write a vmcore into --dump-dir and continue
(SIGUSR1 is the run loop's own vCPU kick)."""
OOPS_MARKERS: tuple[bytes, ...] = (
    b"Oops: ", b"BUG: kernel NULL pointer dereference", b"BUG: unable to handle",
    b"general protection fault", b"kernel BUG at ", b"invalid opcode: ", b"divide error: ",
    b"stack segment: ",
)
"""First lines of an x86 oops. Not any ``BUG:``: ``BUG: soft lockup`` (printed again every
few seconds) and other ``BUG:`` reports never print the end line, which left the watch
waiting and the next oops without its vmcore and trace."""
OOPS_END = b"---[ end trace"
"""The kernel's last line of an oops report (``end_trace``); markers before it are one oops.
The machine's console watcher uses both for vmcores on oops and for oops traces."""


class DumpPolicy:
    """Which triggers write a vmcore, into which directory, under which names."""

    def __init__(self, triggers: str | Iterable[str] = (), directory: str | Path | None = None,
                 ) -> None:
        self.triggers = parse_triggers(triggers)
        self.directory = Path(directory) if directory is not None else None
        if self.triggers and self.directory is None:
            raise UsageError(f"dump_on={','.join(sorted(self.triggers))} needs dump_dir "
                             f"(--dump-dir DIR): the directory the vmcores are written into")
        self.count = 0

    def wants(self, trigger: str) -> bool:
        return trigger in self.triggers

    def next_path(self, trigger: str) -> Path:
        """``DIR/vmcore.N.TRIGGER``, N counting up from 1 per machine; makes DIR if needed."""
        if self.directory is None:
            raise UsageError(f"a vmcore ({trigger}) needs a directory: pass dump_dir "
                             f"(--dump-dir DIR)")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"dump_dir: cannot create {self.directory}: {e.strerror}") from None
        self.count += 1
        return self.directory / f"vmcore.{self.count}.{trigger}"
