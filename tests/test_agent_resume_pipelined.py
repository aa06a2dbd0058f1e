"""A restored guest's resume message sent with the first command (``send_resumed``): one
write, the answer taken while the command runs, a late answer answered with a fresh clock,
and a refusal or silence failing the command. The agent's side is scripted here."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from vmboot.agent import client as client_module
from vmboot.agent import protocol as p
from vmboot.agent.client import AgentClient, ResumeFailed

VERSION = b"vmboot-agent test"


def done(*errnos: int, held: tuple[int, int] | None = None) -> bytes:
    """The answer of an agent (of vmboot-agent 4 when ``held`` gives its held TSC cycles and
    the bytes behind the message)."""
    tail = b"" if held is None else b"\0" + p.RESUMED_HELD.pack(*held)
    return p.frame(p.Frame.RESUMED_DONE,
                   p.RESUMED_DONE.pack(*(errnos or (0, 0, 0))) + VERSION + tail)


STARTED = p.frame(p.Frame.STARTED, p.STARTED.pack(1, 0))
EXITED = p.frame(p.Frame.EXITED, p.U32_PAIR.pack(0, 0))


class ScriptedAgent:
    """The agent's end of the connection: records every read (as the agent's read()s would
    see them) and every frame but the end of stdin (sent once a command started), and
    answers as the test says."""

    def __init__(self, sock: socket.socket, answer: Callable[[ScriptedAgent, p.Message], object]
                 ) -> None:
        self.sock = sock
        self.reads: list[list[p.Frame]] = []
        self.frames: list[p.Message] = []
        self._answer = answer
        self._reader = p.FrameReader()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):  # the test closed the connection
            self._serve_until_closed()

    def _serve_until_closed(self) -> None:
        while data := self.sock.recv(1 << 16):
            messages = [m for m in self._reader.feed(data) if m.kind is not p.Frame.STDIN_END]
            self.reads.append([m.kind for m in messages])
            for msg in messages:
                self.frames.append(msg)
                self._answer(self, msg)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def join(self) -> None:
        self._thread.join(10)

    def kinds(self) -> list[p.Frame]:
        return [m.kind for m in self.frames]


def run_against(socket_pair: tuple[socket.socket, socket.socket],
                answer: Callable[[ScriptedAgent, p.Message], object],
                resume_timeout: float | None = 10.0) -> tuple[AgentClient, ScriptedAgent]:
    ours, theirs = socket_pair
    agent = ScriptedAgent(theirs, answer)
    client = AgentClient(ours)
    client.send_resumed(resume_timeout)
    return client, agent


def test_the_resume_message_and_the_command_leave_in_one_write(
        socket_pair: tuple[socket.socket, socket.socket]) -> None:
    def answer(agent: ScriptedAgent, msg: p.Message) -> None:
        if msg.kind is p.Frame.RESUMED:
            agent.send(done())
        elif msg.kind is p.Frame.EXEC:
            agent.send(STARTED + EXITED)

    client, agent = run_against(socket_pair, answer)
    assert agent.reads == []  # nothing is sent before the command
    result = client.run(["/bin/true"], timeout=10)
    assert result.exit_status == 0 and result.sent_at is not None
    assert agent.reads[0] == [p.Frame.RESUMED, p.Frame.EXEC]
    assert client.version == VERSION.decode() and client.answered_at is not None
    # the next command goes alone
    client.run(["/bin/true"], timeout=10)
    assert [read for read in agent.reads if read][-1] == [p.Frame.EXEC]


def test_a_late_answer_sets_the_clock_again_while_the_command_runs(
        socket_pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "CLOCK_TOLERANCE", -1.0)  # every answer is late

    def answer(agent: ScriptedAgent, msg: p.Message) -> None:
        if msg.kind is p.Frame.RESUMED:
            agent.send(done())
            if agent.kinds().count(p.Frame.RESUMED) == client_module.RESUME_ATTEMPTS:
                agent.send(EXITED)
        elif msg.kind is p.Frame.EXEC:
            agent.send(STARTED)

    client, agent = run_against(socket_pair, answer)
    result = client.run(["/bin/true"], timeout=10)
    assert result.exit_status == 0
    assert agent.kinds() == [p.Frame.RESUMED, p.Frame.EXEC,
                             *[p.Frame.RESUMED] * (client_module.RESUME_ATTEMPTS - 1)]
    assert client.version == VERSION.decode()


@pytest.mark.parametrize(("errnos", "named"), [
    ((1, 0, 0), "RNDADDENTROPY: Operation not permitted"),
    ((0, 0, 22), r"clock_settime\(CLOCK_REALTIME\): Invalid argument"),
])
def test_a_refused_resume_kills_the_command_and_says_which_step(
        socket_pair: tuple[socket.socket, socket.socket], errnos: tuple[int, int, int],
        named: str) -> None:
    def answer(agent: ScriptedAgent, msg: p.Message) -> None:
        if msg.kind is p.Frame.EXEC:
            agent.send(STARTED + done(*errnos))
        elif msg.kind is p.Frame.SIGNAL:
            agent.send(EXITED)

    client, agent = run_against(socket_pair, answer)
    with pytest.raises(ResumeFailed, match=named):
        client.run(["/bin/sleep", "100"], timeout=10)
    socket_pair[0].shutdown(socket.SHUT_WR)
    agent.join()
    assert agent.kinds()[-1] is p.Frame.SIGNAL
    assert p.U32.unpack_from(agent.frames[-1].payload)[0] == signal.SIGKILL


def test_no_answer_to_the_resume_fails_the_command_within_its_time(
        socket_pair: tuple[socket.socket, socket.socket]) -> None:
    def answer(agent: ScriptedAgent, msg: p.Message) -> None:
        if msg.kind is p.Frame.EXEC:
            agent.send(STARTED)  # the command runs; the resume is never answered

    client, agent = run_against(socket_pair, answer, resume_timeout=0.3)
    with pytest.raises(ResumeFailed, match=r"no answer to the resume message within 0\.3 s"):
        client.run(["/bin/sleep", "100"], timeout=60)
    socket_pair[0].shutdown(socket.SHUT_WR)
    agent.join()
    assert agent.kinds() == [p.Frame.RESUMED, p.Frame.EXEC, p.Frame.SIGNAL]


def test_the_blocking_resume_still_waits_for_its_answer(
        socket_pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = socket_pair
    agent = ScriptedAgent(theirs, lambda a, m: a.send(done()) if m.kind is p.Frame.RESUMED
                          else None)
    client = AgentClient(ours)
    client.resumed(10)
    assert client.version == VERSION.decode() and agent.kinds() == [p.Frame.RESUMED]


@pytest.mark.parametrize("complete", [True, False])
def test_the_agent_held_the_command_when_it_came_whole_with_the_message(
        socket_pair: tuple[socket.socket, socket.socket], complete: bool) -> None:
    """The answer's time less what the agent says it held the message, when the read that
    brought it brought the whole command too; no figure when it brought less."""
    held_cycles, tsc_khz = 60_000_000, 2_000_000  # 30 ms at 2 GHz

    def answer(agent: ScriptedAgent, msg: p.Message) -> None:
        if msg.kind is p.Frame.EXEC:
            sent_behind = len(p.exec_frame(["/bin/true"], {}))
            agent.send(done(held=(held_cycles, sent_behind if complete else sent_behind - 1))
                       + STARTED + EXITED)

    client, _agent = run_against(socket_pair, answer)
    client.run(["/bin/true"], timeout=10)
    assert client.answered_at is not None and client.version == VERSION.decode()
    if complete:
        assert client.held_command_at(tsc_khz) == pytest.approx(client.answered_at - 0.030)
    else:
        assert client.held_command_at(tsc_khz) is None


def test_an_answer_without_the_held_time_gives_no_figure(
        socket_pair: tuple[socket.socket, socket.socket]) -> None:
    def answer(agent: ScriptedAgent, msg: p.Message) -> None:
        if msg.kind is p.Frame.EXEC:
            agent.send(done() + STARTED + EXITED)

    client, _agent = run_against(socket_pair, answer)
    client.run(["/bin/true"], timeout=10)
    assert client.answered_at is not None and client.held_command_at(2_000_000) is None


def test_a_short_resume_answer_is_refused() -> None:
    with pytest.raises(p.AgentProtocolError, match="resume answer of 5 bytes"):
        p.resumed_answer(b"\0" * 5)


class _WaitingGuest:
    """A guest whose run lasts until it is asked to stop; notes when it started."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self._stop = threading.Event()

    def run(self, timeout: float | None = None) -> object:
        self.started.set()
        self._stop.wait(10)
        return None

    def request_stop(self) -> None:
        self._stop.set()


def test_a_restored_guest_runs_once_its_first_command_is_on_its_way() -> None:
    """Over the console port the vCPU thread starts after the resume message and the
    command are written, so the guest resumes with them in its queue."""
    from vmboot.vmm.guest_agent import AgentBridge, GuestAgent

    guest = _WaitingGuest()
    bridge = AgentBridge()
    agent: GuestAgent[Any] = GuestAgent(guest, bridge)
    try:
        client = agent.resume(10, wait=False)
        assert not agent.running and not guest.started.is_set()
        client.signal(signal.SIGCONT)  # the first message: the resume message goes with it
        assert guest.started.wait(10) and agent.running
    finally:
        agent.stop()
        bridge.close()


def test_a_restored_guest_runs_once_its_first_frames_are_in_the_mailbox() -> None:
    """With a mailbox (a guest saved with its agent parked) the first write goes there, and
    the guest starts only after it: the agent finds the frames in memory."""
    from vmboot.vmm.guest_agent import AgentBridge, GuestAgent

    guest = _WaitingGuest()
    bridge = AgentBridge()
    agent: GuestAgent[Any] = GuestAgent(guest, bridge)
    delivered: list[tuple[bool, list[p.Frame]]] = []

    def deliver(data: bytes) -> bool:
        delivered.append((guest.started.is_set(), [m.kind for m in p.FrameReader().feed(data)]))
        return True

    try:
        client = agent.resume(10, wait=False, deliver_first=deliver)
        assert not guest.started.is_set()
        client.signal(signal.SIGCONT)
        assert guest.started.wait(10)
        assert delivered == [(False, [p.Frame.RESUMED, p.Frame.SIGNAL])]
        assert client.first_in_mailbox
    finally:
        agent.stop()
        bridge.close()
