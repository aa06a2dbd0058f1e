"""Ethernet frames over a connected stream socket, as QEMU's ``-netdev stream`` and passt's
socket mode carry them: each frame is a 4-byte big-endian length and the frame.

The socket is non-blocking and nothing here ever waits: the I/O thread that serves it
serves every other virtio device too. A Python socket with a timeout would wait inside
every ``recv`` (even one given ``MSG_DONTWAIT``) each time the peer had nothing more to send.

Reading: one ``recv_into`` fills a buffer allocated once with as many frames as the peer
sent (up to :data:`READ_SIZE` bytes); frames are cut from it one by one. A read that
did not fill the buffer emptied the socket, so once its frames are taken :meth:`recv`
answers None without another system call (the fd's readiness brings the caller back).

Writing: the length and the frame's parts go out in one ``sendmsg``. When the peer's
buffer is full, the part of the frame not taken is copied and kept (a frame is never cut:
that would put the stream out of step); :meth:`FrameStream.send` says so, and the caller
takes no more frames until :meth:`FrameStream.flush` has sent the rest, waiting for the
socket to become writable (backpressure to the guest) rather than blocking.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence

from vmboot.net.backend import Chunk, NetBackendDown, few_parts

LENGTH = struct.Struct(">I")
MAX_FRAME = 65535 + 18
"""The largest frame accepted from the peer (a 64 KiB IP packet, Ethernet and VLAN headers)."""
READ_SIZE = 256 << 10
"""Bytes read from the socket at once (several frames)."""


class FrameStream:
    """Frames in and out of ``sock`` (connected; made non-blocking here). Errors raise
    :class:`NetBackendDown` with what happened; the caller names the peer."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._in = bytearray(READ_SIZE)
        self._in_view = memoryview(self._in)
        self._start = 0
        """Where the first frame not returned yet begins in :attr:`_in`."""
        self._end = 0
        """Where the bytes read end in :attr:`_in`."""
        self._emptied = False
        """The last read left the socket empty: no read until the next call after a None."""
        self._out = bytearray()
        """The part of a frame the peer's full buffer did not take yet."""

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def buffered(self) -> int:
        """Bytes read from the socket and not returned as frames yet."""
        return self._end - self._start

    @property
    def unsent(self) -> int:
        """Bytes of a frame held back by the peer's full buffer (0: the stream takes frames)."""
        return len(self._out)

    def recv(self) -> bytes | None:
        """The next frame, or None when the peer has sent no whole frame yet."""
        while True:
            frame = self._next_buffered()
            if frame is not None:
                return frame
            if self._emptied:
                self._emptied = False
                return None
            if not self._fill():
                return None

    def _next_buffered(self) -> bytes | None:
        start, end = self._start, self._end
        if end - start < LENGTH.size:
            return None
        (length,) = LENGTH.unpack_from(self._in, start)
        if length > MAX_FRAME:
            raise NetBackendDown(f"a frame length {length} over {MAX_FRAME} bytes: the "
                                 "stream is out of step")
        begin = start + LENGTH.size
        if end - begin < length:
            return None
        self._start = begin + length
        return bytes(self._in_view[begin:begin + length])

    def _fill(self) -> bool:
        """Read what the peer sent after what is buffered; False when nothing came."""
        if self._start:  # move a partial frame to the front (memoryview copies overlap safely)
            left = self._end - self._start
            self._in_view[:left] = self._in_view[self._start:self._end]
            self._start, self._end = 0, left
        space = READ_SIZE - self._end
        try:
            n = self.sock.recv_into(self._in_view[self._end:], space)
        except BlockingIOError:
            return False
        except OSError as e:
            raise NetBackendDown(f"the connection failed: {e.strerror}") from None
        if not n:
            raise NetBackendDown("the connection closed")
        self._end += n
        self._emptied = n < space
        return True

    def send(self, parts: Sequence[Chunk]) -> bool:
        """Send one frame made of ``parts``: True when the peer took all of it, False when
        its buffer was full and the rest is kept for :meth:`flush` (call nothing else
        before that returns True)."""
        if self._out:
            raise NetBackendDown("a frame was sent while the previous one was still held back "
                                 "(flush() first)")
        length = sum(len(p) for p in parts)
        total = LENGTH.size + length
        try:
            sent = self.sock.sendmsg([LENGTH.pack(length), *few_parts(parts)])
        except BlockingIOError:
            sent = 0
        except OSError as e:
            raise NetBackendDown(f"the connection failed: {e.strerror}") from None
        if sent == total:
            return True
        self._out = _tail([LENGTH.pack(length), *parts], sent)
        return False

    def flush(self) -> bool:
        """Send what :meth:`send` held back; True when nothing is left."""
        while self._out:
            try:
                sent = self.sock.send(self._out)
            except BlockingIOError:
                return False
            except OSError as e:
                raise NetBackendDown(f"the connection failed: {e.strerror}") from None
            del self._out[:sent]
        return True

    def close(self) -> None:
        self.sock.close()


def _tail(parts: Sequence[Chunk], skip: int) -> bytearray:
    """A copy of ``parts`` joined, without their first ``skip`` bytes."""
    out = bytearray()
    for p in parts:
        if skip >= len(p):
            skip -= len(p)
            continue
        out += memoryview(p)[skip:]
        skip = 0
    return out
