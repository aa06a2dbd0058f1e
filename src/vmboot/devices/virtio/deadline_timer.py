"""A one-shot timer as a file descriptor (Linux ``timerfd``), for the I/O thread's loop.

Devices that must act when nothing else happens (a request the guest never answers) arm
one of these and hand its fd to :class:`~vmboot.devices.virtio.io_thread.IoThread`, which
calls them back when it becomes readable, like any other fd it owns. Python 3.11's ``os``
has no ``timerfd_create`` (3.13 does), so the two system calls go through ctypes.
"""

from __future__ import annotations

import ctypes
import math
import os

CLOCK_MONOTONIC = 1
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC
EXPIRATIONS_BYTES = 8
"""A read returns the number of expirations since the last read, a u64."""


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.timerfd_create.restype = ctypes.c_int
_libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec),
                                  ctypes.POINTER(_Itimerspec)]
_libc.timerfd_settime.restype = ctypes.c_int


def _check(result: int, call: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{call}: {os.strerror(err)}")
    return result


class DeadlineTimer:
    """A non-blocking, close-on-exec timerfd on the monotonic clock."""

    def __init__(self) -> None:
        self.fd = _check(_libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC),
                         "timerfd_create")

    def arm(self, seconds: float) -> None:
        """Fire once, ``seconds`` from now (at least one nanosecond: 0 would disarm)."""
        whole = math.floor(max(seconds, 0.0))
        nanos = max(int((max(seconds, 0.0) - whole) * 1e9), 0 if whole else 1)
        self._set(whole, nanos)

    def disarm(self) -> None:
        self._set(0, 0)

    def _set(self, sec: int, nsec: int) -> None:
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(sec, nsec))
        _check(_libc.timerfd_settime(self.fd, 0, ctypes.byref(spec), None), "timerfd_settime")

    def drain(self) -> int:
        """Expirations since the last call (0: it had not fired); resets readability."""
        try:
            return int.from_bytes(os.read(self.fd, EXPIRATIONS_BYTES), "little")
        except BlockingIOError:
            return 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
