"""The agent's wire format: ``u32 length | u8 type | payload`` frames, little endian.

The length counts the type byte and the payload. ``vmboot-agent.c`` is the other half; the
type letters and layouts below are the ones it uses.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from vmboot.errors import VmbootError

AGENT_VERSION = "vmboot-agent 5"
"""The greeting of the agent built from this tree's ``vmboot-agent.c`` (its AGENT_VERSION):
3 gives commands the output ports as stdout and stderr; 4 says in its resume answer how long
it held the message and what came with it (:class:`ResumedAnswer`); 5 parks in its mailbox
(:data:`MAILBOX_HEAD`) when asked."""
LENGTH = struct.Struct("<I")
U32 = struct.Struct("<I")
U32_PAIR = struct.Struct("<II")
U64 = struct.Struct("<Q")
FRAME_MAX = 64 * 1024
"""The largest frame either side sends (the agent's receive buffer)."""
DATA_MAX = FRAME_MAX - 1
"""The most stdin bytes one frame carries."""
STDIN_WINDOW = 128 * 1024
"""Stdin bytes the host may send before the agent acknowledges them (the agent buffers 256 KiB)."""
ARGS_MAX = 256
"""At most this many arguments, and this many environment entries, per command."""
STDOUT_PORT_SUFFIX = ".stdout"
STDERR_PORT_SUFFIX = ".stderr"
"""The output ports of the agent whose control port is NAME are NAME + these suffixes: the
agent gives every command those ports as its stdout and stderr."""
STARTED = struct.Struct("<II")
"""STARTED: the command's pid, and how its output travels (:class:`OutputPath`)."""


class OutputPath(enum.IntEnum):
    """How a command's stdout and stderr reach the host (the second field of STARTED)."""

    PIPES = 0
    """Through pipes to the agent, which sends STDOUT and STDERR frames (vsock, an fd)."""
    PORTS = 1
    """Straight to the virtio-console output ports (the host frames what they carry)."""


def output_port_names(control: str) -> tuple[str, str]:
    """The stdout and stderr ports of the agent whose control port is named ``control``."""
    return control + STDOUT_PORT_SUFFIX, control + STDERR_PORT_SUFFIX


class AgentProtocolError(VmbootError):
    """The agent sent something that is not a frame of this protocol."""


class Frame(bytes, enum.Enum):
    # host -> agent
    EXEC = b"E"
    STDIN = b"I"
    STDIN_END = b"i"
    SIGNAL = b"K"
    RESUMED = b"T"
    """The guest was restored from a snapshot: wall time and random bytes (see resumed_frame)."""
    PARK = b"W"
    """Wait for the next frames in the mailbox (see :data:`MAILBOX_HEAD`) for at most u64 TSC
    cycles: sent alone, to an agent running no command, right before the guest is saved."""
    # agent -> host
    READY = b"R"
    STARTED = b"P"
    FAILED = b"F"
    STDOUT = b"O"
    STDERR = b"e"
    STDIN_TAKEN = b"A"
    EXITED = b"X"
    RESUMED_DONE = b"t"
    PARKED = b"w"


@dataclass(frozen=True, slots=True)
class Message:
    kind: Frame
    payload: bytes


def frame(kind: Frame, payload: bytes = b"") -> bytes:
    if len(payload) + 1 > FRAME_MAX:
        raise AgentProtocolError(f"agent frame {kind.name}: {len(payload)} payload bytes, more than "
                                 f"{FRAME_MAX - 1}")
    return LENGTH.pack(len(payload) + 1) + kind.value + payload


def exec_frame(argv: Sequence[str], env: Mapping[str, str], cwd: str = "") -> bytes:
    """EXEC: argc, envc, cwd, then each argument and each ``NAME=value``, NUL-terminated."""
    if not argv:
        raise AgentProtocolError("command: argv is empty; name the program to run")
    if len(argv) > ARGS_MAX or len(env) > ARGS_MAX:
        raise AgentProtocolError(f"command: {len(argv)} arguments and {len(env)} environment entries; "
                                 f"at most {ARGS_MAX} of each")
    fields = [cwd, *argv, *(f"{k}={v}" for k, v in env.items())]
    for text in fields:
        if "\0" in text:
            raise AgentProtocolError(f"command: {text!r} contains a NUL byte, which cannot be passed")
    body = U32_PAIR.pack(len(argv), len(env)) + b"".join(f.encode() + b"\0" for f in fields)
    return frame(Frame.EXEC, body)


def stdin_frames(data: bytes) -> Iterator[bytes]:
    return data_frames(Frame.STDIN, data)


RESUMED_HEAD = struct.Struct("<QI")
"""Seconds and nanoseconds of the host's wall clock (CLOCK_REALTIME)."""
RESUMED_DONE = struct.Struct("<III")
"""The errno of RNDADDENTROPY, of RNDRESEEDCRNG and of clock_settime (0: done); the
agent's version text follows, then (vmboot-agent 4) a NUL and :data:`RESUMED_HELD`."""
RESUMED_HELD = struct.Struct("<QI")
"""The guest's time-stamp counter cycles from the agent's read that brought the resume
message to its answer (a restored guest's clocksource may count in jiffies; the TSC's rate
is the VM's, ``KVM_GET_TSC_KHZ``), and the bytes that read brought behind the message."""
SEED_BYTES = 64
"""Random bytes a restored guest is given (512 bits credited to its input pool)."""
SEED_MAX = 512
"""The most random bytes the agent takes in one RESUMED frame."""


def resumed_frame(wall_ns: int, seed: bytes) -> bytes:
    """RESUMED: the host's wall time in nanoseconds since the epoch and fresh random bytes."""
    if not 0 < len(seed) <= SEED_MAX:
        raise AgentProtocolError(f"resumed: {len(seed)} random bytes; give 1..{SEED_MAX}")
    if wall_ns < 0:
        raise AgentProtocolError(f"resumed: wall time {wall_ns} ns is before the epoch")
    seconds, nanoseconds = divmod(wall_ns, 1_000_000_000)
    return frame(Frame.RESUMED, RESUMED_HEAD.pack(seconds, nanoseconds) + seed)


@dataclass(frozen=True, slots=True)
class ResumedAnswer:
    """The agent's answer to a resume message."""

    errnos: tuple[int, int, int]
    """Of RNDADDENTROPY, RNDRESEEDCRNG and clock_settime (0: done)."""
    version: str
    held_cycles: int | None
    """TSC cycles from the agent's read that brought the message to this answer (None: an
    agent older than vmboot-agent 4)."""
    behind: int | None
    """Bytes that read brought behind the message (what the host sent with it)."""


def resumed_answer(payload: bytes) -> ResumedAnswer:
    """RESUMED_DONE's payload, parsed; :class:`AgentProtocolError` when it is too short."""
    if len(payload) < RESUMED_DONE.size:
        raise AgentProtocolError(f"agent: resume answer of {len(payload)} bytes, "
                                 f"expected at least {RESUMED_DONE.size}")
    errnos: tuple[int, int, int] = RESUMED_DONE.unpack_from(payload)
    version, nul, held = payload[RESUMED_DONE.size:].partition(b"\0")
    held_cycles = behind = None
    if nul and len(held) >= RESUMED_HELD.size:
        held_cycles, behind = RESUMED_HELD.unpack_from(held)
    return ResumedAnswer(errnos, version.decode(errors="replace"), held_cycles, behind)


PARKED_ANSWER = struct.Struct("<QI")
"""PARKED: the guest-physical address of the agent's mailbox page (0: it cannot say where,
e.g. without CAP_SYS_ADMIN for /proc/self/pagemap) and the errno of why not."""
MAILBOX_SIZE = 4096
"""The mailbox is one page of the agent's memory."""
MAILBOX_HEAD = struct.Struct("<II")
"""The mailbox's state (:data:`MAILBOX_PARKED` while the agent may still look there: only
then may the host write) and the length of the frames after it, which the host writes
while the guest is stopped, before it runs again after a restore. The agent takes them as
if it had read them from its channel. A state the host sets to 0 lets the agent go."""
MAILBOX_PARKED = 1
MAILBOX_DATA_MAX = MAILBOX_SIZE - MAILBOX_HEAD.size
"""The most frame bytes the mailbox holds."""


PARKING_VERSION = 5
"""The first agent version that parks in its mailbox (older ones ignore PARK)."""


def park_frame(wait_cycles: int) -> bytes:
    """PARK: wait in the mailbox for at most ``wait_cycles`` cycles of the guest's TSC."""
    if wait_cycles < 0:
        raise AgentProtocolError(f"park: {wait_cycles} cycles to wait; give 0 or more")
    return frame(Frame.PARK, U64.pack(wait_cycles))


def agent_parks(version: str | None) -> bool:
    """Whether the agent that greeted with ``version`` ("vmboot-agent N") answers PARK."""
    name, _, number = (version or "").rpartition(" ")
    return name == "vmboot-agent" and number.isdigit() and int(number) >= PARKING_VERSION


def parked_answer(payload: bytes) -> tuple[int, int]:
    """PARKED's payload: the mailbox's guest-physical address (0: none) and the errno."""
    if len(payload) < PARKED_ANSWER.size:
        raise AgentProtocolError(f"agent: park answer of {len(payload)} bytes, expected "
                                 f"{PARKED_ANSWER.size}")
    address, err = PARKED_ANSWER.unpack_from(payload)
    if address % MAILBOX_SIZE:
        raise AgentProtocolError(f"agent: mailbox address {address:#x} is not page-aligned")
    return address, err


def signal_frame(signo: int) -> bytes:
    return frame(Frame.SIGNAL, U32.pack(signo))


class FrameCutter:
    """Passes a byte stream on in whole frames only (another sender's frames can then go
    between them). Bytes that cannot be a frame are passed on as they come, for the
    reader at the other end to refuse."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._broken = False

    def feed(self, data: bytes) -> bytes:
        """The whole frames ``data`` completes (b"" while a frame is still partial)."""
        if self._broken:
            return data
        self._buffer += data
        end = 0
        while len(self._buffer) - end >= LENGTH.size:
            (length,) = LENGTH.unpack_from(self._buffer, end)
            if not 1 <= length <= FRAME_MAX:
                self._broken = True
                out = bytes(self._buffer)
                self._buffer.clear()
                return out
            if len(self._buffer) - end < LENGTH.size + length:
                break
            end += LENGTH.size + length
        out = bytes(self._buffer[:end])
        del self._buffer[:end]
        return out


def data_frames(kind: Frame, data: bytes) -> Iterator[bytes]:
    """``data`` as frames of ``kind`` (STDOUT, STDERR, STDIN) of at most :data:`DATA_MAX` bytes."""
    for start in range(0, len(data), DATA_MAX):
        yield frame(kind, data[start:start + DATA_MAX])


class FrameReader:
    """Cuts a byte stream from the agent into :class:`Message` objects."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[Message]:
        self._buffer += data
        while len(self._buffer) >= LENGTH.size:
            (length,) = LENGTH.unpack_from(self._buffer)
            if not 1 <= length <= FRAME_MAX:
                raise AgentProtocolError(f"agent: frame length {length} is outside 1..{FRAME_MAX} "
                                         f"(not an agent on the other end, or the stream is corrupt)")
            if len(self._buffer) < LENGTH.size + length:
                return
            kind_byte = bytes(self._buffer[LENGTH.size:LENGTH.size + 1])
            payload = bytes(self._buffer[LENGTH.size + 1:LENGTH.size + length])
            del self._buffer[:LENGTH.size + length]
            try:
                kind = Frame(kind_byte)
            except ValueError:
                raise AgentProtocolError(f"agent: unknown frame type {kind_byte!r}") from None
            yield Message(kind, payload)
