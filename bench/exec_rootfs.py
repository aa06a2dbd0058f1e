"""``vmboot exec --rootfs / -- true`` against QEMU microvm doing the same: the host's root
read-only over virtio-fs, the vmboot agent as init, ``true`` run through it.

The peer the comparison was meant for, ``vng -- true`` (virtme-ng 1.42 from PyPI, in a
virtual environment), does not run here: its guest devices are PCI ones (virtio-9p-pci,
virtio-serial-pci, and its virtiofsd start fails with this host's C virtiofsd, so it falls
back to 9p over PCI), and the kernels that boot under this host's KVM have no PCI. So the
peer is QEMU microvm with the same kernel (tiny-smp-bzImage), memory (512 MiB, vmboot's
``--rootfs`` default), kernel command line, init and command:

``qemu-system-x86_64 -enable-kvm -cpu host,-arch-capabilities -M microvm,acpi=off,
memory-backend=mem -object memory-backend-memfd,id=mem,size=512M,share=on
-global virtio-mmio.force-legacy=false -chardev socket,id=fs,path=VIRTIOFSD
-device vhost-user-fs-device,chardev=fs,tag=vmboot-root -device virtio-serial-device
-chardev socket,id=agent,path=SOCK,server=on,wait=off -device
virtserialport,chardev=agent,name=vmboot.agent -append "console=ttyS0 reboot=k panic=-1
rootfstype=virtiofs root=vmboot-root ro init=.../vmboot-agent ..."``, its virtiofsd started
here as vmboot starts its own (read-only, :class:`Virtiofsd`), and this script as the agent's
client (:class:`AgentClient`, as ``vmboot exec`` uses it). The figure is wall time from
starting the VMM (and, for QEMU, its virtiofsd) to ``true``'s exit status (vmboot: to the
process's exit). Runs are interleaved.

Run: ``python bench/exec_rootfs.py [--runs 2]``. Writes bench/results/exec_rootfs.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Timing, print_table, summary_row, write_results
from vmproc import KERNELS, QEMU_KVM

from vmboot.agent.client import AgentClient
from vmboot.config import DEFAULT_CMDLINE
from vmboot.devices.vhost_user.virtiofsd import Virtiofsd
from vmboot.devices.virtio.share import ROOT_TAG
from vmboot.vmm.guest_agent import AGENT_PORT
from vmboot.vmm.host_root import HOST_ROOT, host_root_cmdline

MEMORY_MIB = 512
TIMEOUT = 900.0


def vmboot_once(kernel: Path) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vmboot", "exec", "--kernel", str(kernel),
                           "-m", f"{MEMORY_MIB}M", "--rootfs", "/", "--timeout", str(int(TIMEOUT)),
                           "--", "true"], stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=TIMEOUT + 60, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"vmboot exec --rootfs / -- true: status {done.returncode}:\n"
                         f"{done.stderr[-2000:].decode(errors='replace')}")
    return seconds


def qemu_once(kernel: Path, tmp: Path) -> float:
    agent_path = str(tmp / "agent.sock")
    true = shutil.which("true")
    assert true is not None
    t0 = time.perf_counter()
    daemon = Virtiofsd.start(HOST_ROOT, read_only=True)
    proc = subprocess.Popen([
        *QEMU_KVM, "-M", "microvm,acpi=off,memory-backend=mem", "-m", str(MEMORY_MIB),
        "-object", f"memory-backend-memfd,id=mem,size={MEMORY_MIB}M,share=on",
        "-global", "virtio-mmio.force-legacy=false",
        "-chardev", f"socket,id=fs,path={daemon.socket_path}",
        "-device", f"vhost-user-fs-device,chardev=fs,tag={ROOT_TAG}",
        "-device", "virtio-serial-device",
        "-chardev", f"socket,id=agent,path={agent_path},server=on,wait=off",
        "-device", f"virtserialport,chardev=agent,name={AGENT_PORT}",
        "-kernel", str(kernel), "-append", f"{DEFAULT_CMDLINE} {host_root_cmdline()}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        sock = socket.socket(socket.AF_UNIX)
        while True:
            try:
                sock.connect(agent_path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if proc.poll() is not None:
                    raise SystemExit(f"QEMU exited with status {proc.returncode}") from None
                time.sleep(0.01)
        client = AgentClient(sock)
        client.wait_ready(TIMEOUT)
        result = client.run([true], dict(os.environ), os.getcwd(), timeout=TIMEOUT)
        seconds = time.perf_counter() - t0
        client.close()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # microvm has no i8042: a reset does not end it
        proc.wait()
        daemon.stop()
    if result.exit_status != 0:
        raise SystemExit(f"QEMU: true ended with {result}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    kernel = KERNELS / "tiny-smp-bzImage"
    peer = "QEMU microvm (KVM), virtio-fs root, the same agent as init"
    samples: dict[str, list[float]] = {"vmboot": [], peer: []}
    with tempfile.TemporaryDirectory(prefix="vmboot-rootfs-bench-") as tmp:
        for run in range(args.runs):
            for name in samples:
                seconds = vmboot_once(kernel) if name == "vmboot" else qemu_once(kernel, Path(tmp))
                samples[name].append(seconds)
                print(f"run {run + 1}/{args.runs}  {name:<58} {seconds:7.2f} s", flush=True)
    timings = {name: Timing.of(s) for name, s in samples.items()}
    print_table([[name, f"{t.median:.2f} s", f"{t.min:.2f}-{t.max:.2f} s"]
                 for name, t in timings.items()], ["VMM", "median", "spread"])
    command = f"python bench/exec_rootfs.py --runs {args.runs}"
    path = write_results("exec_rootfs", {
        "command": command, "memory_mib": MEMORY_MIB, "kernel": kernel.name,
        "vng": "virtme-ng 1.42 does not run here: PCI devices only, and these kernels have no PCI",
        "timings": timings,
        "summary": [summary_row("`vmboot exec --rootfs / -- true`, start to the command's exit "
                                "(tiny-smp-bzImage, 512 MiB)", timings["vmboot"], peer,
                                timings[peer], "-", command)],
    })
    ratio = timings["vmboot"].median / timings[peer].median
    print(f"ratio vmboot/microvm: {ratio:.2f}x; wrote {path}")


if __name__ == "__main__":
    main()
