"""What the helpers that drive a machine's run need of it, as protocols.

:class:`~vmboot.vmm.machine.Machine` satisfies :class:`RunsGuest` (its
:class:`~vmboot.vmm.machine.RunResult` is a :class:`RunEnd`); the console waiter and the
guest agent take any :class:`RunsGuest`, so they need nothing of the machine module.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from vmboot.vmm.exits import VmExit


class RunEnd(Protocol):
    """How a run ended."""

    @property
    def exit(self) -> VmExit: ...


EndT_co = TypeVar("EndT_co", bound=RunEnd, covariant=True)


class RunsGuest(Protocol[EndT_co]):
    """A guest that runs until it stops, and that another thread can ask to stop."""

    def run(self, timeout: float | None = None) -> EndT_co:
        """Run until the guest stops, or for at most ``timeout`` seconds."""
        ...

    def request_stop(self) -> None:
        """End the current run (safe from another thread)."""
        ...
