"""virtio-net side by side with QEMU microvm: TCP throughput guest -> host and 1-byte TCP
echo latency, over a TAP device and over passt.

Everything runs in a private network namespace this script makes (``unshare --net``:
loopback, a veth pair kept inside as the default route, and a TAP device), so nothing
leaves the machine. For each backend both VMMs boot the same kernel (tiny-smp-bzImage),
the same initramfs (Debian's static busybox and a shell /init) and the same command line;
passt is started with the same arguments for both (vmboot's ``passt_command``). The guest
sends N zero bytes with ``head -c N /dev/zero | nc HOST PORT`` (the host times first byte
to last) while it serves ``nc -l -p PORT -e cat``, to which the host, once the N bytes are
in, sends one byte at a time and waits for its echo, ``--echoes`` times. The echo figure
is the median of every round trip of every run (a run's median hides its spread); the
JSON keeps each VMM's pooled quartiles and 10th/90th percentiles too. Throughput is
reported as seconds per MiB received. With this passt (Debian 0.0~git20230309) the host's
end of a guest->host stream is closed up to about 150 KiB (at times far more) before the
last byte, under QEMU as under vmboot (the sender's input even stays open after the N
bytes, ``; sleep``); such a run is measured on what arrived and said.

Run as root: ``python bench/net.py [--runs 1] [--mib 4] [--echoes 50]``. Writes
bench/results/net.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from common import Timing, print_table, summary_row, write_results
from vmproc import KERNELS, QEMU_KVM

from vmboot.initramfs.builders import build_initramfs, complete_tree
from vmboot.initramfs.entry import Entry
from vmboot.net.passt import NOBODY, PortForward, passt_command

TAP = "vmbn-tap"
TAP_HOST, TAP_GUEST, PREFIX = "172.30.0.1", "172.30.0.2", 24
GATEWAY = "10.0.2.2"
"""passt's gateway address, which it maps to the host's loopback."""
STREAM_PORT, ECHO_PORT, PUBLISHED_ECHO_PORT = 8770, 8771, 18771
MEMORY = "256M"
BOOT_TIMEOUT = 600.0
KERNEL = "tiny-smp-bzImage"
BACKENDS = ("tap", "user")
PEER = "QEMU microvm (KVM)"
SHORTEST_SHARE = 0.5
"""The share of the stream a run over passt must deliver (its lost tail, above, once
reached 700 KiB of 2 MiB on a loaded host, with no link-down logged); throughput is then
measured on what arrived."""

NAMESPACE = f"""\
ip link set lo up
ip link add vmbn0 type veth peer name vmbn1
ip addr add 10.0.2.15/24 dev vmbn0
ip addr add 10.0.2.2/24 dev vmbn1
ip link set vmbn0 up
ip link set vmbn1 up
ip route add default via 10.0.2.2 dev vmbn0
ip tuntap add dev {TAP} mode tap vnet_hdr
ip addr add {TAP_HOST}/{PREFIX} dev {TAP}
ip link set {TAP} up
"""

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
echo NET-BENCH-UP
(head -c {nbytes} /dev/zero; sleep 600) | nc {host} {stream} &
nc -l -p {echo} -e cat
echo NET-BENCH-DONE
reboot -f
"""


@dataclass
class Result:
    stream_seconds: float
    stream_bytes: int
    echo_samples: list[float]

    @property
    def echo_seconds(self) -> float:
        return statistics.median(self.echo_samples)

    @property
    def seconds_per_mib(self) -> float:
        return self.stream_seconds / (self.stream_bytes / (1 << 20))


def cmdline(backend: str) -> str:
    address = "ip=dhcp" if backend == "user" else (
        f"ip={TAP_GUEST}::{TAP_HOST}:255.255.255.0::eth0:off")
    return f"console=ttyS0 reboot=k panic=-1 quiet {address}"


def initramfs(backend: str, nbytes: int, workdir: Path) -> Path:
    host = GATEWAY if backend == "user" else TAP_HOST
    init = INIT.format(nbytes=nbytes, host=host, stream=STREAM_PORT, echo=ECHO_PORT)
    path = workdir / f"{backend}.cpio"
    path.write_bytes(build_initramfs(complete_tree([
        Entry.file("/init", init.encode(), 0o755),
        Entry.host_file("/bin/busybox", shutil.which("busybox") or "/bin/busybox", 0o755),
        Entry.char_device("/dev/console", 5, 1), Entry.char_device("/dev/zero", 1, 5),
        Entry.char_device("/dev/null", 1, 3), Entry.directory("/proc")])))
    return path


def receive_stream(server: socket.socket, nbytes: int, out: dict[str, float]) -> None:
    conn, _ = server.accept()
    with conn:
        got = 0
        while got < nbytes:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            if not got:
                out["first"] = time.perf_counter()
            got += len(chunk)
        out["last"] = time.perf_counter()
        out["bytes"] = got


def echo_rounds(address: tuple[str, int], rounds: int, deadline: float) -> list[float]:
    """Seconds for one byte to come back, each of ``rounds``, after a first byte that opens
    the way."""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(address, timeout=120) as c:
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                c.sendall(b"x")
                if c.recv(1) != b"x":
                    raise OSError("no echo")
                samples = []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    c.sendall(b"y")
                    if c.recv(1) != b"y":
                        raise SystemExit("echo: the guest closed the connection")
                    samples.append(time.perf_counter() - t0)
                return samples
        except OSError:
            time.sleep(1)
    raise SystemExit(f"echo: no answer from {address} before the deadline")


def start_passt(workdir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    sock_dir = workdir / "passt"
    sock_dir.mkdir()
    os.chown(sock_dir, NOBODY, NOBODY)
    sock = sock_dir / "passt.sock"
    command = passt_command(shutil.which("passt") or "passt", sock,
                            [PortForward(PUBLISHED_ECHO_PORT, ECHO_PORT)], as_root=True)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(1000):
        if sock.exists():
            return process, sock
        time.sleep(0.01)
    process.kill()
    raise SystemExit("passt did not open its socket")


def one_run(vmm: str, backend: str, kernel: Path, initrd: Path, nbytes: int, echoes: int,
            workdir: Path) -> Result:
    server = socket.create_server(("0.0.0.0", STREAM_PORT), reuse_port=True)
    stream: dict[str, float] = {}
    receiver = threading.Thread(target=receive_stream, args=(server, nbytes, stream),
                                daemon=True)
    receiver.start()
    passt: subprocess.Popen[bytes] | None = None
    if vmm == "vmboot":
        net = ["--net", "user", "--publish", f"{PUBLISHED_ECHO_PORT}:{ECHO_PORT}"] \
            if backend == "user" else ["--net", f"tap={TAP}"]
        command = [sys.executable, "-m", "vmboot", "run", str(kernel), "--initrd", str(initrd),
                   "-m", MEMORY, "--append", cmdline(backend), *net]
    else:
        if backend == "user":
            passt, sock = start_passt(workdir)
            netdev = f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}"
        else:
            netdev = f"tap,id=n0,ifname={TAP},script=no,downscript=no"
        command = [*QEMU_KVM, "-M", "microvm,acpi=off", "-global",
                   "virtio-mmio.force-legacy=false", "-m", MEMORY, "-kernel", str(kernel),
                   "-initrd", str(initrd), "-append", cmdline(backend),
                   "-netdev", netdev, "-device", "virtio-net-device,netdev=n0"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    log = workdir / "console.log"
    with open(log, "wb") as sink:
        vm = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=sink,
                              stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + BOOT_TIMEOUT
    try:
        receiver.join(BOOT_TIMEOUT)
        got = int(stream.get("bytes", 0))
        if got < nbytes * SHORTEST_SHARE or (got != nbytes and backend != "user"):
            tail = log.read_text(errors="replace")[-1500:]
            raise SystemExit(f"{vmm} over {backend}: {got} of {nbytes} "
                             f"bytes arrived; its console ended:\n{tail}")
        if got != nbytes:
            print(f"{vmm} over {backend}: the stream closed {nbytes - got} bytes short "
                  "(the tail passt loses; see the docstring)", flush=True)
        address = ("127.0.0.1", PUBLISHED_ECHO_PORT) if backend == "user" else (
            TAP_GUEST, ECHO_PORT)
        echo = echo_rounds(address, echoes, deadline)
    finally:
        vm.kill()
        vm.wait()
        server.close()
        if passt is not None:
            passt.kill()
            passt.wait()
    return Result(stream["last"] - stream["first"], int(stream["bytes"]), echo)


def spread(samples: list[float]) -> dict[str, float | int]:
    """Percentiles of pooled samples: where the middle half and the middle 80 % lie."""
    p = statistics.quantiles(samples, n=20)
    return {"count": len(samples), "p10": p[1], "p25": p[4], "median": statistics.median(samples),
            "p75": p[14], "p90": p[17]}


def inside(args: argparse.Namespace) -> None:
    kernel = KERNELS / KERNEL
    nbytes = args.mib << 20
    samples: dict[tuple[str, str], list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="vmboot-net-bench-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        for backend in args.backends.split(","):
            initrd = initramfs(backend, nbytes, workdir)
            for run in range(args.runs):
                for vmm in args.vmms.split(","):
                    run_dir = workdir / f"{vmm}-{backend}-{run}"
                    run_dir.mkdir()
                    r = one_run(vmm, backend, kernel, initrd, nbytes, args.echoes, run_dir)
                    samples.setdefault((vmm, backend), []).append(r)
                    print(f"{vmm:6s} {backend:4s} run {run + 1}: {r.stream_bytes} bytes in "
                          f"{r.stream_seconds:.2f} s ({1 / r.seconds_per_mib:.3f} MiB/s), "
                          f"echo {r.echo_seconds * 1e3:.2f} ms", flush=True)
    timings = {f"{vmm} {backend} {what}": Timing.of([getattr(r, field) for r in rs])
               for (vmm, backend), rs in samples.items()
               for what, field in (("stream", "seconds_per_mib"), ("echo", "echo_seconds"))}
    echoes = {f"{vmm} {backend}": spread([s for r in rs for s in r.echo_samples])
              for (vmm, backend), rs in samples.items()}
    for name, e in echoes.items():
        # the figure: the median round trip of all runs; min/max: the runs' own medians
        timings[f"{name} echo"].median = e["median"]
    rows = [[name, f"{t.median:.4f} s"] for name, t in timings.items()]
    rows += [[f"{name} echo p10/p25/p75/p90",
              " / ".join(f"{e[k] * 1e3:.2f}" for k in ("p10", "p25", "p75", "p90")) + " ms"]
             for name, e in echoes.items()]
    received = {f"{vmm} {backend}": [r.stream_bytes for r in rs]
                for (vmm, backend), rs in samples.items()}
    print_table(rows, ["measure", "median"])
    if len(samples) != 2 * len(BACKENDS):
        return  # a partial run (--vmms, --backends): nothing to compare or record
    command = f"python bench/net.py --runs {args.runs} --mib {args.mib} --echoes {args.echoes}"
    names = {"tap": "TAP", "user": "passt"}
    summary = []
    for backend in BACKENDS:
        summary.append(summary_row(
            f"guest->host TCP, seconds per MiB, virtio-net + {names[backend]}",
            timings[f"vmboot {backend} stream"], PEER, timings[f"qemu {backend} stream"],
            "at most QEMU's (throughput at least QEMU's)", command))
        summary.append(summary_row(
            f"1-byte TCP echo round trip, virtio-net + {names[backend]}",
            timings[f"vmboot {backend} echo"], PEER, timings[f"qemu {backend} echo"],
            "at most QEMU's", command))
    path = write_results("net", {"command": command, "mib": args.mib, "echoes": args.echoes,
                                 "kernel": KERNEL, "bytes_received": received, "echo_spread": echoes,
                                 "timings": timings, "summary": summary})
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--mib", type=int, default=4)
    ap.add_argument("--echoes", type=int, default=50)
    ap.add_argument("--vmms", default="vmboot,qemu", help="which to run (debugging)")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="which to run (debugging)")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inside:
        inside(args)
        return
    if os.geteuid() != 0:
        raise SystemExit("bench/net.py: run as root (it makes a network namespace and a TAP)")
    script = (NAMESPACE + f"exec {sys.executable} {Path(__file__).resolve()} --inside "
              f"--runs {args.runs} --mib {args.mib} --echoes {args.echoes} "
              f"--vmms {args.vmms} --backends {args.backends}\n")
    raise SystemExit(subprocess.run(["unshare", "--net", "sh", "-ec", script],
                                    check=False).returncode)


if __name__ == "__main__":
    main()
