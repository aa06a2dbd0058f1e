"""Ethernet frames over a connected stream socket, as QEMU's ``-netdev stream`` and passt's
socket mode carry them: each frame is a 4-byte big-endian length and the frame.

The socket is non-blocking. A Python socket with a timeout waits up to that timeout for
data before every ``recv`` (even one given ``MSG_DONTWAIT``), so the I/O thread that
drains the socket would stall, and every virtio device with it, each time the peer had
nothing more to send. Only :meth:`FrameStream.send` waits, for the peer to take the rest of
a frame it has begun, up to :attr:`FrameStream.send_timeout`.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections import deque
from collections.abc import Sequence

from vmboot.net.backend import Chunk, NetBackendDown

LENGTH = struct.Struct(">I")
MAX_FRAME = 65535 + 18
"""The largest frame accepted from the peer (a 64 KiB IP packet, Ethernet and VLAN headers)."""
READ_SIZE = 256 << 10
"""Bytes read from the socket at once (several frames)."""
SEND_TIMEOUT = 5.0
"""Seconds a frame may wait for the peer to take it before the peer is declared gone."""


class FrameStream:
    """Frames in and out of ``sock`` (connected; made non-blocking here). Errors raise
    :class:`NetBackendDown` with what happened; the caller names the peer."""

    def __init__(self, sock: socket.socket, send_timeout: float = SEND_TIMEOUT) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.send_timeout = send_timeout
        self._in = bytearray()
        self._frames: deque[bytes] = deque()

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def buffered(self) -> int:
        """Whole frames read from the socket and not returned yet."""
        return len(self._frames)

    def recv(self) -> bytes | None:
        """The next frame, or None when the peer has sent no whole frame yet."""
        while not self._frames:
            if not self._fill():
                return None
        return self._frames.popleft()

    def _fill(self) -> bool:
        """Read what the peer sent and split it into frames; False when nothing came."""
        try:
            data = self.sock.recv(READ_SIZE)
        except BlockingIOError:
            return False
        except OSError as e:
            raise NetBackendDown(f"the connection failed: {e.strerror}") from None
        if not data:
            raise NetBackendDown("the connection closed")
        buf = self._in
        buf += data
        at = 0
        while len(buf) - at >= LENGTH.size:
            (length,) = LENGTH.unpack_from(buf, at)
            if length > MAX_FRAME:
                raise NetBackendDown(f"a frame length {length} over {MAX_FRAME} bytes: the "
                                     "stream is out of step")
            if len(buf) - at - LENGTH.size < length:
                break
            start = at + LENGTH.size
            self._frames.append(bytes(buf[start:start + length]))
            at = start + length
        del buf[:at]
        return True

    def send(self, parts: Sequence[Chunk]) -> None:
        """Send one frame made of ``parts``; waits (up to :attr:`send_timeout`) only while
        the peer's socket buffer is full."""
        length = sum(len(p) for p in parts)
        data = memoryview(b"".join([LENGTH.pack(length), *parts]))
        deadline = time.monotonic() + self.send_timeout
        try:
            while data:
                try:
                    data = data[self.sock.send(data):]
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0 or not _writable(self.sock, left):
                        # half a frame leaves the stream out of step: the peer is gone
                        raise NetBackendDown(f"it took no frame for {self.send_timeout:g} s "
                                             "(its socket buffer stayed full)") from None
        except OSError as e:
            raise NetBackendDown(f"the connection failed: {e.strerror}") from None

    def close(self) -> None:
        self.sock.close()


def _writable(sock: socket.socket, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``sock`` to take more bytes."""
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(seconds * 1000))
