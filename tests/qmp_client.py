"""One QMP command to a QEMU monitor socket (used by the vmcore tests and bench/vmcore.py to
have QEMU write its own dump of the same guest)."""

from __future__ import annotations

import json
import socket
from typing import Any


def qmp(sock: socket.socket, command: str, **arguments: object) -> dict[str, Any]:
    """Send ``command`` and return QEMU's reply (skipping the asynchronous events before it)."""
    message: dict[str, object] = {"execute": command}
    if arguments:
        message["arguments"] = arguments
    sock.sendall(json.dumps(message).encode() + b"\n")
    stream = sock.makefile("r")
    while True:
        reply: dict[str, Any] = json.loads(stream.readline())
        if "return" in reply or "error" in reply:
            return reply
