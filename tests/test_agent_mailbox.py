"""The agent's mailbox: PARK and its answer, the host writing a restored guest's first frames
into the page where the agent waits, and the agent binary itself parked on this host, its
mailbox written through /proc/PID/mem as a VMM writes guest memory."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from conftest import require
from vmboot.agent import agent_binary
from vmboot.agent import protocol as p
from vmboot.agent.client import AgentClient
from vmboot.hv.guest_memory import GuestMemory
from vmboot.vmm.agent_mailbox import release_mailbox, write_mailbox

PAGE = p.MAILBOX_SIZE
MAILBOX = 0x5000
RAM = 2 << 20
FRAMES = p.frame(p.Frame.SIGNAL, p.U32.pack(15)) + p.frame(p.Frame.STDIN_END)


# -- the wire format -----------------------------------------------------------------------
def test_park_carries_the_cycles_to_wait() -> None:
    assert p.park_frame(1 << 33) == p.LENGTH.pack(9) + b"W" + (1 << 33).to_bytes(8, "little")
    with pytest.raises(p.AgentProtocolError, match="-1 cycles"):
        p.park_frame(-1)


def test_the_park_answer_is_an_address_and_an_errno() -> None:
    assert p.parked_answer(p.PARKED_ANSWER.pack(0x7DB0000, 0)) == (0x7DB0000, 0)
    assert p.parked_answer(p.PARKED_ANSWER.pack(0, 6)) == (0, 6)
    with pytest.raises(p.AgentProtocolError, match="park answer of 4 bytes, expected 12"):
        p.parked_answer(b"\0" * 4)
    with pytest.raises(p.AgentProtocolError, match="0x7db0010 is not page-aligned"):
        p.parked_answer(p.PARKED_ANSWER.pack(0x7DB0010, 0))


@pytest.mark.parametrize(("version", "parks"), [
    (p.AGENT_VERSION, True), ("vmboot-agent 5", True), ("vmboot-agent 12", True),
    ("vmboot-agent 4", False), ("vmboot-agent", False), ("other-agent 9", False), (None, False),
])
def test_agents_from_version_5_park(version: str | None, parks: bool) -> None:
    assert p.agent_parks(version) is parks


# -- the host's half ------------------------------------------------------------------------
@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    with contextlib.closing(GuestMemory(RAM)) as mem:
        mem.write(MAILBOX, p.MAILBOX_HEAD.pack(p.MAILBOX_PARKED, 0))
        yield mem


def test_frames_go_into_the_page_of_a_parked_agent(memory: GuestMemory) -> None:
    assert write_mailbox(memory, MAILBOX, FRAMES)
    assert p.MAILBOX_HEAD.unpack(memory.read(MAILBOX, 8)) == (p.MAILBOX_PARKED, len(FRAMES))
    assert memory.read(MAILBOX + 8, len(FRAMES)) == FRAMES
    assert not write_mailbox(memory, MAILBOX, FRAMES), "the page already holds frames"


@pytest.mark.parametrize(("state", "address", "size"), [
    (0, MAILBOX, len(FRAMES)),                       # the agent had stopped waiting there
    (2, MAILBOX, len(FRAMES)),                       # not a state the agent writes
    (p.MAILBOX_PARKED, MAILBOX, p.MAILBOX_DATA_MAX + 1),  # more than the page holds
    (p.MAILBOX_PARKED, MAILBOX, 0),                  # nothing to deliver
    (p.MAILBOX_PARKED, MAILBOX + 8, len(FRAMES)),    # not a page
    (p.MAILBOX_PARKED, RAM, len(FRAMES)),            # not guest RAM
])
def test_nothing_is_written_where_the_agent_would_not_look(memory: GuestMemory, state: int,
                                                          address: int, size: int) -> None:
    memory.write(MAILBOX, p.MAILBOX_HEAD.pack(state, 0))
    before = memory.read(MAILBOX, PAGE)
    data = (FRAMES * (size // len(FRAMES) + 1))[:size]
    assert not write_mailbox(memory, address, data)
    assert memory.read(MAILBOX, PAGE) == before


def test_the_largest_delivery_fills_the_page(memory: GuestMemory) -> None:
    data = bytes(range(256)) * (p.MAILBOX_DATA_MAX // 256) + b"x" * (p.MAILBOX_DATA_MAX % 256)
    assert write_mailbox(memory, MAILBOX, data)
    assert memory.read(MAILBOX + 8, PAGE - 8) == data


def test_release_lets_the_agent_go_and_keeps_what_was_delivered(memory: GuestMemory) -> None:
    assert write_mailbox(memory, MAILBOX, FRAMES)
    release_mailbox(memory, MAILBOX)
    assert p.MAILBOX_HEAD.unpack(memory.read(MAILBOX, 8)) == (0, len(FRAMES))
    memory.write(MAILBOX, p.MAILBOX_HEAD.pack(0, 0))
    release_mailbox(memory, MAILBOX)  # not parked: unchanged
    assert memory.read(MAILBOX, 8) == p.MAILBOX_HEAD.pack(0, 0)


# -- the client -----------------------------------------------------------------------------
@pytest.mark.parametrize("delivered", [True, False])
def test_the_first_write_is_offered_to_the_mailbox(socket_pair: tuple[socket.socket, socket.socket],
                                                   delivered: bool) -> None:
    ours, theirs = socket_pair
    client = AgentClient(ours)
    offered: list[bytes] = []

    def deliver(data: bytes) -> bool:
        offered.append(data)
        return delivered

    client.deliver_first = deliver
    client.send_resumed(10)
    client.signal(15)  # the first write: the resume message goes with it
    client.signal(9)   # not offered: the mailbox takes only the first
    assert len(offered) == 1
    kinds = [m.kind for m in p.FrameReader().feed(offered[0])]
    assert kinds == [p.Frame.RESUMED, p.Frame.SIGNAL]
    assert client.first_in_mailbox is delivered
    theirs.settimeout(5)
    on_socket = b""
    want = len(p.signal_frame(9)) + (0 if delivered else len(offered[0]))
    while len(on_socket) < want:
        on_socket += theirs.recv(1 << 16)
    assert on_socket == (b"" if delivered else offered[0]) + p.signal_frame(9)


def test_park_asks_for_the_wait_and_returns_the_answer(socket_pair: tuple[socket.socket, socket.socket]
                                                       ) -> None:
    ours, theirs = socket_pair
    got: list[p.Message] = []

    def agent() -> None:
        got.extend(p.FrameReader().feed(theirs.recv(1 << 16)))
        theirs.sendall(p.frame(p.Frame.PARKED, p.PARKED_ANSWER.pack(0x3000, 0)))

    thread = threading.Thread(target=agent)
    thread.start()
    assert AgentClient(ours).park(12345, timeout=10) == (0x3000, 0)
    thread.join(10)
    assert [(m.kind, m.payload) for m in got] == [(p.Frame.PARK, p.U64.pack(12345))]


# -- the agent binary, parked on this host -----------------------------------------------------
class ProcessMemory:
    """Another process's memory addressed by physical address (its pages found through
    /proc/PID/pagemap), read and written through /proc/PID/mem: the agent's "guest memory"."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._pages: dict[int, int] = {}  # physical page -> virtual page
        with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
            for line in maps:
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                if "w" not in line.split()[1]:
                    continue
                for virt in range(start, end, PAGE):
                    pagemap.seek(virt // PAGE * 8)
                    entry = int.from_bytes(pagemap.read(8), "little")
                    if entry >> 63:
                        self._pages[(entry & ((1 << 55) - 1)) * PAGE] = virt

    def _virtual(self, address: int) -> int:
        return self._pages[address - address % PAGE] + address % PAGE

    def contains(self, gpa: int, length: int) -> bool:
        return gpa - gpa % PAGE in self._pages and gpa % PAGE + length <= PAGE

    def read(self, gpa: int, length: int) -> bytes:
        with open(f"/proc/{self.pid}/mem", "rb", buffering=0) as mem:
            mem.seek(self._virtual(gpa))
            return mem.read(length)

    def write(self, gpa: int, data: bytes) -> None:
        with open(f"/proc/{self.pid}/mem", "r+b", buffering=0) as mem:
            mem.seek(self._virtual(gpa))
            mem.write(data)


def _agent() -> tuple[AgentClient, subprocess.Popen[bytes]]:
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen([str(agent_binary()), "--fd", str(theirs.fileno())],
                            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
    theirs.close()
    client = AgentClient(ours)
    client.wait_ready(10)
    return client, proc


@contextlib.contextmanager
def parked_agent() -> Iterator[tuple[AgentClient, subprocess.Popen[bytes], int]]:
    """The agent binary on a socket socket_pair, parked (it would wait ~2^40 TSC cycles)."""
    require(os.geteuid() == 0, "root", "the agent reads its page's physical address from "
            "/proc/self/pagemap, which needs CAP_SYS_ADMIN")
    client, proc = _agent()
    try:
        address, err = client.park(1 << 40, timeout=10)
        assert err == 0 and address, (address, os.strerror(err))
        yield client, proc, address
    finally:
        client.close()
        proc.kill()
        proc.wait()


def _until_exit(sock: socket.socket) -> list[tuple[p.Frame, bytes]]:
    """The agent's frames up to its EXITED, read straight from the socket (the command was
    not sent through the client)."""
    reader = p.FrameReader()
    got: list[tuple[p.Frame, bytes]] = []
    sock.settimeout(30)
    while not got or got[-1][0] is not p.Frame.EXITED:
        got += [(m.kind, m.payload) for m in reader.feed(sock.recv(1 << 16))]
    return got


def test_a_parked_agent_takes_its_first_frames_from_the_mailbox() -> None:
    """A command written into the page is run as if read from the channel. (A resume
    message is not sent here: as root on this host it would set the host's clock.)"""
    with parked_agent() as (client, proc, address):
        memory = ProcessMemory(proc.pid)
        assert p.MAILBOX_HEAD.unpack(memory.read(address, 8)) == (p.MAILBOX_PARKED, 0)
        command = p.exec_frame(["/bin/sh", "-c", "echo from the mailbox"], {"PATH": "/bin"})
        assert write_mailbox(memory, address, command)
        got = _until_exit(client.sock)
        assert [k for k, _ in got] == [p.Frame.STARTED, p.Frame.STDOUT, p.Frame.EXITED]
        assert got[1][1] == b"from the mailbox\n"
        assert got[2][1] == p.U32_PAIR.pack(0, 0)
        assert memory.read(address, 8) == p.MAILBOX_HEAD.pack(0, 0)


def test_a_released_agent_goes_back_to_its_channel() -> None:
    with parked_agent() as (client, proc, address):
        release_mailbox(ProcessMemory(proc.pid), address)
        result = client.run(["/bin/sh", "-c", "echo over the socket"], {"PATH": "/bin"},
                            timeout=30)
        assert (result.exit_status, result.stdout) == (0, b"over the socket\n")


def test_an_agent_running_a_command_does_not_park() -> None:
    client, proc = _agent()
    try:
        client.sock.sendall(p.exec_frame(["/bin/sleep", "30"], {}))
        assert client.park(1 << 40, timeout=10) == (0, errno.EBUSY)
    finally:
        client.close()
        proc.kill()
        proc.wait()
