"""The one way vmboot issues a KVM ioctl, on the system, a VM or a vCPU fd.

An ioctl that fails raises :class:`~vmboot.errors.HypervisorError` naming the object
(``who``: ``/dev/kvm``, ``KVM VM``, ``KVM vCPU 0``), the request (``what``) and the errno.
"""

from __future__ import annotations

import ctypes
import fcntl
import os

from vmboot.errors import HypervisorError

IoctlArg = int | bytes | ctypes.Structure | ctypes.Array[ctypes.c_char]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong)
_libc.ioctl.restype = ctypes.c_int


def kvm_ioctl(fd: int, request: int, arg: IoctlArg, *, who: str, what: str) -> int | bytes:
    """``ioctl(fd, request, arg)``: an int result, or the bytes given back for a bytes ``arg``."""
    try:
        return fcntl.ioctl(fd, request, arg)
    except OSError as e:
        raise HypervisorError(f"{who}: {what} failed: {e.strerror} (errno {e.errno})") from None


def ioctl_ulong(fd: int, request: int, value: int) -> None:
    """An ioctl whose argument is an unsigned long by value (fcntl.ioctl only passes a C int)."""
    if _libc.ioctl(fd, request, value) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
