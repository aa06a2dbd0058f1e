"""Guest -> host stream throughput: virtio-vsock against a virtio-console port, same boot.

One vmboot boot of tiny-bzImage per run with both devices; the guest's /init is the vsock
test tool (``tests/guest/vsock_tool.c``, built here against nolibc). It connects to host
port 5010 and writes N pattern bytes (``xfer``), then writes N pattern bytes to the named
console port ``/dev/vport0p1`` (``write``). The host measures, for each, the time from the
first byte to the last one received, and checks every byte. The figure is vsock's time over
the console port's (lower is better: below 1 means vsock moves the same bytes faster).

Run: ``python bench/vsock.py [--runs 3] [--mib 4]``. Writes bench/results/vsock.json.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import Timing, print_table, summary_row, write_results
from vmproc import KERNELS

from nolibc_tool import build_tool
from vmboot.devices.virtio.console import ConsolePort
from vmboot.devices.virtio.vsock_host import VsockConfig
from vmboot.initramfs.builders import build_initramfs, complete_tree
from vmboot.initramfs.entry import Entry
from vmboot.vmm.machine import Machine

PORT = 5010
PORT_NAME = "org.vmboot.bench"
MEMORY = "128M"
TIMEOUT = 900


def pattern(n: int) -> bytes:
    return bytes(((i * 131) ^ (i >> 9)) & 0xFF for i in range(n))


class Receiver:
    """Bytes arriving on one channel: when the first and last came, and their hash."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last = 0.0
        self.count = 0
        self.digest = hashlib.sha256()

    def add(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        self.count += len(data)
        self.digest.update(data)

    def seconds(self) -> float:
        assert self.first is not None, "nothing arrived"
        return self.last - self.first


def one_run(kernel: Path, initrd: bytes, nbytes: int, expected: str) -> tuple[float, float]:
    vsock, console = Receiver(), Receiver()
    cmdline = (f"console=ttyS0 reboot=k panic=-1 quiet -- xfer {PORT} {nbytes} "
               f"mountdev write /dev/vport0p1 {nbytes}")
    with Machine(kernel, initrd=initrd, memory=MEMORY, cmdline=cmdline,
                 console_ports=[ConsolePort(PORT_NAME, console.add)],
                 vsock=VsockConfig()) as m:
        assert m.vsock is not None
        listener = m.vsock.listen(PORT)

        def serve() -> None:
            with listener.accept(timeout=TIMEOUT) as conn:
                while chunk := conn.recv(1 << 16):
                    vsock.add(chunk)
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        result = m.run(timeout=TIMEOUT)
        thread.join(timeout=60)
    text = result.console_text
    for name, r in (("vsock", vsock), ("console port", console)):
        if r.count != nbytes or r.digest.hexdigest() != expected:
            raise SystemExit(f"{name}: {r.count} of {nbytes} bytes or a wrong hash; "
                             f"console tail:\n{text[-2000:]}")
    return vsock.seconds(), console.seconds()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mib", type=int, default=4)
    args = ap.parse_args()
    kernel = KERNELS / "tiny-bzImage"
    nbytes = args.mib << 20
    with tempfile.TemporaryDirectory(prefix="vmboot-vsock-bench-") as tmp:
        tool = build_tool("vsock_tool.c", Path(tmp))
        initrd = build_initramfs(complete_tree([Entry.file("/init", tool.read_bytes(), 0o755),
                                                Entry.char_device("/dev/console", 5, 1)]))
    expected = hashlib.sha256(pattern(nbytes)).hexdigest()
    samples: dict[str, list[float]] = {"vsock": [], "console port": []}
    for run in range(args.runs):
        v, c = one_run(kernel, initrd, nbytes, expected)
        samples["vsock"].append(v)
        samples["console port"].append(c)
        print(f"run {run + 1}/{args.runs}  vsock {v:6.2f} s ({args.mib / v:6.2f} MiB/s)  "
              f"console port {c:6.2f} s ({args.mib / c:6.2f} MiB/s)", flush=True)
    timings = {name: Timing.of(s) for name, s in samples.items()}
    rows = [[name, f"{t.median:.2f} s", f"{args.mib / t.median:.2f} MiB/s",
             f"{t.min:.2f}-{t.max:.2f} s"] for name, t in timings.items()]
    print_table(rows, ["channel", "median", "throughput", "spread"])
    command = f"python bench/vsock.py --runs {args.runs} --mib {args.mib}"
    peer = "virtio-console port (same boot)"
    path = write_results("vsock", {
        "command": command, "mib": args.mib, "kernel": kernel.name, "timings": timings,
        "summary": [summary_row(f"{args.mib} MiB guest->host stream over virtio-vsock",
                                timings["vsock"], peer, timings["console port"],
                                "at most the virtio-console port's time", command)],
    })
    ratio = timings["vsock"].median / timings["console port"].median
    print(f"ratio vsock/console port: {ratio:.2f}x; wrote {path}")


if __name__ == "__main__":
    main()
