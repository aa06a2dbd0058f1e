"""The stream framing passt speaks (4-byte big-endian length + frame), on a socket pair:
frames split across reads and packed into one, an empty socket that does not block the
reader, a peer that stops reading (the rest of a frame is kept, nothing waits), one that
closes, and a length out of step."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from vmboot.net.backend import NetBackendDown
from vmboot.net.frame_stream import MAX_FRAME, FrameStream


@pytest.fixture
def pair() -> Iterator[tuple[FrameStream, socket.socket]]:
    ours, peer = socket.socketpair()
    stream = FrameStream(ours)
    yield stream, peer
    stream.close()
    peer.close()


def _framed(frame: bytes) -> bytes:
    return struct.pack(">I", len(frame)) + frame


def test_an_empty_socket_gives_none_without_waiting(pair: tuple[FrameStream, socket.socket]) -> None:
    stream, _peer = pair
    # A socket with a timeout would wait that long inside recv(): the I/O thread stalled
    # (passt's frames were answered seconds late). The stream's socket never waits.
    assert stream.sock.gettimeout() == 0.0
    assert stream.recv() is None


def test_frames_packed_together_and_split_across_reads(
        pair: tuple[FrameStream, socket.socket]) -> None:
    stream, peer = pair
    a, b, c = b"A" * 60, b"B" * 1514, b"C" * 90
    data = _framed(a) + _framed(b) + _framed(c)
    peer.sendall(data[:70])  # all of a, the start of b's length
    assert stream.recv() == a
    assert stream.recv() is None
    peer.sendall(data[70:])
    assert [stream.recv(), stream.recv(), stream.recv()] == [b, c, None]


def test_send_frames_each_frame_with_its_length(pair: tuple[FrameStream, socket.socket]) -> None:
    stream, peer = pair
    stream.send([b"head", memoryview(b"-payload")])
    assert peer.recv(100) == _framed(b"head-payload")


def _fill_until_kept(stream: FrameStream, frame: bytes) -> int:
    """Send ``frame`` until the peer's buffer is full; the number of frames sent whole."""
    for whole in range(100_000):
        if not stream.send([frame[:10], memoryview(frame)[10:]]):
            return whole
    raise AssertionError("the socket never filled")


class _Reader:
    """The peer's side: whole frames out of what it reads, the partial rest kept."""

    def __init__(self, peer: socket.socket) -> None:
        self.peer = peer
        self.data = bytearray()
        self.frames: list[bytes] = []

    def read(self) -> None:
        self.data += self.peer.recv(1 << 20)
        while len(self.data) >= 4 and len(self.data) - 4 >= struct.unpack_from(">I", self.data)[0]:
            n = struct.unpack_from(">I", self.data)[0]
            self.frames.append(bytes(self.data[4:4 + n]))
            del self.data[:4 + n]


def test_a_peer_that_stops_reading_gets_the_rest_of_a_frame_later_and_nothing_waits(
        pair: tuple[FrameStream, socket.socket]) -> None:
    stream, peer = pair
    peer.setblocking(False)
    frame = bytes(range(256)) * 40
    whole = _fill_until_kept(stream, frame)
    assert 0 < stream.unsent <= len(frame) + 4  # the rest of one frame, copied
    assert not stream.flush()  # still full: says so at once
    with pytest.raises(NetBackendDown, match="held back"):
        stream.send([frame])  # a frame behind the kept one would cut it
    peer.setblocking(True)
    reader = _Reader(peer)
    while not stream.flush():  # the peer reads: the rest goes out
        reader.read()
    while len(reader.frames) < whole + 1:
        reader.read()
    assert reader.frames == [frame] * (whole + 1) and not reader.data  # whole, in step
    assert stream.unsent == 0 and stream.send([b"next"])
    reader.read()
    assert reader.frames[-1] == b"next"


def test_a_closed_peer_and_a_length_out_of_step_raise(
        pair: tuple[FrameStream, socket.socket]) -> None:
    stream, peer = pair
    peer.sendall(struct.pack(">I", MAX_FRAME + 1))
    with pytest.raises(NetBackendDown, match="out of step"):
        stream.recv()
    ours, other = socket.socketpair()
    closed = FrameStream(ours)
    other.close()
    with pytest.raises(NetBackendDown, match="connection closed"):
        closed.recv()
    closed.close()


def test_a_frame_in_more_parts_than_sendmsg_takes_goes_out_whole(
        pair: tuple[FrameStream, socket.socket]) -> None:
    stream, peer = pair
    parts = [bytes([i % 256]) for i in range(2000)]  # an indirect chain of 2000 1-byte buffers
    assert stream.send(parts)
    reader = _Reader(peer)
    while not reader.frames:
        reader.read()
    assert reader.frames == [b"".join(parts)]
