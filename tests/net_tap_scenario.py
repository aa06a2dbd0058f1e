"""Run inside a private network namespace holding a TAP device (see test_net_tap_guest.py):
a tiny-smp guest on ``--net tap=NAME`` takes an address on the TAP's subnet, pings the
namespace's end, then receives a random blob over TCP from a server on that address:
busybox ``nc -e busybox sha256sum`` hashes straight from the socket (no pipe: each byte the
guest's kernel copies costs it dearly where its ring 0 is emulated) and sends the hash back
on the same connection. Prints one JSON object: the blob's hash, the hash the guest sent back, the
guest's output, exit and console tail, and the seconds from the server's accept to the
guest's answer."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time

from net_guest_scenario import exec_summary
from vmboot.execute import exec_command
from vmboot.net.config import NetConfig

HOST_ADDRESS = "172.30.0.1"
GUEST_ADDRESS = "172.30.0.2/24"
PORT = 8767


def serve(blob: bytes, out: dict[str, object]) -> None:
    with socket.create_server((HOST_ADDRESS, PORT)) as server:
        conn, _ = server.accept()
        with conn:
            started = time.monotonic()
            conn.sendall(blob)
            conn.shutdown(socket.SHUT_WR)
            answer = bytearray()
            while chunk := conn.recv(4096):  # the guest's sha256sum line, then its close
                answer += chunk
            out["guest_sha256"] = answer.decode(errors="replace")
            out["seconds"] = time.monotonic() - started


def main() -> None:
    kernel, tap, size, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    blob = os.urandom(size)
    out: dict[str, object] = {"sha256": hashlib.sha256(blob).hexdigest()}
    threading.Thread(target=serve, args=(blob, out), daemon=True).start()
    command = (f"ip addr add {GUEST_ADDRESS} dev eth0 && ip link set eth0 up && "
               f"ping -c 2 -W 10 {HOST_ADDRESS} && nc {HOST_ADDRESS} {PORT} -e /bin/busybox sha256sum")
    result = exec_command(["sh", "-c", command], kernel=kernel, timeout=timeout,
                          memory="256M", net=NetConfig.parse(f"tap={tap}"))
    out.update(exec_summary(result))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
