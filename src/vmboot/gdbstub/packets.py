"""GDB remote serial protocol framing: ``$payload#cc`` packets, acks and the interrupt byte.

Reference: gdb's manual, "Remote Protocol" (Overview, Packet Acknowledgment, Binary Data).
A :class:`PacketReader` is fed raw bytes from the socket and yields what they contain, so the
session never sees partial packets, checksum errors are answered with ``-`` (the debugger
retransmits), and garbage between packets is skipped without ending the session.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

START = 0x24  # '$'
END = 0x23  # '#'
ESCAPE = 0x7D  # '}'
ESCAPE_XOR = 0x20
INTERRUPT = 0x03  # Ctrl-C sent by gdb as a bare byte
ACK = b"+"
NACK = b"-"
MAX_PACKET = 0x4000
"""The largest packet the stub accepts (announced to gdb as ``PacketSize``)."""

_ESCAPED = frozenset({START, END, ESCAPE, 0x2A})  # '$', '#', '}', '*' (run-length marker)


class Event(enum.Enum):
    PACKET = "packet"
    INTERRUPT = "interrupt"
    BAD_CHECKSUM = "bad-checksum"
    ACK = "ack"
    NACK = "nack"


@dataclass(frozen=True, slots=True)
class Received:
    event: Event
    payload: bytes = b""


def checksum(payload: bytes) -> int:
    """The modulo-256 sum of the payload bytes."""
    return sum(payload) & 0xFF


def frame(payload: bytes) -> bytes:
    """``$payload#cc`` (the payload must already be escaped where it carries binary data)."""
    return b"$" + payload + b"#" + b"%02x" % checksum(payload)


def escape_binary(data: bytes) -> bytes:
    """Escape ``$``, ``#``, ``}`` and ``*`` for a binary payload (``}`` then the byte ^ 0x20)."""
    out = bytearray()
    for byte in data:
        if byte in _ESCAPED:
            out += bytes((ESCAPE, byte ^ ESCAPE_XOR))
        else:
            out.append(byte)
    return bytes(out)


def unescape_binary(data: bytes) -> bytes:
    """Undo :func:`escape_binary`; a trailing lone ``}`` is dropped."""
    out = bytearray()
    it = iter(data)
    for byte in it:
        if byte == ESCAPE:
            nxt = next(it, None)
            if nxt is None:
                break
            out.append(nxt ^ ESCAPE_XOR)
        else:
            out.append(byte)
    return bytes(out)


def expand_run_length(payload: bytes) -> bytes:
    """Expand gdb's run-length encoding (``X*n``: repeat X ``ord(n) - 29`` more times)."""
    if 0x2A not in payload:
        return payload
    out = bytearray()
    i = 0
    while i < len(payload):
        byte = payload[i]
        if byte == 0x2A and out and i + 1 < len(payload):
            out += bytes((out[-1],)) * max(0, payload[i + 1] - 29)
            i += 2
            continue
        out.append(byte)
        i += 1
    return bytes(out)


class PacketReader:
    """Turns a byte stream into :class:`Received` events.

    Bytes outside a packet other than ``+``, ``-`` and Ctrl-C are ignored; a packet longer
    than :data:`MAX_PACKET` is dropped (answered as a bad checksum, so gdb retransmits or gives
    up) instead of growing without limit.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._in_packet = False

    def feed(self, data: bytes) -> Iterator[Received]:
        for byte in data:
            if not self._in_packet:
                if byte == START:
                    self._in_packet = True
                    self._buffer.clear()
                elif byte == INTERRUPT:
                    yield Received(Event.INTERRUPT)
                elif byte == ACK[0]:
                    yield Received(Event.ACK)
                elif byte == NACK[0]:
                    yield Received(Event.NACK)
                continue
            self._buffer.append(byte)
            if len(self._buffer) > MAX_PACKET + 3:
                self._in_packet = False
                self._buffer.clear()
                yield Received(Event.BAD_CHECKSUM)
                continue
            # A packet ends two bytes after its '#'. '#' inside binary data is always escaped.
            if len(self._buffer) >= 3 and self._buffer[-3] == END:
                body = bytes(self._buffer[:-3])
                digits = bytes(self._buffer[-2:])
                self._in_packet = False
                self._buffer.clear()
                try:
                    good = int(digits, 16) == checksum(body)
                except ValueError:
                    good = False
                yield Received(Event.PACKET, body) if good else Received(Event.BAD_CHECKSUM)
