"""A UNIX socket path a device listens on, and the leftover of an earlier run at that path.

A vmboot that was killed (SIGKILL, a crash) cannot remove the socket files it listened on.
The next run finds a socket file there that nobody listens on any more: connecting to it
fails with ``ECONNREFUSED``. Such a stale socket is removed and the path reused, as
Firecracker and QEMU users do by hand. A socket that accepts a connection belongs to a
running program (another vmboot, a QEMU, a virtiofsd): it is never touched, and the path
is refused with a message that says so. Anything else at the path (a file, a directory)
is refused too.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from enum import Enum

from vmboot.errors import BootConfigError

PROBE_TIMEOUT = 1.0
"""Seconds a connection to an existing socket file may take to tell whether it is live."""
SUN_PATH_MAX = 107
"""The longest path a UNIX socket can be bound at: ``sun_path`` holds 108 bytes, the last a
NUL."""


class PathState(Enum):
    FREE = "free"
    """Nothing at the path."""
    STALE = "stale"
    """A socket file nobody listens on: an earlier run's leftover, safe to remove."""
    LIVE = "live"
    """A socket some program listens on."""
    NOT_A_SOCKET = "not-a-socket"
    FORBIDDEN = "forbidden"
    """A socket this user may not connect to: whether it is live cannot be told."""


def probe(path: str) -> PathState:
    """What is at ``path`` (never changes anything)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return PathState.FREE
    if not stat.S_ISSOCK(mode):
        return PathState.NOT_A_SOCKET
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(PROBE_TIMEOUT)
    try:
        sock.connect(path)
    except ConnectionRefusedError:
        return PathState.STALE
    except FileNotFoundError:
        return PathState.FREE  # removed since the lstat
    except PermissionError:
        return PathState.FORBIDDEN
    except OSError:
        return PathState.LIVE  # EAGAIN, a timeout: a listener whose backlog is full
    finally:
        sock.close()
    return PathState.LIVE


def check_socket_path(path: str, field: str) -> PathState:
    """Raise :class:`BootConfigError` (naming ``field``) unless ``path`` can be listened on:
    it is free or holds a stale socket, and is short enough. Nothing is removed here."""
    size = len(os.fsencode(path))
    if size > SUN_PATH_MAX:
        raise BootConfigError(f"{field}: {path!r} is {size} bytes long, more than the "
                              f"{SUN_PATH_MAX} a UNIX socket path may have; choose a shorter "
                              "path (a socket vmboot places in the temporary directory: set "
                              "TMPDIR to a shorter one)")
    state = probe(path)
    if state is PathState.LIVE:
        raise BootConfigError(f"{field}: {path!r} is a socket another program listens on "
                              "(a running vmboot, QEMU or virtiofsd?); stop it or choose "
                              "another path")
    if state is PathState.FORBIDDEN:
        raise BootConfigError(f"{field}: {path!r} is a socket this user may not connect to, "
                              "so whether a program still listens there cannot be told; "
                              "remove it (as its owner) or choose another path")
    if state is PathState.NOT_A_SOCKET:
        raise BootConfigError(f"{field}: {path!r} already exists and is not a socket; "
                              "remove it or choose another path")
    return state


def listen_unix(path: str, field: str, backlog: int) -> socket.socket:
    """A listening AF_UNIX stream socket bound at ``path``; a stale socket file there is
    removed first, a live one or any other file refused (:func:`check_socket_path`)."""
    if check_socket_path(path, field) is PathState.STALE:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise BootConfigError(f"{field}: cannot listen on {path!r}: {e.strerror or e}; check "
                              "the directory and that the path is free") from None
    return sock
