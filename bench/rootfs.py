"""``vmboot exec --rootfs / -- true``: process start to exit, against the same guest under QEMU.

The guest boots on the host's root file system, read-only over virtio-fs, with vmboot's
guest agent as init (``rootfstype=virtiofs root=vmboot-root ro init=<agent>``), runs
``true`` through the agent and is torn down. The figure is the wall time from starting the
VMM (and its virtiofsd) to the end of everything, for the same kernel (tiny-smp-bzImage),
memory and vCPU count.

Peers:

- **virtme-ng** (``vng --run KERNEL -- true``) when it can run here: ``--vng PATH`` (default:
  ``vng`` on ``$PATH``). It is probed once; its outcome (status and last lines) is kept in
  the JSON, and it is timed only if the probe succeeded. It cannot run on a host whose only
  virtiofsd is QEMU 7.2's C one: vng passes the Rust virtiofsd's options (``--shared-dir``,
  ``--socket-path``, ``--sandbox``), the C one stops at the first (``fuse: invalid
  argument``), vng falls back to 9p over ``virtio-9p-pci`` on QEMU ``pc``, and a kernel
  without PCI (the tiny kernels) panics: ``9pnet_virtio: no channels available for device
  /dev/root`` ... ``VFS: Unable to mount root fs``.
- **QEMU microvm** with virtio-fs, always: the same virtiofsd started the same way
  (:class:`vmboot.devices.vhost_user.virtiofsd.Virtiofsd`, read-only), guest RAM a
  ``memory-backend-memfd``, ``-global virtio-mmio.force-legacy=false``, the same kernel
  command line and the same agent as init, reached over a ``virtserialport`` named
  ``vmboot.agent`` (the port the agent opens under vmboot too). This script is QEMU's
  "exec": it waits for the agent's greeting, runs ``true`` with the same environment and
  directory, then kills QEMU (vmboot too ends the VM without a guest shutdown) and stops
  virtiofsd.

Runs of the VMMs are interleaved. vmboot's .pyc files are written first, as a wheel has them.

Run: ``python bench/rootfs.py [--runs 2]`` from a directory outside /tmp (the guest mounts
an empty tmpfs there). Writes bench/results/rootfs.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Timing, compile_bytecode, print_table, summary_row, write_results
from vmproc import KERNELS, QEMU

from vmboot.agent.client import AgentClient
from vmboot.agent.protocol import output_port_names
from vmboot.config import DEFAULT_CMDLINE
from vmboot.devices.vhost_user.virtiofsd import Virtiofsd
from vmboot.devices.virtio.share import ROOT_TAG
from vmboot.vmm.guest_agent import AGENT_PORT
from vmboot.vmm.host_root import host_root_cmdline

MEMORY_MIB = 256
COMMAND = "true"
TIMEOUT = 900.0
AGENT_SOCKET_WAIT = 30.0
TAIL_LINES = 12
VNG_KEY_LINES = ("fuse: invalid", "fallback to 9p", "9pnet_virtio", "Unable to mount root")
"""The lines of vng's output that say why it failed, when it fails as described above."""
MAX_NOTE = 400
KERNEL_TIME = re.compile(r"^\[\s*[\d.]+\]\s*")
QEMU_CPU = "host,-arch-capabilities,kvm-pv-ipi=off,kvm-pv-unhalt=off,kvm-pv-sched-yield=off"
"""What vmboot's CPUID policy hides on hosts whose KVM emulates ring 0 (docs/pvm-hosts.md)."""
QEMU_PEER = "QEMU microvm (KVM) + virtiofsd, agent as init"
VNG_PEER = "virtme-ng (vng -- true)"


def vmboot_command(kernel: Path) -> list[str]:
    return [sys.executable, "-m", "vmboot", "exec", "--kernel", str(kernel),
            "-m", f"{MEMORY_MIB}M", "--rootfs", "/", "--timeout", str(int(TIMEOUT)), "--",
            COMMAND]


def vng_command(vng: str, kernel: Path, verbose: bool = False) -> list[str]:
    """``verbose``: with vng's own messages and the guest console (it is silent otherwise)."""
    return [vng, "--run", str(kernel), "--memory", f"{MEMORY_MIB}M", "--cpus", "1",
            *(["--verbose"] if verbose else []), f"--qemu-opts=-cpu {QEMU_CPU}", "--", COMMAND]


def vng_env(vng: str) -> dict[str, str]:
    """vng runs its helpers (virtme-run) from ``$PATH``: its own directory goes first."""
    return {**os.environ, "PATH": f"{Path(vng).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def qemu_command(kernel: Path, vhost_socket: str, agent_socket: str) -> list[str]:
    return [QEMU, "-enable-kvm", "-cpu", QEMU_CPU, "-nographic", "-no-reboot",
            "-object", f"memory-backend-memfd,id=mem,size={MEMORY_MIB}M,share=on",
            "-M", "microvm,memory-backend=mem,acpi=off", "-m", str(MEMORY_MIB),
            "-global", "virtio-mmio.force-legacy=false",
            "-chardev", f"socket,id=fs,path={vhost_socket}",
            "-device", f"vhost-user-fs-device,chardev=fs,tag={ROOT_TAG}",
            "-device", "virtio-serial-device",
            # the agent's output ports, as vmboot offers them (the command here prints nothing)
            *(arg for i, name in enumerate(output_port_names(AGENT_PORT))
              for arg in ("-chardev", f"null,id=out{i}",
                          "-device", f"virtserialport,chardev=out{i},name={name}")),
            "-chardev", f"socket,id=agent,path={agent_socket},server=on,wait=off",
            "-device", f"virtserialport,chardev=agent,name={AGENT_PORT}",
            "-kernel", str(kernel), "-append", f"{DEFAULT_CMDLINE} {host_root_cmdline()}"]


def wall(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, bytes]:
    """Seconds from start to exit, the exit status and the output (stdout and stderr)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=TIMEOUT, check=False, env=env)
    return time.perf_counter() - t0, proc.returncode, proc.stdout


def _connect(path: str, qemu: subprocess.Popen[bytes]) -> socket.socket:
    deadline = time.monotonic() + AGENT_SOCKET_WAIT
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if qemu.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"QEMU never listened on {path} (status {qemu.poll()})") from None
            time.sleep(0.01)


def qemu_exec(kernel: Path, program: str, tmp: Path) -> float:
    """Start virtiofsd and QEMU, run ``program`` through the agent, end both: seconds."""
    agent_socket = str(tmp / "agent.sock")
    log_path = tmp / "qemu.log"
    t0 = time.perf_counter()
    daemon = Virtiofsd.start(Path("/"), read_only=True)
    try:
        with open(log_path, "wb") as log:
            qemu = subprocess.Popen(qemu_command(kernel, daemon.socket_path, agent_socket),
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
        try:
            client = AgentClient(_connect(agent_socket, qemu))
            try:
                result = client.run([program], dict(os.environ), os.getcwd(), timeout=TIMEOUT)
            finally:
                client.close()
        except Exception as e:
            tail = log_path.read_bytes()[-3000:].decode(errors="replace")
            raise SystemExit(f"QEMU peer: {e}\n{tail}") from None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(qemu.pid, signal.SIGKILL)
            qemu.wait()
    finally:
        daemon.stop()
    elapsed = time.perf_counter() - t0
    if result.exit_status != 0:
        raise SystemExit(f"QEMU peer: {program} exited with {result.returncode}")
    return elapsed


def _key_part(line: str) -> str:
    """A line of vng's output without the kernel's timestamp or what is glued after a key
    (vng ends its fallback message without a newline)."""
    line = KERNEL_TIME.sub("", line).strip()
    for key in VNG_KEY_LINES:
        if key in line and not line.startswith(key):
            return line[:line.index(key) + len(key)]
    return line


def probe_vng(vng: str | None, kernel: Path) -> dict[str, Any]:
    """Run vng once; what happened (``ran``: it exited 0)."""
    if vng is None:
        return {"ran": False, "why": "vng is not installed (pip install virtme-ng)"}
    cmd = vng_command(vng, kernel, verbose=True)
    try:
        seconds, status, output = wall(cmd, vng_env(vng))
    except subprocess.TimeoutExpired:
        return {"ran": False, "command": cmd, "why": f"no exit within {TIMEOUT:g} s"}
    lines = output.decode(errors="replace").splitlines()
    tail = [line for line in lines if "virtme" in line or "fuse:" in line][-TAIL_LINES:]
    tail += [line for line in lines if "9pnet" in line or "VFS:" in line or "panic" in line]
    tail = tail[-2 * TAIL_LINES:] or lines[-TAIL_LINES:] or [f"exit status {status}, no output"]
    return {"ran": status == 0, "command": cmd, "status": status, "seconds": seconds,
            "why": "" if status == 0 else "\n".join(tail)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--vng", default=shutil.which("vng"),
                    help="the vng to try as a peer (default: vng on $PATH)")
    args = ap.parse_args()
    kernel = KERNELS / "tiny-smp-bzImage"
    program = shutil.which(COMMAND)
    if program is None:
        raise SystemExit(f"{COMMAND} is not on $PATH")
    compiled = compile_bytecode()
    vng = probe_vng(args.vng, kernel)
    print(f"virtme-ng: {'runs' if vng['ran'] else 'cannot run here: ' + vng['why']}", flush=True)
    samples: dict[str, list[float]] = {"vmboot": [], QEMU_PEER: []}
    if vng["ran"]:
        samples[VNG_PEER] = []
    tmp = Path(tempfile.mkdtemp(prefix="vmboot-rootfs-bench-"))
    for run in range(args.runs):
        for name in samples:
            if name == "vmboot":
                seconds, status, output = wall(vmboot_command(kernel))
                if status != 0:
                    raise SystemExit(f"vmboot exited with {status}:\n"
                                     f"{output[-3000:].decode(errors='replace')}")
            elif name == VNG_PEER:
                assert args.vng is not None
                seconds, status, output = wall(vng_command(args.vng, kernel), vng_env(args.vng))
                if status != 0:
                    raise SystemExit(f"vng exited with {status}")
            else:
                seconds = qemu_exec(kernel, program, tmp)
            samples[name].append(seconds)
            print(f"run {run + 1}/{args.runs}  {name:<48} {seconds:7.2f} s", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    timings = {name: Timing.of(s) for name, s in samples.items()}
    print_table([[name, f"{t.median:.2f} s", f"{t.min:.2f}-{t.max:.2f} s"]
                 for name, t in timings.items()], ["VMM", "median", "spread"])
    command = f"python bench/rootfs.py --runs {args.runs}"
    figure = (f"`exec --rootfs / -- {COMMAND}`, process start to exit: {kernel.name}, "
              f"{MEMORY_MIB} MiB, host root over virtio-fs, agent as init")
    peers = [name for name in timings if name != "vmboot"]
    note = "" if vng["ran"] else (
        "the peer is QEMU microvm, as virtme-ng could not run here ("
        + (f"exit status {vng['status']}: " if "status" in vng else "")
        + ("; ".join(dict.fromkeys(_key_part(line) for line in vng["why"].splitlines()
                                   if any(key in line for key in VNG_KEY_LINES)))
           or vng["why"].strip().splitlines()[-1])[:MAX_NOTE] + "; see bench/rootfs.py)")
    path = write_results("rootfs", {
        "command": command, "kernel": kernel.name, "memory_mib": MEMORY_MIB, "note": note,
        "bytecode": compiled, "vng_probe": vng, "timings": timings,
        "summary": [summary_row(figure, timings["vmboot"], peer, timings[peer], "<= 0.5x",
                                command) for peer in peers],
    })
    for peer in peers:
        print(f"ratio vmboot/{peer}: {timings['vmboot'].median / timings[peer].median:.2f}x")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
