"""Run inside a private network namespace (see test_net_guest.py): a TCP server on the
namespace's 127.0.0.1 sends a random blob to whoever connects; a tiny-smp guest with
``--net user`` fetches it through its gateway address (passt maps it to the host's
loopback) and prints its SHA-256, then serves a line on a port published to the host,
which this script reads through 127.0.0.1. Prints one JSON object."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time

from vmboot.execute import exec_command
from vmboot.net.config import NetConfig

GATEWAY = "10.0.2.2"
BLOB_PORT = 8766
HOST_PORT, GUEST_PORT = 18080, 8080
MARK = "vmboot-published"


def serve(blob: bytes) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", BLOB_PORT))
    s.listen(4)
    while True:
        c, _ = s.accept()
        threading.Thread(target=lambda c=c: (c.sendall(blob), c.close()), daemon=True).start()


def read_published(result: dict[str, object], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", HOST_PORT), timeout=5) as c:
                data = c.recv(100)
            if MARK.encode() in data:
                result["published"] = data.decode(errors="replace").strip()
                return
        except OSError:
            pass
        time.sleep(1)


def main() -> None:
    kernel, size = sys.argv[1], int(sys.argv[2])
    blob = os.urandom(size)
    threading.Thread(target=serve, args=(blob,), daemon=True).start()
    out: dict[str, object] = {"sha256": hashlib.sha256(blob).hexdigest()}
    stop = threading.Event()
    reader = threading.Thread(target=read_published, args=(out, stop), daemon=True)
    reader.start()
    command = (f"nc {GATEWAY} {BLOB_PORT} | sha256sum; "
               f"echo {MARK} | nc -l -p {GUEST_PORT}")
    result = exec_command(["sh", "-c", command], kernel=kernel, timeout=float(sys.argv[3]),
                          net=NetConfig.parse("user", [f"{HOST_PORT}:{GUEST_PORT}"],
                                              kernel_dhcp=True))
    stop.set()
    out.update(stdout=result.stdout.decode(errors="replace"), reason=str(result.reason),
               stderr=result.stderr.decode(errors="replace"))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
