"""The host end of virtio-vsock, compatible with Firecracker's "hybrid vsock".

- A guest connection to host port ``P`` is forwarded to the AF_UNIX stream socket
  ``<path>_<P>``, where a host program listens.
- A host program connects to the AF_UNIX socket ``<path>``, writes ``CONNECT <port>\\n``,
  and, once the guest accepted, reads ``OK <hostport>\\n``; the stream is then the
  connection (the guest refusing closes it).

In-process users get the same through :meth:`VsockDevice.connect` and
:meth:`VsockDevice.listen` (see :mod:`vmboot.devices.virtio.vsock`).
"""

from __future__ import annotations

import os
import queue
import socket
from dataclasses import dataclass
from pathlib import Path

from vmboot.closeable import Closeable
from vmboot.devices.socket_path import SUN_PATH_MAX, check_socket_path
from vmboot.devices.virtio import vsock_packet as vp
from vmboot.devices.virtio.vsock_defaults import CONNECT_TIMEOUT as CONNECT_TIMEOUT
from vmboot.errors import BootConfigError, VmbootError

CONNECT_WORD = b"CONNECT"
OK_WORD = b"OK"
MAX_COMMAND = 32
"""Bytes a ``CONNECT <port>\\n`` line may take (longer lines close the stream)."""
PORT_LIMIT = 0xFFFFFFFF
PORT_SUFFIX_MAX = len(f"_{PORT_LIMIT}")
MAX_CONNECT_TIMEOUT = 3600.0


class VsockError(VmbootError):
    """A host-side vsock operation failed (no listener in the guest, a closed device...)."""


class VsockRefused(VsockError):
    """The guest refused a connection (it reset the request: nothing listens on the port)."""


class VsockTimeout(VsockError):
    """The guest did not answer a connection request in time."""


@dataclass(frozen=True)
class VsockConfig:
    """A vsock device: the guest's CID and, optionally, the hybrid UNIX socket path."""

    cid: int = vp.DEFAULT_GUEST_CID
    uds_path: str | None = None
    connect_timeout: float = CONNECT_TIMEOUT
    """Seconds the guest has to accept a connection the host starts (:data:`CONNECT_TIMEOUT`),
    and a client of the hybrid socket has to send its ``CONNECT <port>`` line."""

    def validate(self) -> None:
        if not vp.MIN_GUEST_CID <= self.cid <= vp.MAX_GUEST_CID:
            raise BootConfigError(f"vsock cid: {self.cid} is outside {vp.MIN_GUEST_CID}.."
                                  f"{vp.MAX_GUEST_CID} (0-2 are reserved); pick 3 or more")
        check_connect_timeout(self.connect_timeout, "vsock connect timeout")
        if self.uds_path is not None:
            check_uds_path(self.uds_path)


def check_connect_timeout(seconds: float, field: str) -> None:
    """Raise unless ``seconds`` is a usable connect timeout (0 < seconds <= the maximum)."""
    if not 0 < seconds <= MAX_CONNECT_TIMEOUT:  # also false for NaN
        raise BootConfigError(f"{field}: {seconds!r} s is outside (0, {MAX_CONNECT_TIMEOUT:g}] "
                              "seconds; give a positive number of seconds")


def check_uds_path(path: str) -> None:
    """Raise unless ``path`` can become the hybrid socket (and ``<path>_<port>`` fit too):
    free, or a stale socket file an earlier run left (removed when the device listens);
    a socket some program listens on is refused (:mod:`vmboot.devices.socket_path`)."""
    encoded = os.fsencode(path)
    if not encoded:
        raise BootConfigError("vsock path: empty; give the UNIX socket path to create")
    if len(encoded) + PORT_SUFFIX_MAX > SUN_PATH_MAX:
        raise BootConfigError(f"vsock path: {path!r} is {len(encoded)} bytes; with a "
                              f"'_<port>' suffix it must fit {SUN_PATH_MAX} bytes, so at most "
                              f"{SUN_PATH_MAX - PORT_SUFFIX_MAX}: use a shorter path")
    parent = Path(path).parent
    if not parent.is_dir():
        raise BootConfigError(f"vsock path: {path!r}: the directory {str(parent)!r} does not "
                              "exist; create it first")
    check_socket_path(path, "vsock path")


def port_socket_path(uds_path: str, port: int) -> str:
    """Where a guest connection to host port ``port`` is forwarded."""
    return f"{uds_path}_{port}"


def parse_connect(line: bytes) -> int:
    """The port of a ``CONNECT <port>`` line (without its newline; the word in any case, as
    Firecracker accepts it); ValueError otherwise."""
    words = line.strip().split()
    if len(words) != 2 or words[0].upper() != CONNECT_WORD or not words[1].isdigit():
        raise ValueError(f"not 'CONNECT <port>': {line[:MAX_COMMAND]!r}")
    port = int(words[1])
    if port > PORT_LIMIT:
        raise ValueError(f"port {port} is over {PORT_LIMIT}")
    return port


def ok_line(host_port: int) -> bytes:
    return b"%s %d\n" % (OK_WORD, host_port)


def connect_timed_out(port: int, timeout: float) -> VsockTimeout:
    return VsockTimeout(f"vsock connect to guest port {port}: no answer within {timeout:g} s "
                      "(the connect timeout); is the guest running, with its vsock driver up? "
                      "Give a longer timeout if it is only slow")


def read_ok(sock: socket.socket, port: int, timeout: float) -> int:
    """Client side of the handshake: read ``OK <hostport>\\n``; its host port.
    :class:`VsockRefused` when the stream closes first, :class:`VsockTimeout` when ``timeout``
    seconds pass."""
    sock.settimeout(timeout)
    line = bytearray()
    try:
        while not line.endswith(b"\n") and len(line) < MAX_COMMAND:
            chunk = sock.recv(1)
            if not chunk:
                raise VsockRefused(f"vsock connect to guest port {port}: refused (nothing "
                                   "listens there in the guest, or the guest reset)")
            line += chunk
    except TimeoutError:
        raise VsockTimeout(f"vsock connect to guest port {port}: no answer within "
                           f"{timeout:g} s") from None
    words = bytes(line).split()
    if len(words) != 2 or words[0] != OK_WORD or not words[1].isdigit():
        raise VsockError(f"vsock connect to guest port {port}: unexpected answer {bytes(line)!r}")
    sock.settimeout(None)
    return int(words[1])


class VsockListener(Closeable):
    """Guest connections to one host port, accepted in-process (:meth:`accept`)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._accepted: queue.Queue[socket.socket] = queue.Queue()
        self.closed = False

    def deliver(self, sock: socket.socket) -> None:
        self._accepted.put(sock)

    def accept(self, timeout: float | None = None) -> socket.socket:
        """The next guest connection: a blocking stream socket."""
        try:
            return self._accepted.get(timeout=timeout)
        except queue.Empty:
            raise VsockError(f"vsock listen on host port {self.port}: no guest connection "
                             f"within {timeout} s") from None

    def close(self) -> None:
        self.closed = True
        while True:
            try:
                self._accepted.get_nowait().close()
            except queue.Empty:
                return
