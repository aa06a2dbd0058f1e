"""Where the gdb stub listens: ``HOST:PORT``, ``:PORT`` or ``unix:PATH`` (no heavy imports,
so the command line can check an address without loading the stub)."""

from __future__ import annotations

from dataclasses import dataclass

from vmboot.errors import UsageError

UNIX_PREFIX = "unix:"
LISTEN_FORMS = "HOST:PORT (e.g. localhost:1234 or :1234) or unix:PATH"


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return bool(self.path)

    def __str__(self) -> str:
        return f"{UNIX_PREFIX}{self.path}" if self.is_unix else f"{self.host or '127.0.0.1'}:{self.port}"


def parse_listen_address(text: str) -> ListenAddress:
    """``HOST:PORT``, ``:PORT`` (loopback) or ``unix:PATH``; anything else raises UsageError."""
    if text.startswith(UNIX_PREFIX):
        path = text[len(UNIX_PREFIX):]
        if not path:
            raise UsageError(f"--gdb {text!r}: the socket path is empty; use {LISTEN_FORMS}")
        return ListenAddress(path=path)
    host, sep, port_s = text.rpartition(":")
    if not sep:
        raise UsageError(f"--gdb {text!r}: no port; use {LISTEN_FORMS}")
    try:
        port = int(port_s)
    except ValueError:
        raise UsageError(f"--gdb {text!r}: port {port_s!r} is not a number; use {LISTEN_FORMS}") from None
    if not 0 <= port <= 0xFFFF:
        raise UsageError(f"--gdb {text!r}: port {port} is outside 0-65535")
    return ListenAddress(host=host.strip("[]") or "127.0.0.1", port=port)
