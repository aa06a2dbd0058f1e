"""The I/O thread: one event loop (epoll through :mod:`selectors`) that owns the devices'
notification eventfds and runs their work, off the vCPU thread.

Queue notifications arrive on eventfds (written by KVM through ``KVM_IOEVENTFD``, or by
the transport on an MMIO exit when the host lacks ioeventfds); each fd has a callback.
A callback that raises is logged and the loop goes on: one broken device never stalls
the others.
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
from collections.abc import Callable

log = logging.getLogger("vmboot.devices.virtio")

EventCallback = Callable[[], None]
HostFdWatch = Callable[[int, bool], None]
"""``watch(fd, on)``: start or stop serving one host fd (see :func:`host_fd_watch`)."""
QueueServe = Callable[[int], bool]
"""``serve(queue)``: process a device's queue on the I/O thread as a notification would;
False when the device is not running (reset, or broken), so nothing was done."""


def new_eventfd() -> int:
    """A non-blocking, close-on-exec eventfd."""
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def drain_eventfd(fd: int) -> int:
    """Read (and so reset) an eventfd's counter; 0 when it was not signalled."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


class IoThread:
    """An event loop on its own daemon thread. Add fds before :meth:`start`, or at any time."""

    def __init__(self, name: str = "vmboot-virtio-io") -> None:
        self.name = name
        self._selector = selectors.DefaultSelector()
        self._stop_fd = new_eventfd()
        self._selector.register(self._stop_fd, selectors.EVENT_READ, None)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def add(self, fd: int, callback: EventCallback, events: int = selectors.EVENT_READ) -> None:
        """Call ``callback()`` on this thread whenever ``fd`` becomes readable (or, with
        ``events``, writable)."""
        with self._lock:
            self._selector.register(fd, events, callback)

    def modify(self, fd: int, callback: EventCallback, events: int) -> None:
        """Change what ``fd`` is watched for (``selectors.EVENT_READ | EVENT_WRITE``)."""
        with self._lock:
            self._selector.modify(fd, events, callback)

    def remove(self, fd: int) -> None:
        with self._lock:
            self._selector.unregister(fd)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            for key, _ in self._selector.select():
                callback: EventCallback | None = key.data
                if callback is None:
                    return
                try:
                    callback()
                except Exception:  # one device's bug must not stop the others
                    log.exception("virtio I/O thread: a device callback failed")

    def stop(self) -> None:
        """End the loop and wait for it; the fds stay open (their owners close them)."""
        if self._stop_fd < 0:
            return
        thread, self._thread = self._thread, None
        if thread is not None:
            os.eventfd_write(self._stop_fd, 1)
            if thread is not threading.current_thread():
                thread.join()
        self._selector.close()
        os.close(self._stop_fd)
        self._stop_fd = -1


def host_fd_watch(io: IoThread, serve: QueueServe, host_fds: dict[int, int]) -> HostFdWatch:
    """The ``watch(fd, on)`` of a device whose host fds (fd -> queue) are served on ``io``:
    while on, ``fd`` becoming readable processes its queue. The device turns an fd off while
    it has nowhere to put what it would read (a readable fd left on would wake the loop
    without end); an fd whose device stopped running is turned off until it turns it on."""
    watching: set[int] = set()
    lock = threading.Lock()

    def watch(fd: int, on: bool) -> None:
        with lock:
            if on and fd not in watching:
                io.add(fd, callback(fd))
                watching.add(fd)
            elif not on and fd in watching:
                io.remove(fd)
                watching.discard(fd)

    def callback(fd: int) -> EventCallback:
        def readable() -> None:
            if not serve(host_fds[fd]):
                watch(fd, False)
        return readable

    return watch
