"""The user's terminal as the guest's serial input, restored whatever happens.

While a guest runs, keys typed on a terminal go to the console UART one at a time: the
terminal's line editing and echo are turned off (the guest echoes), and Enter sends a
carriage return as a serial terminal would. Ctrl-C still interrupts vmboot itself (the
terminal keeps ISIG), which then restores the terminal and exits with status 130.

That holds even when vmboot was started with SIGINT ignored (a shell script's background
job inherits SIG_IGN, and Python keeps it): a process that has taken over the terminal is
its foreground job, so while the context is open Ctrl-C raises KeyboardInterrupt as usual,
as QEMU's own SIGINT handler does; the inherited disposition comes back afterwards.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import termios
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

POLL_SECONDS = 0.1
"""How often the reader thread checks whether it should stop."""
READ_CHUNK = 1024


class TerminalInput:
    """Forward ``fd``'s input to ``push`` while the context is open (no-op if not a TTY)."""

    def __init__(self, push: Callable[[bytes], object], fd: int | None = None) -> None:
        self.push = push
        self.fd = _stdin_fd() if fd is None else fd
        self._saved: list[Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ignored_sigint = False

    @property
    def active(self) -> bool:
        return self._saved is not None

    def __enter__(self) -> Self:
        try:
            if self.fd < 0 or not os.isatty(self.fd):
                return self
            saved = termios.tcgetattr(self.fd)
        except (OSError, termios.error):
            return self
        raw: list[Any] = [list(x) if isinstance(x, list) else x for x in saved]
        raw[0] &= ~(termios.ICRNL | termios.INLCR | termios.IXON)  # iflag: send CR as typed
        raw[3] &= ~(termios.ICANON | termios.ECHO)                  # lflag: keys one at a time
        cc: list[Any] = raw[6]
        cc[termios.VMIN] = 1
        cc[termios.VTIME] = 0
        termios.tcsetattr(self.fd, termios.TCSANOW, raw)
        self._saved = saved
        self._ignored_sigint = _take_back_sigint()
        self._thread = threading.Thread(target=self._pump, name="vmboot-terminal", daemon=True)
        self._thread.start()
        return self

    def _pump(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.fd], [], [], POLL_SECONDS)
                if not ready:
                    continue
                data = os.read(self.fd, READ_CHUNK)
            except OSError:
                return
            if not data:
                return
            self.push(data)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * POLL_SECONDS + 1)
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None
        if self._ignored_sigint:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            self._ignored_sigint = False


def _take_back_sigint() -> bool:
    """Make Ctrl-C raise KeyboardInterrupt if SIGINT was inherited as ignored; say if it was.

    Only the main thread may set signal handlers; elsewhere the disposition is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        return False
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return True


def _stdin_fd() -> int:
    """Standard input's descriptor, or -1 when it has none (e.g. replaced by a test runner)."""
    try:
        return sys.stdin.fileno()
    except (OSError, ValueError, AttributeError):
        return -1
