"""The console output path: capture what the guest prints, and stream it to the host.

:class:`ConsoleOutput` sits behind a UART's transmit register. It is called once per
byte, so it does no logging and allocates nothing per byte:

- ``data`` keeps the first ``capture_limit`` bytes the guest printed; the rest are
  counted in ``dropped`` (never silently lost: the count says how much is missing);
- ``sink`` (optional) receives the output in chunks: a chunk ends at a newline, when
  ``CHUNK_BYTES`` have accumulated, or when :meth:`flush` is called (the UART calls it
  when the guest's transmit burst ends, the machine at the end of a run).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import BinaryIO, TextIO

from vmboot.errors import BootConfigError

ConsoleSink = Callable[[bytes], object]
"""Receives console output, a chunk at a time."""
LineWatcher = Callable[[bytes], object]
"""Receives each complete console line (without its newline), e.g. to spot a kernel panic."""
MAX_WATCHED_LINE = 1024
"""A watched line longer than this is cut (the watcher sees its first bytes)."""

DEFAULT_CAPTURE_LIMIT = 16 << 20
"""Bytes of console output kept in memory by default (16 MiB)."""
CHUNK_BYTES = 4096
"""The sink is called at least every this many bytes, even without a newline."""
NEWLINE = 0x0A


class ConsoleOutput:
    """Captured console output (capped, with a count of dropped bytes) and an optional sink."""

    def __init__(self, sink: ConsoleSink | None = None,
                 capture_limit: int = DEFAULT_CAPTURE_LIMIT) -> None:
        if not isinstance(capture_limit, int) or capture_limit < 0:
            raise BootConfigError(
                f"console capture_limit: {capture_limit!r} is not a byte count (an integer >= 0)"
            )
        self.sink = sink
        self.capture_limit = capture_limit
        self.data = bytearray()
        self.dropped = 0
        self.total = 0
        self.first_byte_at: float | None = None
        """``time.monotonic()`` when the first byte arrived, or None."""
        self._pending = bytearray()
        self.line_watcher: LineWatcher | None = None
        """Called with each complete line when set (costs one append per byte)."""
        self._line = bytearray()

    def put(self, byte: int) -> None:
        """Take one byte from the guest (the hot path)."""
        if self.total == 0:
            self.first_byte_at = time.monotonic()
        self.total += 1
        if len(self.data) < self.capture_limit:
            self.data.append(byte)
        else:
            self.dropped += 1
        if self.sink is not None:
            pending = self._pending
            pending.append(byte)
            if byte == NEWLINE or len(pending) >= CHUNK_BYTES:
                self.sink(bytes(pending))
                pending.clear()
        if self.line_watcher is not None:
            line = self._line
            if byte == NEWLINE:
                self.line_watcher(bytes(line))
                line.clear()
            elif len(line) < MAX_WATCHED_LINE:
                line.append(byte)

    def flush(self) -> None:
        """Hand any partial line to the sink."""
        if self._pending and self.sink is not None:
            self.sink(bytes(self._pending))
            self._pending.clear()

    def text(self) -> str:
        """The captured output decoded as UTF-8 (undecodable bytes replaced)."""
        return self.data.decode("utf-8", "replace")


def stream_sink(stream: BinaryIO | TextIO) -> ConsoleSink:
    """A sink that writes chunks to a binary or text stream and flushes it after each chunk.

    A text stream with a binary ``buffer`` (``sys.stdout``) is written through that buffer,
    so the guest's bytes reach the terminal unchanged; other text streams get UTF-8 text.
    """
    if isinstance(stream, io.TextIOBase):
        raw = getattr(stream, "buffer", None)
        if raw is None:
            text = stream

            def write_text(chunk: bytes) -> None:
                text.write(chunk.decode("utf-8", "replace"))
                text.flush()

            return write_text
        stream.flush()
        binary: BinaryIO = raw
    else:
        binary = stream  # type: ignore[assignment]

    def write_binary(chunk: bytes) -> None:
        binary.write(chunk)
        binary.flush()

    return write_binary
