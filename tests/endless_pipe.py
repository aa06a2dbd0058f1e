"""A stdin like ``yes |``'s: a pipe kept full that never closes, for tests that check a
command ending without reading all of its input ends the run too."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import BinaryIO


@contextlib.contextmanager
def endless_pipe(line: bytes = b"y\n") -> Iterator[BinaryIO]:
    """The read end of a pipe filled with ``line`` until full; its write end stays open
    (so no end of file ever comes) until the block ends."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, line * 4096)
    try:
        with os.fdopen(read_end, "rb", buffering=0) as stdin:
            yield stdin
    finally:
        os.close(write_end)
