"""The host's side of the guest agent: run a command, stream its output, get its status.

The agent runs one command at a time; :meth:`AgentClient.run` can be called any number of
times on one connection. A command that outlives its ``timeout`` is killed (SIGKILL to its
process group) and reported with ``timed_out``; the agent, and the guest, stay usable.

Stdin is bytes, or a file whose descriptor is read as the command takes its input: in
chunks, at most :data:`~vmboot.agent.protocol.STDIN_WINDOW` bytes ahead of the command,
end of file passed on when the file ends. The run ends when the command does, whether or
not it read all of its stdin (``yes | vmboot exec -- head -n 3`` ends).
"""

from __future__ import annotations

import io
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from vmboot.agent import protocol as p
from vmboot.errors import VmbootError

OutputSink = Callable[[bytes], object]
StdinSource = bytes | BinaryIO | None
"""What a command reads: bytes, a file read as the command takes it, or None (end of file)."""
CLOCK_TOLERANCE = 1.0
"""Seconds a resume answer may take for the clock it set to count as right."""
RESUME_ATTEMPTS = 3
"""Resume messages sent at most (each later one because the answer to the last was slow)."""
CLOSED = "agent: the guest closed the connection (the agent exited, or the guest stopped)"


class AgentError(VmbootError):
    """The agent could not run the command, or the connection to it failed."""


class ResumeFailed(AgentError):
    """A restored guest's agent did not answer the resume message, or refused a step of it."""


class CommandNotStarted(AgentError):
    """The agent could not start the command (``errno`` says why: ENOENT, EACCES...)."""

    def __init__(self, message: str, errno: int) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass(frozen=True, slots=True)
class CommandResult:
    """How a command ended, and what it wrote (unless streamed elsewhere)."""

    exit_status: int | None
    """The status it exited with (None if a signal ended it)."""
    signal: int | None
    """The signal that ended it (None if it exited)."""
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    output: p.OutputPath = p.OutputPath.PIPES
    """How its stdout and stderr reached the host (straight from output ports, or pipes)."""
    started_at: float | None = None
    """``time.monotonic()`` when the agent said the command started (its STARTED message,
    sent once ``execve`` succeeded)."""
    sent_at: float | None = None
    """``time.monotonic()`` when the command had been written to the agent's channel."""

    @property
    def returncode(self) -> int:
        """As subprocess: the exit status, or minus the signal number."""
        return self.exit_status if self.exit_status is not None else -(self.signal or 0)


class AgentClient:
    """Talks to one agent over a connected stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = p.FrameReader()
        self.version: str | None = None
        self.answered_at: float | None = None
        """``time.monotonic()`` when the agent's answer to the resume message arrived."""
        self.resume_answer: p.ResumedAnswer | None = None
        """The agent's answer to the resume message (once it came)."""
        self._first_behind = 0
        self._pending: list[p.Message] = []
        self._resume: _PendingResume | None = None
        self._resume_unsent = False
        self._on_resume_sent: Callable[[], object] | None = None
        self.deliver_first: Callable[[bytes], bool] | None = None
        """Offered the first write that carries the resume message (and the command sent
        with it): True when it delivered the bytes itself (a restored guest's mailbox,
        written before the guest runs), False to send them over the socket."""
        self.first_in_mailbox = False
        """The first write went to the agent's mailbox (:attr:`deliver_first`)."""
        self.last_write_at = 0.0
        """``time.monotonic()`` when the last message to the agent had been written."""

    def _read(self, deadline: float | None,
              stdin: _StdinStream | None = None) -> p.Message | None:
        """The next message, or None when ``deadline`` passes first. ``stdin``: a file to
        forward whenever it is readable meanwhile (as long as it wants to be read)."""
        if self._resume_unsent:
            self._send(b"")
        while not self._pending:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            watched: list[socket.socket | int] = [self.sock]
            stdin_fd = stdin.fd if stdin is not None and stdin.wants_read() else None
            if stdin_fd is not None:
                watched.append(stdin_fd)
            ready, _, _ = select.select(watched, [], [], left)
            if stdin is not None and stdin_fd is not None and stdin_fd in ready:
                stdin.forward(self._send)
            if self.sock not in ready:
                continue
            try:
                data = self.sock.recv(1 << 16)
            except OSError as exc:
                raise AgentError(f"agent: connection failed: {exc.strerror or exc}") from None
            if not data:
                raise AgentError(CLOSED)
            self._pending.extend(self.reader.feed(data))
        return self._pending.pop(0)

    def wait_ready(self, timeout: float | None = None) -> str:
        """Wait for the agent's greeting; returns its version text (empty while the answer
        to a resume message sent with :meth:`send_resumed` is still to come: a restored
        agent greets no one, and takes a command at once)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.version is None and self._resume is None:
            msg = self._read(deadline)
            if msg is None:
                raise AgentError(f"agent: no greeting within {timeout:g} s")
            if msg.kind is p.Frame.READY:
                self.version = msg.payload.decode(errors="replace")
        return self.version or ""

    def park(self, wait_cycles: int, timeout: float | None = None) -> tuple[int, int]:
        """Ask an idle agent to wait for its next frames in its mailbox, right before the
        guest is saved (see :data:`~vmboot.agent.protocol.MAILBOX_HEAD`), for at most
        ``wait_cycles`` cycles of the guest's TSC; returns the mailbox's guest-physical
        address (0: the agent cannot say where it is) and the errno of why not. Until the
        wait ends (or the host clears the mailbox's state) the agent reads no frame from
        its channel."""
        self._send(p.park_frame(wait_cycles))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            msg = self._read(deadline)
            if msg is None:
                raise AgentError(f"agent: no answer to the park message within {timeout:g} s")
            if msg.kind is p.Frame.PARKED:
                try:
                    return p.parked_answer(msg.payload)
                except p.AgentProtocolError as e:
                    raise AgentError(str(e)) from None

    def resumed(self, timeout: float | None = None,
                on_sent: Callable[[], object] | None = None) -> None:
        """Tell the agent the guest was restored from a snapshot: it credits fresh random
        bytes from the host (``os.getrandom``) to the guest's entropy pool, reseeds the
        kernel's CRNG and sets the guest's wall clock to the host's. Waits for its answer
        and raises :class:`ResumeFailed` naming each step the guest refused.

        The time sent is the host's when the message leaves; when the answer comes back
        later than :data:`CLOCK_TOLERANCE` seconds (a guest still catching up after the
        restore), the message is sent again, so the clock is set from a fresh reading.
        A restored guest greets no one (it greeted when it booted): after this the
        connection is ready for :meth:`run`. ``on_sent``: as for :meth:`send_resumed`."""
        self.send_resumed(timeout, on_sent)
        assert self._resume is not None
        while self._resume is not None:
            msg = self._read(self._resume.deadline)
            if msg is None:
                raise self._resume.no_answer()
            if msg.kind is p.Frame.RESUMED_DONE:
                self._resume_answered(msg.payload)

    def send_resumed(self, timeout: float | None = None,
                     on_sent: Callable[[], object] | None = None) -> None:
        """Send the resume message of :meth:`resumed` without waiting for its answer: the
        next :meth:`run` sends its command right behind it (the agent takes frames in
        order, so the command starts with the fresh entropy and clock) and takes the answer
        as it comes, sending the message again when it was late, and raising
        :class:`ResumeFailed` (the command killed) when the guest refused a step or never
        answered within ``timeout`` seconds. ``on_sent`` is called once the message is
        written (with the command)."""
        self._resume = _PendingResume(timeout)
        self._resume_unsent = True
        self._on_resume_sent = on_sent

    def _resume_frame(self, behind: int) -> bytes:
        """The resume message when it is still to be sent (it leaves with the next frame,
        ``behind`` bytes, or before the next read), else nothing."""
        if not self._resume_unsent or self._resume is None:
            return b""
        self._resume_unsent = False
        self._resume.first_behind = behind
        return self._resume.frame()

    def _resume_answered(self, payload: bytes) -> None:
        """The agent's answer to the pending resume message: done, or sent again when the
        answer was late; :class:`ResumeFailed` when a step failed."""
        resume = self._resume
        assert resume is not None
        try:
            answer = p.resumed_answer(payload)
        except p.AgentProtocolError as e:
            raise ResumeFailed(str(e)) from None
        steps = ("RNDADDENTROPY", "RNDRESEEDCRNG", "clock_settime(CLOCK_REALTIME)")
        failed = [f"{step}: {os.strerror(e)} (errno {e})"
                  for step, e in zip(steps, answer.errnos, strict=True) if e]
        if failed:
            self._resume = None
            raise ResumeFailed(f"agent: the restored guest could not be reseeded or have its "
                               f"clock set: {'; '.join(failed)} (the agent must run as root)")
        now = time.monotonic()
        if now - resume.sent > CLOCK_TOLERANCE and resume.attempts < RESUME_ATTEMPTS:
            self._send(resume.frame())  # the clock it set is stale: set it again
            return
        self._resume = None
        self.answered_at = now
        self.resume_answer = answer
        self._first_behind = resume.first_behind if resume.attempts == 1 else 0
        self.version = answer.version

    def held_command_at(self, tsc_khz: int) -> float | None:
        """``time.monotonic()`` by which the agent had read the command sent with the resume
        message (:meth:`send_resumed`): the answer's arrival less the time the agent says it
        held the message (TSC cycles, at the guest's ``tsc_khz``), when the read that
        brought the message brought the whole command too; None otherwise (or with an
        agent older than vmboot-agent 4). The way back is not subtracted: it errs late."""
        answer = self.resume_answer
        if (answer is None or self.answered_at is None or not self._first_behind
                or answer.held_cycles is None or answer.behind is None
                or answer.behind < self._first_behind or tsc_khz <= 0):
            return None
        return self.answered_at - answer.held_cycles / (tsc_khz * 1000.0)

    def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str = "",
            stdin: StdinSource = None, on_stdout: OutputSink | None = None,
            on_stderr: OutputSink | None = None, timeout: float | None = None) -> CommandResult:
        """Run ``argv`` (``argv[0]`` is a path in the guest) and wait for it to end.

        Output goes to ``on_stdout``/``on_stderr`` as it arrives when given, else is collected
        in the result. ``stdin``: bytes fed to the command, then end of file; or a file read
        while the command runs, as it takes its input (None: end of file at once).
        """
        if self.version is None and self._resume is None:
            self.wait_ready(timeout)
        stream = _StdinStream.of(stdin)
        self._send(p.exec_frame(argv, env or {}, cwd))
        sent_at = self.last_write_at
        deadline = None if timeout is None else sent_at + timeout
        out, err = bytearray(), bytearray()
        output = p.OutputPath.PIPES
        killed = False
        started_at: float | None = None
        while True:
            resume = self._resume
            if resume is not None and resume.deadline is not None and (
                    deadline is None or resume.deadline < deadline):
                msg = self._read(resume.deadline, stream)
                if msg is None:
                    self.signal(signal.SIGKILL)
                    raise resume.no_answer()
            else:
                msg = self._read(deadline, stream)
            if msg is None:  # the time limit passed: end the command, keep the agent
                self.signal(signal.SIGKILL)
                stream.stop()
                killed = True
                deadline = None
                continue
            if msg.kind is p.Frame.STARTED:
                started_at = time.monotonic()
                if len(msg.payload) >= p.STARTED.size:
                    output = _output_path(p.STARTED.unpack_from(msg.payload)[1])
                stream.start(self._send)
            elif msg.kind is p.Frame.RESUMED_DONE and resume is not None:
                try:
                    self._resume_answered(msg.payload)
                except ResumeFailed:
                    self.signal(signal.SIGKILL)
                    raise
            elif msg.kind is p.Frame.STDIN_TAKEN:
                stream.taken(p.U32.unpack_from(msg.payload)[0], self._send)
            elif msg.kind is p.Frame.FAILED:
                errno_value = p.U32.unpack_from(msg.payload)[0] if len(msg.payload) >= 4 else 0
                raise CommandNotStarted(f"agent: cannot run {argv[0]!r} in the guest: "
                                        f"{os.strerror(errno_value)} (errno {errno_value})",
                                        errno_value)
            elif msg.kind is p.Frame.STDOUT:
                (on_stdout or out.extend)(msg.payload)
            elif msg.kind is p.Frame.STDERR:
                (on_stderr or err.extend)(msg.payload)
            elif msg.kind is p.Frame.EXITED:
                kind, value = p.U32_PAIR.unpack(msg.payload[:8])
                return CommandResult(exit_status=value if kind == 0 else None,
                                     signal=value if kind == 1 else None,
                                     stdout=bytes(out), stderr=bytes(err),
                                     timed_out=killed, output=output, started_at=started_at,
                                     sent_at=sent_at)

    def _send(self, data: bytes) -> None:
        with_resume = self._resume_unsent
        if with_resume:
            data = self._resume_frame(len(data)) + data  # one write: read together
        deliver = None
        if with_resume:
            deliver, self.deliver_first = self.deliver_first, None
        if deliver is not None and deliver(data):
            self.first_in_mailbox = True
        else:
            try:
                self.sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                raise AgentError(CLOSED) from None
            except OSError as exc:
                raise AgentError(f"agent: connection failed: {exc.strerror or exc}") from None
        self.last_write_at = time.monotonic()
        if with_resume and self._on_resume_sent is not None:
            on_sent, self._on_resume_sent = self._on_resume_sent, None
            on_sent()

    def signal(self, signo: int) -> None:
        """Send ``signo`` to the running command's process group (as Ctrl-C does at a terminal)."""
        self._send(p.signal_frame(int(signo)))

    def close(self) -> None:
        self.sock.close()


def _output_path(value: int) -> p.OutputPath:
    try:
        return p.OutputPath(value)
    except ValueError:
        raise p.AgentProtocolError(
            f"agent: STARTED names output path {value}, not one of "
            f"{', '.join(f'{o.value} ({o.name})' for o in p.OutputPath)} (an agent newer than "
            "this vmboot, or a corrupt stream)") from None


class _PendingResume:
    """A resume message sent, its answer not yet taken."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.sent = 0.0
        self.attempts = 0
        self.first_behind = 0
        """Bytes sent in the same write behind the first message (the first command)."""

    def frame(self) -> bytes:
        """The message, with the host's wall time now and fresh random bytes."""
        self.sent = time.monotonic()
        self.attempts += 1
        return p.resumed_frame(time.time_ns(), os.getrandom(p.SEED_BYTES))

    def no_answer(self) -> ResumeFailed:
        return ResumeFailed(f"agent: no answer to the resume message within {self.timeout:g} s "
                            "(an agent older than vmboot-agent 2 does not know it)")


class _StdinStream:
    """A command's stdin on its way to the agent: bytes, or a file descriptor read as the
    agent's credit allows (at most :data:`~vmboot.agent.protocol.STDIN_WINDOW` bytes it has
    not acknowledged), then STDIN_END."""

    def __init__(self, data: bytes, fd: int | None) -> None:
        self.data = memoryview(data)
        self.fd = fd
        self.sent = 0
        self.in_flight = 0
        self.started = False
        self.ended = False
        self.stopped = False
        """The command was killed at its time limit: nothing more is sent."""

    @classmethod
    def of(cls, stdin: StdinSource) -> _StdinStream:
        if stdin is None or isinstance(stdin, bytes | bytearray | memoryview):
            return cls(bytes(stdin or b""), None)
        try:
            fd = stdin.fileno()
        except (OSError, AttributeError, io.UnsupportedOperation):
            return cls(stdin.read(), None)  # an in-memory file: all of it at once
        return cls(b"", fd)

    def _room(self) -> int:
        return min(p.DATA_MAX, p.STDIN_WINDOW - self.in_flight)

    def _active(self) -> bool:
        return self.started and not self.ended and not self.stopped

    def wants_read(self) -> bool:
        return self.fd is not None and self._active() and self._room() > 0

    def start(self, send: Callable[[bytes], None]) -> None:
        self.started = True
        self._push(send)

    def stop(self) -> None:
        self.stopped = True

    def taken(self, n: int, send: Callable[[bytes], None]) -> None:
        self.in_flight = max(0, self.in_flight - n)
        self._push(send)

    def _push(self, send: Callable[[bytes], None]) -> None:
        """Send what the window allows of in-memory stdin (a file waits for select)."""
        if self.fd is not None or not self._active():
            return
        while self.sent < len(self.data) and self._room() > 0:
            n = min(self._room(), len(self.data) - self.sent)
            send(p.frame(p.Frame.STDIN, bytes(self.data[self.sent:self.sent + n])))
            self.sent += n
            self.in_flight += n
        if self.sent == len(self.data):
            send(p.frame(p.Frame.STDIN_END))
            self.ended = True

    def forward(self, send: Callable[[bytes], None]) -> None:
        """The file is readable: send one chunk, or STDIN_END at its end."""
        assert self.fd is not None
        try:
            chunk = os.read(self.fd, self._room())
        except BlockingIOError:
            return
        except OSError:
            chunk = b""  # unreadable stdin ends as an empty one would
        if chunk:
            send(p.frame(p.Frame.STDIN, chunk))
            self.in_flight += len(chunk)
        else:
            send(p.frame(p.Frame.STDIN_END))
            self.ended = True
