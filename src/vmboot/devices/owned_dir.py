"""A private temporary directory that says whether its owner still runs, and the removal of
the ones whose owner died.

A vmboot that was killed (SIGKILL, a crash) cannot remove its temporary directories (the
virtio-fs back end's socket and log). Each :class:`OwnedDir` holds an exclusive ``flock``
on the file :data:`LOCK_NAME` inside it for as long as it exists; the kernel drops the lock
when the owner dies, however it dies. Making a new one first removes the directories with
the same prefix whose lock can be taken: their owner is gone (the counterpart of the stale
socket files of :mod:`vmboot.devices.socket_path`). A directory whose lock is held, that
belongs to another user, that has no lock file, or that has a file system mounted inside is
never touched. The names are those of :func:`tempfile.mkdtemp` (the prefix, then random
characters): no longer, so the socket paths made inside fit ``sun_path`` as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

from vmboot.closeable import Closeable

log = logging.getLogger("vmboot.devices")

LOCK_NAME = "owner.lock"
"""The file inside the directory that its owner keeps locked."""


def _lock(path: Path) -> int | None:
    """An fd holding the exclusive lock of ``path`` (None: another process holds it)."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _has_mount(top: Path) -> bool:
    """Whether a file system is mounted on ``top`` or on a directory below it."""
    for root, dirs, _ in os.walk(top):
        if any(os.path.ismount(os.path.join(root, d)) for d in dirs):
            return True
    return os.path.ismount(top)


def remove_stale(prefix: str, parent: str | None = None) -> list[Path]:
    """Remove the directories ``<parent>/<prefix>*`` (default parent: the temporary directory)
    of this user whose owner died; the ones removed."""
    top = Path(parent if parent is not None else tempfile.gettempdir())
    removed: list[Path] = []
    try:
        candidates = sorted(top.glob(f"{prefix}*"))
    except OSError:
        return removed
    for d in candidates:
        try:
            st = os.lstat(d)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            continue
        lock_path = d / LOCK_NAME
        try:
            fd = _lock(lock_path)
        except OSError:
            continue  # no lock file (not made by this module, or half made): left alone
        if fd is None:
            continue  # its owner runs
        try:
            if _has_mount(d):
                log.warning("%s: its owner is gone but a file system is mounted inside; "
                            "left in place", d)
                continue
            shutil.rmtree(d, ignore_errors=True)
            if not d.exists():
                removed.append(d)
                log.info("removed %s, left by a process that is gone", d)
        finally:
            os.close(fd)
    return removed


class OwnedDir(Closeable):
    """A new private directory ``<tmp>/<prefix><random>`` locked by this process until
    :meth:`close` removes it; stale ones of the same prefix are removed first."""

    def __init__(self, prefix: str, parent: str | None = None) -> None:
        remove_stale(prefix, parent)
        self.path = tempfile.mkdtemp(prefix=prefix, dir=parent)
        lock_path = Path(self.path, LOCK_NAME)
        try:
            os.close(os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC,
                             0o600))
            fd = _lock(lock_path)
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise
        assert fd is not None  # nobody else can know the directory yet
        self._lock_fd = fd

    def close(self) -> None:
        """Remove the directory and drop the lock (idempotent)."""
        if self._lock_fd < 0:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)
        self._lock_fd = -1
