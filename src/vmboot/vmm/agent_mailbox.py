"""The host's half of the agent's mailbox (:data:`vmboot.agent.protocol.MAILBOX_HEAD`).

A guest saved while its agent was parked (:meth:`vmboot.agent.client.AgentClient.park`) is
given its first frames after a restore by writing them into that page of guest memory
before any vCPU runs again: the agent, spinning in user mode, takes them with no work of the
guest kernel (on a host that emulates guest ring 0, that work is most of the time from the
restore to the agent holding the command).
"""

from __future__ import annotations

from typing import Protocol

from vmboot.agent import protocol


class MailboxMemory(Protocol):
    """What the mailbox needs of guest memory (:class:`~vmboot.hv.guest_memory.GuestMemory`
    has it)."""

    def contains(self, gpa: int, length: int) -> bool: ...

    def read(self, gpa: int, length: int) -> bytes: ...

    def write(self, gpa: int, data: bytes) -> None: ...


def _parked_length(memory: MailboxMemory, address: int) -> int | None:
    """The length of the frames in the mailbox at ``address`` while its agent is parked
    there; None when it is not (or ``address`` is not a page of guest RAM)."""
    if address % protocol.MAILBOX_SIZE or not memory.contains(address, protocol.MAILBOX_SIZE):
        return None
    state, length = protocol.MAILBOX_HEAD.unpack(memory.read(address, protocol.MAILBOX_HEAD.size))
    return length if state == protocol.MAILBOX_PARKED else None


def write_mailbox(memory: MailboxMemory, address: int, data: bytes) -> bool:
    """Put ``data`` (whole frames) in the mailbox at guest-physical ``address``; False, with
    nothing written, when the frames do not fit, the page is not guest RAM, or the saved
    agent had stopped waiting there (the frames must then go over the channel). Call only
    while no vCPU of the guest runs."""
    if not data or len(data) > protocol.MAILBOX_DATA_MAX or _parked_length(memory, address) != 0:
        return False
    memory.write(address + protocol.MAILBOX_HEAD.size, data)
    memory.write(address, protocol.MAILBOX_HEAD.pack(protocol.MAILBOX_PARKED, len(data)))
    return True


def release_mailbox(memory: MailboxMemory, address: int) -> None:
    """Let a parked agent go at once: it takes the frames :func:`write_mailbox` put there,
    else reads its channel again (a guest saved and running on, or restored and given
    nothing there; its wait would otherwise end only by the TSC, which a restore may set
    back). Call only while no vCPU of the guest runs."""
    length = _parked_length(memory, address)
    if length is not None:
        memory.write(address, protocol.MAILBOX_HEAD.pack(0, length))
