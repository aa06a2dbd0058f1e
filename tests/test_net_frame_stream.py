"""The stream framing passt speaks (4-byte big-endian length + frame), on a socket pair:
frames split across reads and packed into one, an empty socket that does not block the
reader, a peer that stops reading, one that closes, and a length out of step."""

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
    stream = FrameStream(ours, send_timeout=0.2)
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


def test_a_peer_that_stops_reading_is_declared_gone(
        pair: tuple[FrameStream, socket.socket]) -> None:
    stream, _peer = pair
    with pytest.raises(NetBackendDown, match="socket buffer stayed full"):
        for _ in range(100_000):  # fills both socket buffers, then waits send_timeout
            stream.send([bytes(MAX_FRAME - 18)])


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
