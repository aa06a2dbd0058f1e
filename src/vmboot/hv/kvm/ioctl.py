"""The one way vmboot issues a KVM ioctl, on the system, a VM or a vCPU fd.

An ioctl that fails raises :class:`~vmboot.errors.KvmIoctlError` (a
:class:`~vmboot.errors.HypervisorError`) naming the object (``who``: ``/dev/kvm``,
``KVM VM``, ``KVM vCPU 0``), the request (``what``) and the errno, which it also carries
for callers that expect a particular one. :func:`kvm_run` is the exception: the run loop
reads the ``OSError`` of an interrupted or refused ``KVM_RUN`` itself, on its hot path.
"""

from __future__ import annotations

import ctypes
import fcntl
import os

from vmboot.errors import KvmIoctlError
from vmboot.hv.kvm import abi

IoctlArg = int | bytes | ctypes.Structure | ctypes.Array[ctypes.c_char]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong)
_libc.ioctl.restype = ctypes.c_int


def _failed(who: str, what: str, err: int) -> KvmIoctlError:
    return KvmIoctlError(f"{who}: {what} failed: {os.strerror(err)} (errno {err})", err)


def kvm_ioctl(fd: int, request: int, arg: IoctlArg, *, who: str, what: str) -> int | bytes:
    """``ioctl(fd, request, arg)``: an int result, or the bytes given back for a bytes ``arg``."""
    try:
        return fcntl.ioctl(fd, request, arg)
    except OSError as e:
        raise _failed(who, what, e.errno or 0) from None


def ioctl_ulong(fd: int, request: int, value: int, *, who: str, what: str) -> None:
    """An ioctl whose argument is an unsigned long by value (fcntl.ioctl only passes a C int)."""
    if _libc.ioctl(fd, request, value) < 0:
        raise _failed(who, what, ctypes.get_errno())


def kvm_run(fd: int) -> None:
    """KVM_RUN on vCPU ``fd``: returns at the next exit; an ``OSError`` (``InterruptedError``
    for EINTR) passes through unchanged for the run loop to read."""
    fcntl.ioctl(fd, abi.KVM_RUN, 0)
