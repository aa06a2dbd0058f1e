"""``vmboot run --dump-dir DIR``: SIGUSR2 (:data:`~vmboot.vmm.dumps.DUMP_SIGNAL`) writes a vmcore.

``kill -USR2 <pid of vmboot run>`` makes the run write ``DIR/vmcore.N.demand`` as soon as
the vCPU leaves the guest, then the guest goes on.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

from vmboot.vmm.dumps import DUMP_SIGNAL
from vmboot.vmm.machine import Machine


@contextlib.contextmanager
def dump_on_signal(machine: Machine) -> Iterator[None]:
    """While inside, :data:`DUMP_SIGNAL` asks ``machine`` for a vmcore; the old handler is
    restored on the way out."""
    def handler(signum: int, frame: FrameType | None) -> None:
        machine.request_dump()

    previous = signal.signal(DUMP_SIGNAL, handler)
    try:
        yield
    finally:
        signal.signal(DUMP_SIGNAL, previous)
