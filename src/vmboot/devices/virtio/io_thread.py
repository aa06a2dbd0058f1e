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
import select
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


class HostFdWatcher:
    """Serve a device's host fds (fd -> queue) on the I/O thread while the device wants them:
    readable (:meth:`readable`; a readable fd the device cannot take from would otherwise
    wake the loop without end) and, apart, writable (:meth:`writable`; a backend whose peer's
    buffer was full). An fd whose device stopped running (``serve`` answers False) is turned
    off until the device turns it on again."""

    def __init__(self, io: IoThread, serve: QueueServe, on_readable: dict[int, int],
                 on_writable: dict[int, int] | None = None) -> None:
        self.io = io
        self.serve = serve
        self.on_readable = on_readable
        self.on_writable = on_writable or {}
        self._events: dict[int, int] = {}
        """fd -> the selectors events it is registered for (absent: not registered)."""
        self._lock = threading.Lock()

    def readable(self, fd: int, on: bool) -> None:
        self._set(fd, selectors.EVENT_READ, on)

    def writable(self, fd: int, on: bool) -> None:
        self._set(fd, selectors.EVENT_WRITE, on)

    def _set(self, fd: int, event: int, on: bool) -> None:
        with self._lock:
            old = self._events.get(fd, 0)
            new = old | event if on else old & ~event
            if new == old:
                return
            if not new:
                self.io.remove(fd)
                del self._events[fd]
            elif not old:
                self.io.add(fd, self._callback(fd), new)
            else:
                self.io.modify(fd, self._callback(fd), new)
            if new:
                self._events[fd] = new

    def _callback(self, fd: int) -> EventCallback:
        def ready() -> None:
            events = self._events.get(fd, 0)
            if not events & selectors.EVENT_WRITE:  # the usual case: no poll needed
                served = self.serve(self.on_readable[fd])
            else:
                # The loop calls back without saying which event came: ask the fd. A
                # hang-up or error comes whatever was asked for: the queue that sends finds
                # the peer gone (and stops the watch) even while reading is off.
                got = _poll_once(fd, events)
                served = True
                if got & (select.POLLOUT | select.POLLHUP | select.POLLERR) \
                        and fd in self.on_writable:
                    served = self.serve(self.on_writable[fd])
                if served and got & ~select.POLLOUT and events & selectors.EVENT_READ:
                    served = self.serve(self.on_readable[fd])
            if not served:
                self._set(fd, selectors.EVENT_READ | selectors.EVENT_WRITE, False)
        return ready


def _poll_once(fd: int, events: int) -> int:
    """Which of ``events`` (selectors' bits) ``fd`` is ready for now, as poll(2) bits."""
    mask = (select.POLLIN if events & selectors.EVENT_READ else 0) | (
        select.POLLOUT if events & selectors.EVENT_WRITE else 0)
    poller = select.poll()
    poller.register(fd, mask)
    return sum(e for _, e in poller.poll(0))
