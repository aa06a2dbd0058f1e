"""Run inside a private network namespace (see test_net_guest.py): a tiny-smp guest on
``--net user`` starts fetching a large blob with busybox wget; once the first bytes are on
their way this script kills passt. The guest's link goes down (its carrier drops), wget
is stopped by ``timeout``, and the command and the run end. Prints one JSON object:
the guest's output and exit, and the lines vmboot logged about the link."""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import os
import signal
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from net_guest_scenario import BLOB_PORT, GATEWAY, exec_summary
from vmboot.execute import exec_command
from vmboot.net.config import NetConfig
from vmboot.net.passt import PasstBackend

FIRST_BYTES = 64 << 10
TOTAL_BYTES = 64 << 20
PAUSE = 2.0
"""Seconds between the first bytes and the kill."""


STARTED: list[PasstBackend] = []
"""The passt backends this process started (the machine's)."""


def _record(init: Callable[..., None]) -> Callable[..., None]:
    def wrapper(self: PasstBackend, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        STARTED.append(self)
    return wrapper


PasstBackend.__init__ = _record(PasstBackend.__init__)  # type: ignore[method-assign]


def serve(killed: list[int]) -> None:
    class Blob(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(TOTAL_BYTES))
            self.end_headers()
            self.wfile.write(bytes(FIRST_BYTES))
            self.wfile.flush()
            time.sleep(PAUSE)  # let some of it through: the kill falls mid-transfer
            for backend in STARTED:
                if backend.pid is not None:
                    os.kill(backend.pid, signal.SIGKILL)
                    killed.append(backend.pid)
            with contextlib.suppress(OSError):  # passt is gone
                self.wfile.write(bytes(TOTAL_BYTES - FIRST_BYTES))

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", BLOB_PORT), Blob)
    server.daemon_threads = True
    server.serve_forever()


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def main() -> None:
    kernel, timeout = sys.argv[1], float(sys.argv[2])
    killed: list[int] = []
    threading.Thread(target=serve, args=(killed,), daemon=True).start()
    lines = Lines()
    logging.getLogger("vmboot").addHandler(lines)
    logging.getLogger("vmboot").setLevel(logging.WARNING)
    command = ("mkdir -p /sys; mount -t sysfs sysfs /sys; "
               f"timeout 60 wget -q -O - http://{GATEWAY}:{BLOB_PORT}/blob | wc -c; "
               "echo carrier=$(cat /sys/class/net/eth0/carrier)")
    result = exec_command(["sh", "-c", command], kernel=kernel, timeout=timeout,
                          net=NetConfig.parse("user", kernel_dhcp=True))
    print(json.dumps({**exec_summary(result), "killed": killed, "logged": lines.lines}))


if __name__ == "__main__":
    main()
