"""Listening for gdb: ``HOST:PORT`` or ``unix:PATH``, one debugger at a time, reconnects welcome."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable

from vmboot.errors import UsageError
from vmboot.gdbstub.address import LISTEN_FORMS, ListenAddress, parse_listen_address
from vmboot.gdbstub.session import GdbSession
from vmboot.gdbstub.target import GdbTarget

log = logging.getLogger("vmboot.gdbstub")

__all__ = ["LISTEN_FORMS", "GdbServer", "ListenAddress", "parse_listen_address"]

class GdbServer:
    """Accepts debuggers on a thread of its own and serves each with a :class:`GdbSession`."""

    def __init__(self, target: GdbTarget, address: ListenAddress,
                 on_kill: Callable[[], None] | None = None) -> None:
        self.target = target
        self.address = address
        self.on_kill = on_kill
        self.connected = threading.Event()
        """Set when the first debugger has connected (what ``--gdb-wait`` waits for)."""
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener = self._listen(address)
        self.bound = self._bound_address()

    def _listen(self, address: ListenAddress) -> socket.socket:
        try:
            if address.is_unix:
                if os.path.exists(address.path):
                    raise UsageError(f"--gdb {address}: {address.path} already exists; remove it or "
                                     f"name another path")
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.bind(address.path)
            else:
                infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
                family, _, _, _, sockaddr = infos[0]
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(sockaddr)
        except OSError as exc:
            raise UsageError(f"--gdb {address}: cannot listen there: {exc.strerror or exc}") from None
        sock.listen(1)
        sock.settimeout(0.2)
        return sock

    def _bound_address(self) -> ListenAddress:
        if self.address.is_unix:
            return self.address
        host, port = self._listener.getsockname()[:2]
        return ListenAddress(host=str(host), port=int(port))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="vmboot-gdbstub", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            log.info("gdb connected on %s", self.bound)
            self.connected.set()
            with conn:
                conn.setblocking(True)
                if conn.family != socket.AF_UNIX:
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                GdbSession(self.target, conn, on_kill=self.on_kill).serve()

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self.address.is_unix:
            with contextlib.suppress(OSError):
                os.unlink(self.address.path)
