"""Run inside a private network namespace (see test_net_guest.py): an HTTP server on the
namespace's 127.0.0.1 serves a random blob; a tiny-smp guest with ``--net user`` fetches
it with busybox ``wget`` through its gateway address (passt maps it to the host's
loopback) and prints its SHA-256, then serves a line with busybox ``nc -l`` on a port
published to the host, which this script reads through 127.0.0.1. Prints one JSON object:
the blob's hash, the guest's output, exit and console, and the line read through the
published port."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import socketserver
import sys
import threading
import time
from typing import Any

from vmboot.execute import ExecResult, exec_command
from vmboot.net.config import NetConfig

GATEWAY = "10.0.2.2"
BLOB_PORT = 8766
HOST_PORT, GUEST_PORT = 18080, 8080
MARK = "vmboot-published"
GREETING = b"hello-guest\n"
READ_WAIT = 60.0
"""Seconds one connection to the published port waits for the guest's line."""


def exec_summary(result: ExecResult) -> dict[str, object]:
    """What a scenario reports of its ``vmboot exec`` run (the console's last 3,000 chars)."""
    return {"stdout": result.stdout.decode(errors="replace"), "reason": str(result.reason),
            "exit_status": result.exit_status, "stderr": result.stderr.decode(errors="replace"),
            "console": result.console.decode(errors="replace")[-3000:]}


def serve_blob(blob: bytes) -> socketserver.TCPServer:
    class Blob(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(blob)))
            self.end_headers()
            self.wfile.write(blob)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", BLOB_PORT), Blob)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def read_published(result: dict[str, object], stop: threading.Event) -> None:
    """Connect to the published port until the guest's line comes back (before the guest
    listens, passt accepts and then closes the connection). Each connection waits as long
    as a slow guest may take to answer (one given up on could be the one it accepts), and
    is closed once the line is in: busybox nc -l waits for the peer to close. The host
    speaks first, as clients of most protocols do: passt (Debian 0.0~git20230309) leaves the guest's
    SYN-ACK of a published port unacknowledged until it has data (or a FIN) to send."""
    while not stop.is_set():
        data = b""
        try:
            with socket.create_connection(("127.0.0.1", HOST_PORT), timeout=READ_WAIT) as c:
                c.sendall(GREETING)
                while MARK.encode() not in data and (chunk := c.recv(100)):
                    data += chunk
        except OSError:
            pass
        if MARK.encode() in data:
            result["published"] = data.decode(errors="replace").strip()
            return
        time.sleep(1)


def main() -> None:
    kernel, size, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    blob = os.urandom(size)
    serve_blob(blob)
    out: dict[str, object] = {"sha256": hashlib.sha256(blob).hexdigest()}
    stop = threading.Event()
    threading.Thread(target=read_published, args=(out, stop), daemon=True).start()
    command = (f"wget -q -O - http://{GATEWAY}:{BLOB_PORT}/blob | sha256sum; "
               f"echo {MARK} | nc -l -p {GUEST_PORT}")
    result = exec_command(["sh", "-c", command], kernel=kernel, timeout=timeout,
                          net=NetConfig.parse("user", [f"{HOST_PORT}:{GUEST_PORT}"],
                                              kernel_dhcp=True))
    stop.set()
    out.update(exec_summary(result))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
